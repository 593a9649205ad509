-- One row per resumable upload still receiving bytes (its task is `uploading`); deleted when the
-- upload completes (the task becomes `queued`), expires or is terminated. Its file is written
-- in place at UPLOAD_DIR/<task_id>; `received_bytes` is its durable length: bytes past it (an
-- api killed mid-append) are cut off by the next append.
CREATE TABLE md5_uploads (
    task_id        uuid        PRIMARY KEY REFERENCES md5_tasks (task_id) ON DELETE CASCADE,
    -- NULL while the client defers the length (tus creation-defer-length).
    upload_length  bigint      CHECK (upload_length >= 0),
    received_bytes bigint      NOT NULL DEFAULT 0 CHECK (received_bytes >= 0),
    -- tus Upload-Metadata as the client sent it (echoed by HEAD).
    metadata       text,
    -- The address the upload was created from: open uploads are bounded per client too.
    client         text,
    -- Renewed by every append; past it the janitor removes the upload.
    expires_at     timestamptz NOT NULL,
    CHECK (upload_length IS NULL OR received_bytes <= upload_length)
);

CREATE INDEX md5_uploads_expires ON md5_uploads (expires_at);
CREATE INDEX md5_uploads_client ON md5_uploads (client);

-- `?wait=` requests wake for every terminal status.
DROP TRIGGER md5_tasks_finished ON md5_tasks;
CREATE TRIGGER md5_tasks_finished
    AFTER UPDATE OF status ON md5_tasks
    FOR EACH ROW
    WHEN (NEW.status IN ('done', 'failed', 'expired', 'cancelled') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION md5_tasks_notify_finished();
