DROP TRIGGER md5_tasks_changed ON md5_tasks;
DROP FUNCTION md5_tasks_notify_changed();

CREATE FUNCTION md5_tasks_notify_finished() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('md5_task_finished', NEW.task_id::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER md5_tasks_finished
    AFTER UPDATE OF status ON md5_tasks
    FOR EACH ROW
    WHEN (NEW.status IN ('done', 'failed', 'expired', 'cancelled') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION md5_tasks_notify_finished();
