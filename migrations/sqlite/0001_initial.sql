-- Ferry store, SQLite flavour. Keep in step with migrations/postgres/0001_initial.sql: same tables, same
-- column names, same meaning; only the types differ.
--
-- Conventions for SQLite:
-- * UUIDs are TEXT in the canonical hyphenated lower-case form, so people can read and compare them.
-- * Timestamps are TEXT, RFC 3339 in UTC with exactly six fractional digits
--   (2026-11-22T08:00:42.123456Z). The fixed width makes text order equal time order, so the index
--   on received_at works for ranges; microseconds match PostgreSQL's precision.
-- * JSON is TEXT; SQLite's json_* functions read it directly (json_extract(payload, '$.patient.id')).
-- * STRICT tables: SQLite refuses a value of the wrong type instead of storing it silently.

-- Every message as received, accepted or rejected: the audit log.
CREATE TABLE inbound_messages (
    id                  TEXT    NOT NULL PRIMARY KEY,
    hospital_id         TEXT    NOT NULL,
    listener            TEXT    NOT NULL,
    peer                TEXT    NOT NULL,
    received_at         TEXT    NOT NULL,
    -- The frame payload byte for byte (may be in any character set, may contain \r, non-UTF-8).
    raw                 BLOB    NOT NULL,
    -- NULL when the payload could not be decoded.
    decoded             TEXT,
    charset             TEXT,
    sending_application TEXT,
    sending_facility    TEXT,
    control_id          TEXT,
    message_type        TEXT,
    status              TEXT    NOT NULL CHECK (status IN ('accepted', 'rejected')),
    ack_code            TEXT,
    error               TEXT
) STRICT;

-- "What happened to message X from hospital H?"
CREATE INDEX inbound_messages_hospital_control_id ON inbound_messages (hospital_id, control_id);
-- Time ranges, retention clean-up.
CREATE INDEX inbound_messages_received_at ON inbound_messages (received_at);

-- The event store. global_position is the total order of all events (AUTOINCREMENT: never reused,
-- even after the newest rows are deleted, so a projection's checkpoint stays meaningful).
CREATE TABLE events (
    global_position INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    hospital_id     TEXT    NOT NULL,
    stream_id       TEXT    NOT NULL,
    -- 1, 2, 3, … per (hospital_id, stream_id).
    stream_version  INTEGER NOT NULL CHECK (stream_version >= 1),
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    payload         TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,
    recorded_at     TEXT    NOT NULL,
    -- Optimistic concurrency: a second writer appending the same version fails here. The index also
    -- serves read_stream and the "current version of these streams" lookup.
    CONSTRAINT events_stream_version_unique UNIQUE (hospital_id, stream_id, stream_version)
) STRICT;

-- Idempotency records: a resend (same tenant, MSH-3, MSH-4, MSH-10) is answered with the stored ACK.
-- Only accepted messages get one (a rejected message may be fixed and resent).
CREATE TABLE idempotency (
    hospital_id         TEXT NOT NULL,
    sending_application TEXT NOT NULL,
    sending_facility    TEXT NOT NULL,
    control_id          TEXT NOT NULL,
    -- SHA-256 of the message content, to tell a true resend from a reused control id.
    content_hash        BLOB NOT NULL,
    -- The exact ACK payload bytes that were sent.
    ack                 BLOB NOT NULL,
    -- The original message in the inbound log.
    inbound_id          TEXT NOT NULL REFERENCES inbound_messages (id),
    created_at          TEXT NOT NULL,
    PRIMARY KEY (hospital_id, sending_application, sending_facility, control_id)
) STRICT, WITHOUT ROWID;
