-- The corpus: distinct prompts, images with every generation parameter, the job queue and index state.

CREATE TABLE prompts (
    id          bigserial PRIMARY KEY,
    text        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX prompts_text_md5 ON prompts (md5(text));

CREATE TABLE images (
    id                 bigserial PRIMARY KEY,
    sha256             text NOT NULL UNIQUE CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    path               text NOT NULL,
    file_size          bigint,
    file_mtime         double precision,
    width              integer NOT NULL CHECK (width > 0),
    height             integer NOT NULL CHECK (height > 0),
    format             text NOT NULL,
    prompt_id          bigint REFERENCES prompts (id),
    negative_prompt    text NOT NULL DEFAULT '',
    seed               numeric(20, 0),
    steps              integer,
    cfg                double precision,
    sampler            text,
    scheduler          text,
    sampler_class      text,
    scheduler_config   jsonb,
    model              text,
    model_hash         text,
    clip_skip          integer,
    denoising_strength double precision,
    init_image_sha256  text,
    hires              jsonb,
    params             jsonb NOT NULL DEFAULT '{}'::jsonb,
    generation         jsonb,
    source             text NOT NULL,
    raw_metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    imported_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX images_prompt_id ON images (prompt_id);
CREATE INDEX images_created ON images (created_at DESC, id DESC);
CREATE INDEX images_model ON images (model);
CREATE INDEX images_sampler ON images (sampler);
CREATE INDEX images_size ON images (width, height);
CREATE INDEX images_steps ON images (steps);
CREATE INDEX images_cfg ON images (cfg);
CREATE INDEX images_seed ON images (seed);
CREATE INDEX images_source ON images (source);
CREATE INDEX images_path ON images (path);

CREATE TABLE jobs (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL DEFAULT 'generate',
    payload      jsonb NOT NULL,
    status       text NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'running', 'done', 'failed')),
    attempts     integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 3,
    worker       text,
    lease_until  timestamptz,
    error        text,
    image_ids    bigint[] NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz
);
CREATE INDEX jobs_claimable ON jobs (id) WHERE status IN ('queued', 'running');

CREATE TABLE index_bundles (
    name        text PRIMARY KEY,
    kind        text NOT NULL,
    model       text NOT NULL,
    dim         integer NOT NULL,
    metric      text NOT NULL,
    count       bigint NOT NULL DEFAULT 0,
    path        text NOT NULL,
    manifest    jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE index_entries (
    bundle    text NOT NULL REFERENCES index_bundles (name) ON DELETE CASCADE,
    item_id   bigint NOT NULL,
    added_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bundle, item_id)
);
