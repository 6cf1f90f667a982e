-- Outbound delivery: the outbox and its lanes. Keep in step with migrations/postgres/0004_outbox.sql.
--
-- An outbox row is one event to deliver to one destination (through one subscription). It is
-- written in the same transaction as the event, so an event is never stored without its
-- deliveries nor the other way round. The message itself is rendered when it is sent, from the
-- event and the outbound mapping named here; its MSH-10 is the row id, so every attempt sends the
-- same control id.

CREATE TABLE outbox (
    id             INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    hospital_id    TEXT    NOT NULL,
    destination    TEXT    NOT NULL,
    -- Messages of one lane are delivered strictly in id order; lanes are independent. The lane is
    -- the patient's (or order's) stream id, so it reveals no identifier.
    lane           TEXT    NOT NULL,
    subscription   TEXT    NOT NULL,
    -- The outbound mapping file, e.g. outbound/pacs_orm_o01.
    mapping        TEXT    NOT NULL,
    -- The event, by its unique stream position.
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    event_type     TEXT    NOT NULL,
    -- pending → delivered; pending → dead (the dead-letter queue) → pending (retry) or discarded.
    status         TEXT    NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'delivered', 'dead', 'discarded')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT    NOT NULL,
    last_attempt_at TEXT,
    -- When the message was delivered, dead-lettered or discarded.
    finished_at    TEXT,
    -- Why the last attempt failed, in a plain sentence.
    last_error     TEXT,
    -- What the receiver answered last (the ACK, or the HTTP status line and the body's start).
    last_response  BLOB,
    FOREIGN KEY (hospital_id, stream_id, stream_version)
        REFERENCES events (hospital_id, stream_id, stream_version)
) STRICT;

-- The work: pending rows per lane, in order. Delivered rows leave the index.
CREATE INDEX outbox_pending ON outbox (destination, lane, id) WHERE status = 'pending';
-- The dead-letter queue; a dead row blocks its lane.
CREATE INDEX outbox_dead ON outbox (destination, lane, id) WHERE status = 'dead';

-- One row per lane ever used: who is delivering it now (a lease that expires, so a crashed
-- instance's lanes are taken over), when it may next be tried (backoff after a failure), and
-- whether it has work. `enqueued` counts the rows ever queued in the lane (raised by the
-- transaction that queues them); `seen` is the count a dispatcher found the lane drained at. A lane
-- has work while enqueued > seen, so finding work reads this small index, not the outbox; and a
-- row queued while a dispatcher drains the lane raises `enqueued` past what it saw, so it is
-- never stranded. `blocked`: its head message is a dead letter.
CREATE TABLE outbox_lanes (
    destination TEXT    NOT NULL,
    lane        TEXT    NOT NULL,
    hospital_id TEXT    NOT NULL,
    ready_at    TEXT    NOT NULL,
    lease_owner TEXT,
    lease_until TEXT,
    enqueued    INTEGER NOT NULL DEFAULT 0,
    seen        INTEGER NOT NULL DEFAULT 0,
    blocked     INTEGER NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1)),
    PRIMARY KEY (destination, lane)
) STRICT, WITHOUT ROWID;

CREATE INDEX outbox_lanes_ready ON outbox_lanes (destination, ready_at)
    WHERE enqueued > seen AND blocked = 0;
