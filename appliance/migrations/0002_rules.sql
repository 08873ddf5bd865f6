-- Backup rules: which VMs of a platform, when (a full schedule and an incremental or
-- differential one, as JSON), how long points are kept (a retention policy, as JSON). A VM is in
-- at most one rule. The scheduler remembers up to when it has looked at each rule's schedule.
CREATE TABLE rules (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    platform_id BIGINT NOT NULL REFERENCES platforms(id),
    enabled BIGINT NOT NULL DEFAULT 1,
    full_schedule TEXT NOT NULL,
    partial_kind TEXT,
    partial_schedule TEXT,
    retention TEXT NOT NULL,
    quiesce TEXT NOT NULL,
    created TEXT NOT NULL,
    checked_until TEXT NOT NULL
);
CREATE TABLE rule_vms (
    rule_id BIGINT NOT NULL REFERENCES rules(id) ON DELETE CASCADE,
    platform_id BIGINT NOT NULL,
    vm TEXT NOT NULL,
    PRIMARY KEY (rule_id, vm),
    UNIQUE (platform_id, vm)
);
ALTER TABLE jobs ADD COLUMN rule_id BIGINT REFERENCES rules(id);
