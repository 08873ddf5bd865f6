-- Storage targets: the stores backups go into. Target 1 is the data directory's own store,
-- made at first start; an admin adds others (a directory on another disk or a mount), each a
-- new store or an existing one adopted with its points. `secret` is an encrypted store's
-- passphrase, sealed with the appliance's key. Rules write into one target; jobs record the
-- target they wrote to; the points index says which target holds each point.
CREATE TABLE storage_targets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL UNIQUE,
    secret TEXT,
    created TEXT NOT NULL
);
ALTER TABLE rules ADD COLUMN storage_id BIGINT NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN storage_id BIGINT;
ALTER TABLE points ADD COLUMN storage_id BIGINT NOT NULL DEFAULT 1;
CREATE INDEX points_storage ON points(storage_id);
