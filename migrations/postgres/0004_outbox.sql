-- Outbound delivery: the outbox and its lanes. Keep in step with migrations/sqlite/0003_outbox.sql.
--
-- An outbox row is one event to deliver to one destination (through one subscription). It is
-- written in the same statement as the event, so an event is never stored without its deliveries
-- nor the other way round. The message itself is rendered when it is sent, from the event and the
-- outbound mapping named here; its MSH-10 is the row id, so every attempt sends the same control id.
--
-- Several instances share the outbox: a lane is taken with a lease (outbox_lanes, claimed with
-- FOR UPDATE SKIP LOCKED), so each lane, and so each message, is in flight on one instance at a time.

CREATE TABLE outbox (
    id             BIGINT      NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hospital_id    TEXT        NOT NULL,
    destination    TEXT        NOT NULL,
    -- Messages of one lane are delivered strictly in id order; lanes are independent.
    lane           TEXT        NOT NULL,
    subscription   TEXT        NOT NULL,
    mapping        TEXT        NOT NULL,
    stream_id      TEXT        NOT NULL,
    stream_version BIGINT      NOT NULL,
    event_type     TEXT        NOT NULL,
    status         TEXT        NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'delivered', 'dead', 'discarded')),
    attempts       INTEGER     NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ NOT NULL,
    last_attempt_at TIMESTAMPTZ,
    finished_at    TIMESTAMPTZ,
    last_error     TEXT,
    last_response  BYTEA,
    FOREIGN KEY (hospital_id, stream_id, stream_version)
        REFERENCES events (hospital_id, stream_id, stream_version)
);

CREATE INDEX outbox_pending ON outbox (destination, lane, id) WHERE status = 'pending';
CREATE INDEX outbox_dead ON outbox (destination, lane, id) WHERE status = 'dead';

-- One row per lane ever used: lease, backoff, and whether it has work (enqueued > seen; see the
-- SQLite migration for how the two counters keep a lane from being stranded). `blocked`: its head
-- message is a dead letter.
CREATE TABLE outbox_lanes (
    destination TEXT        NOT NULL,
    lane        TEXT        NOT NULL,
    hospital_id TEXT        NOT NULL,
    ready_at    TIMESTAMPTZ NOT NULL,
    lease_owner TEXT,
    lease_until TIMESTAMPTZ,
    enqueued    BIGINT      NOT NULL DEFAULT 0,
    seen        BIGINT      NOT NULL DEFAULT 0,
    blocked     BOOLEAN     NOT NULL DEFAULT false,
    PRIMARY KEY (destination, lane)
);

CREATE INDEX outbox_lanes_ready ON outbox_lanes (destination, ready_at)
    WHERE enqueued > seen AND NOT blocked;
