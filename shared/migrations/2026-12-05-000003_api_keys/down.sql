ALTER TABLE md5_idempotency_keys DROP CONSTRAINT md5_idempotency_keys_key_check;
ALTER TABLE md5_idempotency_keys ADD CONSTRAINT md5_idempotency_keys_key_check CHECK (length(key) BETWEEN 1 AND 255);
ALTER TABLE md5_tasks DROP COLUMN owner;
DROP TABLE md5_api_keys;
