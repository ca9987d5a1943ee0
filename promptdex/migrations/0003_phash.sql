-- A perceptual (difference) hash of each image's pixels, so search can collapse near-duplicates
-- (the same picture saved as PNG, JPEG and WebP, or resized) whatever the embedding model.
ALTER TABLE images ADD COLUMN phash bigint;
CREATE INDEX images_phash ON images (phash);
