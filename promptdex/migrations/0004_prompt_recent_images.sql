-- The newest images of a prompt without reading all of them: search turns ranked prompts into their images
-- with a LIMIT per prompt, and a popular prompt can hold thousands of images. Replaces the plain prompt_id index.
CREATE INDEX images_prompt_recent ON images (prompt_id, id DESC);
DROP INDEX IF EXISTS images_prompt_id;
