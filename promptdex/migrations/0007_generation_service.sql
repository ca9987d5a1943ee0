-- Generation as a service. A job's `kind` column now says what its payload is (it always said 'generate' while
-- the payload's own "kind" decided); jobs can be cancelled; a running job reports its progress and a small
-- preview; claims are fair between users (priority, then round-robin over owners) and batch compatible jobs
-- (same batch_key); new jobs wake idle workers by NOTIFY instead of polling.
UPDATE jobs SET kind = payload->>'kind' WHERE payload ? 'kind';
UPDATE jobs SET payload = payload - 'kind';
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_known CHECK (kind IN ('generate', 'reproduce', 'variations'));
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled'));
ALTER TABLE jobs ADD COLUMN priority integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN batch_key text;
ALTER TABLE jobs ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
ALTER TABLE jobs ADD COLUMN progress jsonb;
ALTER TABLE jobs ADD COLUMN preview text;
ALTER TABLE jobs ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX jobs_fair ON jobs (priority DESC, owner_id, id) WHERE status = 'queued';

CREATE FUNCTION promptdex_jobs_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('promptdex_jobs', '');
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_wake AFTER INSERT ON jobs FOR EACH STATEMENT EXECUTE FUNCTION promptdex_jobs_wake();
