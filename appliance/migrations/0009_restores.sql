-- Restores run as jobs too (states, progress, log, stop, events): kind says which. A restore's
-- point_id is the point it reads, its backup_type its mode (new_vm or in_place).
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'backup';
