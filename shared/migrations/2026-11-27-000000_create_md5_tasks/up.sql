-- The older system's table (task_id, status, result), extended with what the
-- service needs to track uploads, leases and the exactly-once results log.
CREATE TYPE task_status AS ENUM ('queued', 'processing', 'done', 'failed');

CREATE TABLE md5_tasks (
    task_id     uuid        PRIMARY KEY,
    status      task_status NOT NULL DEFAULT 'queued',
    result      text,
    file_name   text        NOT NULL,
    size_bytes  bigint      NOT NULL CHECK (size_bytes >= 0),
    error       text,
    attempts    integer     NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    finished_at timestamptz,
    -- Set once the task's line is in the results log; NULL means "not yet".
    logged_at   timestamptz,
    -- Consumer name of the worker that holds (or last held) the task.
    worker      text,
    -- A processing task whose lease has passed may be taken over by another worker.
    lease_until timestamptz,
    -- The x-request-id of the upload, so a task can be followed into the worker.
    request_id  text
);

-- Everything the sweeper looks at has not been logged yet; finished and logged
-- tasks (nearly all rows) stay out of this index.
CREATE INDEX md5_tasks_unlogged ON md5_tasks (created_at) WHERE logged_at IS NULL;

-- Wakes `GET /api/v1/hashes/{id}?wait=` requests the moment a task finishes, whoever finished it.
CREATE FUNCTION md5_tasks_notify_finished() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('md5_task_finished', NEW.task_id::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER md5_tasks_finished
    AFTER UPDATE OF status ON md5_tasks
    FOR EACH ROW
    WHEN (NEW.status IN ('done', 'failed') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION md5_tasks_notify_finished();
