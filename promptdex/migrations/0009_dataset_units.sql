-- `promptdex import-dataset`: progress per unit of a dataset (a DiffusionDB part, a tar shard, a parquet file), so an
-- interrupted import resumes where it stopped. `done` counts the unit's records stored (rows committed and, with
-- precomputed embeddings, their vectors saved); `finished` marks the whole unit; `fingerprint` is the unit's file
-- sizes and mtimes, so a unit whose files changed is read again.
CREATE TABLE dataset_units (
    dataset text NOT NULL,
    unit text NOT NULL,
    fingerprint text NOT NULL,
    done integer NOT NULL DEFAULT 0 CHECK (done >= 0),
    finished boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset, unit)
);
