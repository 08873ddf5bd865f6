-- Per rule: use the platform's change tracking where the VM supports it (auto), require it (on)
-- or never use it (off: every run reads whole disks).
ALTER TABLE rules ADD COLUMN change_tracking TEXT NOT NULL DEFAULT 'auto';
