-- Instant-recovery sessions: a restore point exported over NFS to the clients named (a JSON
-- list of addresses and networks). The token goes into every file handle of the session, so a
-- session keeps its handles across restarts and a later session never answers an older one's.
CREATE TABLE recoveries (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    point_id TEXT NOT NULL,
    clients TEXT NOT NULL,
    created TEXT NOT NULL,
    token BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
