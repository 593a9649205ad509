-- When a running worker last named this endpoint in its WEBHOOK_URLS (each one registers its
-- endpoints at start and every minute). Events are written only for endpoints seen lately, and a
-- worker delivers only to its own endpoints: a URL removed from every worker's configuration
-- receives nothing more.
ALTER TABLE md5_webhook_endpoints ADD COLUMN seen_at timestamptz NOT NULL DEFAULT now();
