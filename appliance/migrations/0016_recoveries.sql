-- Instant-recovery sessions: a restore point exported over NFS to the clients named (a JSON
-- list of addresses and networks), and the VM started from it, if any. The token goes into every file handle of the session, so a
-- session keeps its handles across restarts and a later session never answers an older one's.
CREATE TABLE recoveries (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    point_id TEXT NOT NULL,
    clients TEXT NOT NULL,
    created TEXT NOT NULL,
    token BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    -- The VM the session started on a platform from the export (removed when it ends).
    platform_id BIGINT,
    vm_name TEXT,
    vm_macs_kept BIGINT
);
