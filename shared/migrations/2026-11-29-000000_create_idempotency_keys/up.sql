-- `Idempotency-Key` of `POST /api/v1/hashes`: one row per key, reserved when its first upload
-- starts (reserved_until set, refreshed while the body streams) and completed in the same
-- transaction that inserts the task (reserved_until NULL, file_name and size_bytes set), so a
-- key names exactly one task across api replicas and restarts.
CREATE TABLE md5_idempotency_keys (
    key            text        PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 255),
    -- The task the key's upload creates (reserved) or created (completed).
    task_id        uuid        NOT NULL,
    -- The request the key was used for: a repeat must match them.
    file_name      text,
    size_bytes     bigint,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- While the first upload is still streaming; a reservation whose time has passed belongs
    -- to an api that died mid-upload and may be taken over.
    reserved_until timestamptz,
    CHECK ((reserved_until IS NULL) = (size_bytes IS NOT NULL))
);

-- The janitor deletes keys past the retention window, oldest first.
CREATE INDEX md5_idempotency_keys_created ON md5_idempotency_keys (created_at);
