DROP TABLE md5_tasks;
DROP FUNCTION md5_tasks_notify_finished();
DROP TYPE task_status;
