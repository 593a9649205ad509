-- Digests besides MD5 (see shared/src/digest.rs for the algorithm names).
--   algorithms: what the worker computes besides MD5: the upload's choice (or the api's DIGESTS)
--               and every algorithm the client sent an expected digest for.
--   expected:   the client's expected digests, {"<algorithm>": "<lowercase hex>"}; the worker
--               fails the task on a mismatch.
--   digests:    the computed digests besides MD5 (which stays in `result`), once `done`.
ALTER TABLE md5_tasks
    ADD COLUMN algorithms text[] NOT NULL DEFAULT '{}',
    ADD COLUMN expected   jsonb,
    ADD COLUMN digests    jsonb;

-- Found by content: one row per digest of a done task (MD5 included), written by the statement
-- that records the result. Read newest first by a backward scan of the primary key. No foreign
-- key (it would cost every result a lookup): the lookup joins md5_tasks, so a row whose task
-- was deleted is never shown.
CREATE TABLE md5_task_digests (
    algorithm   text        NOT NULL,
    digest      bytea       NOT NULL,
    finished_at timestamptz NOT NULL,
    task_id     uuid        NOT NULL,
    PRIMARY KEY (algorithm, digest, finished_at, task_id)
);

INSERT INTO md5_task_digests (algorithm, digest, finished_at, task_id)
SELECT 'md5', decode(result, 'hex'), finished_at, task_id
FROM md5_tasks
WHERE status = 'done' AND result IS NOT NULL AND finished_at IS NOT NULL;
