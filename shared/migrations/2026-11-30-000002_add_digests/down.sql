DROP TABLE md5_task_digests;
ALTER TABLE md5_tasks DROP COLUMN algorithms, DROP COLUMN expected, DROP COLUMN digests;
