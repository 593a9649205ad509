CREATE OR REPLACE FUNCTION md5_tasks_notify_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('md5_task_changed', NEW.task_id::text || ' ' || NEW.status::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
