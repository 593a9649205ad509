-- Workers need only the changes that stop a hash (a task cancelled, or an upload expired), so
-- those are also announced on a channel of their own ("<task id> <new status>"), which workers
-- listen to instead of every change: a task that ends as it should is sent to the api's
-- listener alone, not to every worker process. (Postgres still signals each listening backend,
-- which forwards only its own channels.)
CREATE OR REPLACE FUNCTION md5_tasks_notify_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('md5_task_changed', NEW.task_id::text || ' ' || NEW.status::text);
    IF NEW.status IN ('cancelled', 'expired') THEN
        PERFORM pg_notify('md5_task_stopped', NEW.task_id::text || ' ' || NEW.status::text);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
