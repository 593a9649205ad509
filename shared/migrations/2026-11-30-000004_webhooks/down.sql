DROP TRIGGER md5_tasks_webhooks ON md5_tasks;
DROP FUNCTION md5_tasks_webhook_event();
DROP FUNCTION md5_webhook_time(timestamptz);
DROP TABLE md5_webhook_deliveries;
DROP TABLE md5_webhook_endpoints;
