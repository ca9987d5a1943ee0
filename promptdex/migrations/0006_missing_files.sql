-- Files that change or vanish: a row whose content no file holds any more is marked missing (kept, so its id
-- answers 410 Gone, and revived when the content is imported again); search and listings leave it out.
ALTER TABLE images ADD COLUMN missing boolean NOT NULL DEFAULT false;
-- Every path `promptdex import` recorded for an image, to find another copy of its content when its file changes.
CREATE INDEX imported_files_image ON imported_files (image_id);
