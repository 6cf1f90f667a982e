-- Ferry store, PostgreSQL flavour. Keep in step with migrations/sqlite/0001_initial.sql: same tables,
-- same column names, same meaning; only the types differ.

-- Every message as received, accepted or rejected: the audit log.
CREATE TABLE inbound_messages (
    id                  UUID        NOT NULL PRIMARY KEY,
    hospital_id         TEXT        NOT NULL,
    listener            TEXT        NOT NULL,
    peer                TEXT        NOT NULL,
    received_at         TIMESTAMPTZ NOT NULL,
    -- The frame payload byte for byte (may be in any character set, may contain \r, non-UTF-8).
    raw                 BYTEA       NOT NULL,
    -- NULL when the payload could not be decoded.
    decoded             TEXT,
    charset             TEXT,
    sending_application TEXT,
    sending_facility    TEXT,
    control_id          TEXT,
    message_type        TEXT,
    status              TEXT        NOT NULL CHECK (status IN ('accepted', 'rejected')),
    ack_code            TEXT,
    error               TEXT
);

-- "What happened to message X from hospital H?"
CREATE INDEX inbound_messages_hospital_control_id ON inbound_messages (hospital_id, control_id);
-- Time ranges, retention clean-up.
CREATE INDEX inbound_messages_received_at ON inbound_messages (received_at);

-- The event store. global_position is the total order of all events. Note: an identity column is a
-- sequence, so positions are unique and increasing in allocation order, but may have gaps (rolled-back
-- batches) and with several writers become visible slightly out of order.
CREATE TABLE events (
    global_position BIGINT      NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hospital_id     TEXT        NOT NULL,
    stream_id       TEXT        NOT NULL,
    -- 1, 2, 3, … per (hospital_id, stream_id).
    stream_version  BIGINT      NOT NULL CHECK (stream_version >= 1),
    event_type      TEXT        NOT NULL,
    schema_version  INTEGER     NOT NULL,
    payload         JSONB       NOT NULL,
    metadata        JSONB       NOT NULL,
    -- Transaction time of the commit that appended the event.
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Optimistic concurrency: a second instance appending the same version fails here (the store
    -- reports it as a version conflict). The index also serves read_stream and the version lookup.
    CONSTRAINT events_stream_version_unique UNIQUE (hospital_id, stream_id, stream_version)
);

-- Idempotency records: a resend (same tenant, MSH-3, MSH-4, MSH-10) is answered with the stored ACK.
-- Only accepted messages get one (a rejected message may be fixed and resent).
CREATE TABLE idempotency (
    hospital_id         TEXT        NOT NULL,
    sending_application TEXT        NOT NULL,
    sending_facility    TEXT        NOT NULL,
    control_id          TEXT        NOT NULL,
    -- SHA-256 of the message content, to tell a true resend from a reused control id.
    content_hash        BYTEA       NOT NULL,
    -- The exact ACK payload bytes that were sent.
    ack                 BYTEA       NOT NULL,
    -- The original message in the inbound log.
    inbound_id          UUID        NOT NULL REFERENCES inbound_messages (id),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (hospital_id, sending_application, sending_facility, control_id)
);
