-- Looking a message up by control ID without an index of its own on every inbound row. Keep in step
-- with migrations/postgres/0007_control_id_lookup.sql.
--
-- Every accepted HL7 message has an idempotency record keyed by its control ID, which points at its
-- inbound row (the store refuses an accepted message with a control ID and no such record:
-- store/plan.rs, check_storable). So the idempotency key, with the control ID moved up behind the
-- tenant, finds accepted messages by (tenant, control ID), and only rejected messages need an index
-- on the inbound log. Each of these indexes is written at one place per sender (each sender counts
-- its control IDs on its own), and SQLite writes every page a commit touches to the WAL in full:
-- with 8 senders a commit of 4 messages wrote 15 pages, 4 of them for this index (BENCHMARKS.md).
--
-- A WITHOUT ROWID table cannot change its primary key in place: the table is rebuilt.
-- On a large store this rebuilds the idempotency key and writes the new index while holding the
-- tables locked: run `ferry migrate` before starting the new release, in a quiet hour.
CREATE TABLE idempotency_by_control_id (
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
    PRIMARY KEY (hospital_id, control_id, sending_application, sending_facility)
) STRICT, WITHOUT ROWID;
INSERT INTO idempotency_by_control_id (hospital_id, sending_application, sending_facility,
    control_id, content_hash, ack, inbound_id, created_at)
SELECT hospital_id, sending_application, sending_facility, control_id, content_hash, ack,
    inbound_id, created_at
FROM idempotency;
DROP TABLE idempotency;
ALTER TABLE idempotency_by_control_id RENAME TO idempotency;

DROP INDEX inbound_messages_hospital_control_id;
-- "What happened to message X from hospital H?" for rejected messages (no idempotency record).
CREATE INDEX inbound_messages_rejected_control_id ON inbound_messages (hospital_id, control_id)
    WHERE status = 'rejected';
