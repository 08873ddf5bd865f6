-- Per rule: how one run's VMs take their snapshots (serial: one after another; parallel: all
-- together, then the reads), and the most MB/s its backups read together (NULL: no limit of
-- its own, the bandwidth windows only).
ALTER TABLE rules ADD COLUMN snapshot_mode TEXT NOT NULL DEFAULT 'serial';
ALTER TABLE rules ADD COLUMN bandwidth_mb_per_second DOUBLE PRECISION;
