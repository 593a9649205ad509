-- Resumable uploads: a task exists from the upload's creation on (`uploading`), and ends
-- `expired` when abandoned or `cancelled` when its upload is terminated. (A value added here
-- cannot be used in the same transaction: the next migration uses them.)
ALTER TYPE task_status ADD VALUE IF NOT EXISTS 'uploading' BEFORE 'queued';
ALTER TYPE task_status ADD VALUE IF NOT EXISTS 'expired';
ALTER TYPE task_status ADD VALUE IF NOT EXISTS 'cancelled';
