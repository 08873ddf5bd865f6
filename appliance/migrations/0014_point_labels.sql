-- The restore points' timeline: each point's star and lock as the store's labels say (kept in
-- step by the API that changes them, and read again whenever a store is indexed), and the
-- transport each backup read through.
ALTER TABLE points ADD COLUMN star BIGINT NOT NULL DEFAULT 0;
ALTER TABLE points ADD COLUMN locked_until TEXT;
ALTER TABLE jobs ADD COLUMN transport TEXT;
