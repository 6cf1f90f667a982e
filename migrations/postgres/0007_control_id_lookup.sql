-- Looking a message up by control ID without an index of its own on every inbound row. Keep in step
-- with migrations/sqlite/0004_control_id_lookup.sql, which says why.
--
-- Accepted messages are found through their idempotency record, whose key now starts with the
-- tenant and the control ID; rejected messages (no record) through a partial index.
-- On a large store this rebuilds the idempotency key and writes the new index while holding the
-- tables locked: run `ferry migrate` before starting the new release, in a quiet hour.
ALTER TABLE idempotency DROP CONSTRAINT idempotency_pkey;
ALTER TABLE idempotency ADD CONSTRAINT idempotency_pkey
    PRIMARY KEY (hospital_id, control_id, sending_application, sending_facility);

DROP INDEX inbound_messages_hospital_control_id;
-- "What happened to message X from hospital H?" for rejected messages (no idempotency record).
CREATE INDEX inbound_messages_rejected_control_id ON inbound_messages (hospital_id, control_id)
    WHERE status = 'rejected';
