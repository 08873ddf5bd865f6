-- Settings (alert mail configuration, as JSON) and the alert log that caps repeated mails.
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE alert_log (
    alert_key TEXT PRIMARY KEY,
    last_sent TEXT NOT NULL,
    suppressed BIGINT NOT NULL DEFAULT 0
);
