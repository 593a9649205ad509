DROP TRIGGER md5_tasks_finished ON md5_tasks;
CREATE TRIGGER md5_tasks_finished
    AFTER UPDATE OF status ON md5_tasks
    FOR EACH ROW
    WHEN (NEW.status IN ('done', 'failed') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION md5_tasks_notify_finished();
DROP TABLE md5_uploads;
