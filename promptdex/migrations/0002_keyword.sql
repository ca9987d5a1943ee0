-- Keyword search over distinct prompts (full-text vector + GIN), a vocabulary of prompt words with their
-- trigrams for typo-tolerant and prefix search without the pg_trgm extension, and the files folder import saw.

ALTER TABLE prompts
    ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text)) STORED;
CREATE INDEX prompts_tsv ON prompts USING gin (tsv);

-- Trigrams of a word as pg_trgm makes them: lower case, two spaces before and one after.
CREATE FUNCTION promptdex_trigrams(word text) RETURNS text[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
        SELECT coalesce(array_agg(DISTINCT substr(padded, i, 3)), '{}'::text[])
        FROM (SELECT '  ' || lower(word) || ' ' AS padded) AS p, generate_series(1, length(padded) - 2) AS i
    $$;

CREATE TABLE prompt_terms (
    term      text PRIMARY KEY,
    prompts   integer NOT NULL DEFAULT 0,
    trigrams  text[] GENERATED ALWAYS AS (promptdex_trigrams(term)) STORED
);
CREATE INDEX prompt_terms_trigrams ON prompt_terms USING gin (trigrams);
CREATE INDEX prompt_terms_prefix ON prompt_terms (term text_pattern_ops);

-- Every file `promptdex import` looked at: unchanged files (same size and mtime) are skipped next time.
CREATE TABLE imported_files (
    path        text PRIMARY KEY,
    file_size   bigint NOT NULL,
    file_mtime  double precision NOT NULL,
    sha256      text,
    image_id    bigint REFERENCES images (id) ON DELETE SET NULL,
    status      text NOT NULL CHECK (status IN ('imported', 'duplicate', 'error')),
    error       text,
    seen_at     timestamptz NOT NULL DEFAULT now()
);
