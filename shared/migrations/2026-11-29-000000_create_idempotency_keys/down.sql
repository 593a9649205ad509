DROP TABLE md5_idempotency_keys;
