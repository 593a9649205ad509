-- API keys, one per client (`md5-api keys create`). Only a key's SHA-256 is stored: a key is
-- 256 random bits, so a fast hash is enough, and a dump of the database holds no usable key.
-- Revoked keys stay (revoked_at set): their tasks keep their owner, their names are not reused,
-- and revoking the last key does not open the service again.
CREATE TABLE md5_api_keys (
    key_id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    key_hash     bytea       NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    admin        boolean     NOT NULL DEFAULT false,
    -- Per-key quotas: NULL takes the api's per-client setting.
    quotas       jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    -- Every change the api replicas must see (creation, revocation, quotas); they poll for it.
    changed_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The key whose client created the task; NULL for a task of an anonymous client or of the
-- shared API_KEY. Another key's task answers as a task that does not exist.
ALTER TABLE md5_tasks ADD COLUMN owner bigint;

-- An Idempotency-Key is stored as "<key_id> <key>" for a key's client (a client's key has no
-- space), so two clients' keys never meet: up to 255 characters as sent, plus the prefix.
ALTER TABLE md5_idempotency_keys DROP CONSTRAINT md5_idempotency_keys_key_check;
ALTER TABLE md5_idempotency_keys ADD CONSTRAINT md5_idempotency_keys_key_check CHECK (length(key) BETWEEN 1 AND 300);
