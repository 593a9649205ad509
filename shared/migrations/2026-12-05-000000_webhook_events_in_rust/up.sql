-- A task's webhook events are written by the code that ends the task (shared::webhooks::
-- write_events, in the same transaction), with the body the task's Rust type serializes: the
-- trigger that built a copy of that body in SQL goes.
DROP TRIGGER md5_tasks_webhooks ON md5_tasks;
DROP FUNCTION md5_tasks_webhook_event();
DROP FUNCTION md5_webhook_time(timestamptz);
