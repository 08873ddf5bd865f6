-- A platform's settings are its kind's, one JSON object per platform (the registry in
-- connectors/ checks them); the libvirt URI column of the first schema becomes {"uri": …}.
-- The JSON string is escaped with REPLACE so the statement is the same on SQLite and PostgreSQL.
ALTER TABLE platforms ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
UPDATE platforms SET settings = '{"uri":"' || REPLACE(REPLACE(uri, '\', '\\'), '"', '\"') || '"}';
ALTER TABLE platforms DROP COLUMN uri;
