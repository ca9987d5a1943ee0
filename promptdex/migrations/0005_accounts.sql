-- Accounts for a public service: users with a role, API tokens and browser sessions (both stored as hashes),
-- one-time sign-in links, and job ownership. Quotas are counted from the jobs table, so they hold across
-- API replicas; a job's public id is random, so ids cannot be enumerated.
CREATE TABLE users (
    id             bigserial PRIMARY KEY,
    name           text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    role           text NOT NULL CHECK (role IN ('admin', 'creator', 'viewer')),
    password_hash  text,
    builtin        boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    id            bigserial PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash    text NOT NULL UNIQUE,
    label         text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);

CREATE TABLE sessions (
    id_hash     text PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE login_links (
    token_hash  text PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);

ALTER TABLE jobs ADD COLUMN public_id text;
UPDATE jobs SET public_id = replace(gen_random_uuid()::text, '-', '') WHERE public_id IS NULL;
ALTER TABLE jobs ALTER COLUMN public_id SET NOT NULL;
ALTER TABLE jobs ALTER COLUMN public_id SET DEFAULT replace(gen_random_uuid()::text, '-', '');
CREATE UNIQUE INDEX jobs_public_id ON jobs (public_id);
ALTER TABLE jobs ADD COLUMN owner_id bigint REFERENCES users (id) ON DELETE SET NULL;
ALTER TABLE jobs ADD COLUMN images_requested integer NOT NULL DEFAULT 1 CHECK (images_requested >= 0);
CREATE INDEX jobs_owner_created ON jobs (owner_id, created_at DESC);
CREATE INDEX jobs_open ON jobs (owner_id) WHERE status IN ('queued', 'running');
