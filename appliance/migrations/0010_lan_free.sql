-- Per rule: move the data over the storage network (SAN) where the platform offers it.
ALTER TABLE rules ADD COLUMN lan_free INTEGER NOT NULL DEFAULT 0;
