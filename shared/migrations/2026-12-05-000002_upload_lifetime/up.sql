-- When a resumable upload was created: its whole life (UPLOAD_EXPIRY_SECONDS) counts from here,
-- while each append renews only its idle limit (UPLOAD_IDLE_SECONDS).
ALTER TABLE md5_uploads ADD COLUMN created_at timestamptz NOT NULL DEFAULT now();
