-- Rule options: the disks to back up (JSON list of disk keys; empty: all) and whether deleting
-- the rule also deletes the points its jobs made.
ALTER TABLE rules ADD COLUMN disks TEXT NOT NULL DEFAULT '[]';
ALTER TABLE rules ADD COLUMN delete_data BIGINT NOT NULL DEFAULT 0;
