DROP INDEX md5_idempotency_keys_task;
