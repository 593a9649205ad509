-- A task forgotten (DELETE, or past TASK_RETENTION_SECONDS) takes its Idempotency-Key with it:
-- found by its task, not by scanning every key.
CREATE INDEX md5_idempotency_keys_task ON md5_idempotency_keys (task_id);
