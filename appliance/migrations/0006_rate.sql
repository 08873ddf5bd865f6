-- A running job's transfer rate (bytes per second) and its estimated seconds left.
ALTER TABLE jobs ADD COLUMN rate BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN eta_seconds BIGINT;
