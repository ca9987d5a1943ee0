-- Safe mode: an NSFW score per image and per prompt, from the configured classifiers.
-- images.nsfw is the highest score any configured classifier gave the image (its prompt's included) and nsfw_by the
-- classifier that gave it; nsfw_scores keeps each classifier's score with the key it was made under; nsfw_key is the
-- key of the whole classifier set once every configured classifier has scored the image (NULL: scoring is not
-- finished, e.g. imported but not yet seen by an image classifier; strict mode hides it).
ALTER TABLE images
    ADD COLUMN nsfw real CHECK (nsfw >= 0 AND nsfw <= 1),
    ADD COLUMN nsfw_by text,
    ADD COLUMN nsfw_scores jsonb,
    ADD COLUMN nsfw_key text;
CREATE INDEX images_nsfw_key ON images (nsfw_key);
ALTER TABLE prompts
    ADD COLUMN nsfw real CHECK (nsfw >= 0 AND nsfw <= 1),
    ADD COLUMN nsfw_key text;
