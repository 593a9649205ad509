-- Workers need only the changes that stop a hash (a task cancelled, or an upload expired), so
-- those are also announced on a channel of their own ("<task id> <new status>"), which workers
-- listen to instead of every change: a task that ends as it should wakes the api's listener
-- alone, not one listening connection (and its worker) per worker process.
CREATE OR REPLACE FUNCTION md5_tasks_notify_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('md5_task_changed', NEW.task_id::text || ' ' || NEW.status::text);
    IF NEW.status IN ('cancelled', 'expired') THEN
        PERFORM pg_notify('md5_task_stopped', NEW.task_id::text || ' ' || NEW.status::text);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
