-- The catalog: users and sessions, platforms, jobs and their logs, an index of the store's
-- points (rebuilt from the store on every start), and the audit log. Portable SQL: SQLite now,
-- PostgreSQL with the same statements later.
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    must_change BIGINT NOT NULL,
    failed_logins BIGINT NOT NULL DEFAULT 0,
    locked_until TEXT
);
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id),
    csrf TEXT NOT NULL,
    expires TEXT NOT NULL
);
CREATE TABLE platforms (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    uri TEXT NOT NULL,
    username TEXT,
    secret TEXT,
    reached TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    platform_id BIGINT NOT NULL REFERENCES platforms(id),
    vm TEXT NOT NULL,
    backup_type TEXT NOT NULL,
    state TEXT NOT NULL,
    percent DOUBLE PRECISION NOT NULL DEFAULT 0,
    done_bytes BIGINT NOT NULL DEFAULT 0,
    total_bytes BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    point_id TEXT,
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT
);
CREATE TABLE job_logs (
    id INTEGER PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    time TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX job_logs_job ON job_logs(job_id);
CREATE TABLE points (
    point_id TEXT PRIMARY KEY,
    vm_key TEXT NOT NULL,
    vm_name TEXT NOT NULL,
    backup_type TEXT NOT NULL,
    started TEXT NOT NULL,
    finished TEXT NOT NULL,
    parent TEXT,
    stored_bytes BIGINT NOT NULL
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    user_name TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
