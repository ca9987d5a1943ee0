-- C2PA content credentials read at import (indexer.metadata.provenance): the claim generator, a friendly label for
-- known AI generators, whether the file says it is AI-generated, the signer and the validation state. NULL: none.
ALTER TABLE images ADD COLUMN provenance jsonb;
