-- Where a restore's point came from: the kind of platform that made it (the point's VM
-- description says) and that platform's name when the catalog still knows the backup job that
-- made the point (a re-imported point has none). Empty for backups. Kept as text, so a restore
-- job still says it after the source platform is removed.
ALTER TABLE jobs ADD COLUMN source_kind TEXT;
ALTER TABLE jobs ADD COLUMN source_platform TEXT;
