ALTER TABLE md5_uploads DROP COLUMN created_at;
