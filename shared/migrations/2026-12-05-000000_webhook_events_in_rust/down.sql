CREATE FUNCTION md5_webhook_time(t timestamptz) RETURNS text AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$ LANGUAGE sql IMMUTABLE;

CREATE FUNCTION md5_tasks_webhook_event() RETURNS trigger AS $$
BEGIN
    INSERT INTO md5_webhook_deliveries (event_id, endpoint_id, task_id, payload)
    SELECT 'msg_' || replace(NEW.task_id::text, '-', '') || '_' || NEW.status::text,
           e.endpoint_id,
           NEW.task_id,
           jsonb_build_object(
               'type', 'task.' || NEW.status::text,
               'timestamp', md5_webhook_time(coalesce(NEW.finished_at, now())),
               'data', jsonb_build_object(
                   'id', NEW.task_id,
                   'status', NEW.status::text,
                   'md5', NEW.result,
                   'digests', CASE WHEN NEW.status = 'done'
                                   THEN jsonb_build_object('md5', NEW.result) || coalesce(NEW.digests, '{}'::jsonb)
                              END,
                   'file_name', NEW.file_name,
                   'size_bytes', NEW.size_bytes,
                   'error', NEW.error,
                   'attempts', NEW.attempts,
                   'created_at', md5_webhook_time(NEW.created_at),
                   'started_at', md5_webhook_time(NEW.started_at),
                   'finished_at', md5_webhook_time(NEW.finished_at)))::text
    FROM md5_webhook_endpoints AS e
    WHERE e.disabled_at IS NULL
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER md5_tasks_webhooks
    AFTER UPDATE OF status ON md5_tasks
    FOR EACH ROW
    WHEN (NEW.status IN ('done', 'failed', 'cancelled') AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION md5_tasks_webhook_event();
