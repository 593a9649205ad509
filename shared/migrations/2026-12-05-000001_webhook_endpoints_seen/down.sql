ALTER TABLE md5_webhook_endpoints DROP COLUMN seen_at;
