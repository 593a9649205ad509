-- Postgres cannot drop a value from an enum; the values stay (unused once md5_uploads is gone).
SELECT 1;
