-- Every status change is announced (payload: "<task id> <new status>"), not only the terminal
-- ones: event streams show queued -> processing, and workers stop a hash whose task was
-- cancelled. A task whose lease passed and is claimed again stays `processing`: no change.
CREATE FUNCTION md5_tasks_notify_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('md5_task_changed', NEW.task_id::text || ' ' || NEW.status::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER md5_tasks_finished ON md5_tasks;
DROP FUNCTION md5_tasks_notify_finished();

CREATE TRIGGER md5_tasks_changed
    AFTER UPDATE OF status ON md5_tasks
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION md5_tasks_notify_changed();
