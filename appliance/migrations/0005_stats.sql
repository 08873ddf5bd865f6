-- Statistics: whether a failed job's error has been read, and the bytes a point protects (the
-- sum of its disks' sizes).
ALTER TABLE jobs ADD COLUMN error_read BIGINT NOT NULL DEFAULT 0;
ALTER TABLE points ADD COLUMN protected_bytes BIGINT NOT NULL DEFAULT 0;
