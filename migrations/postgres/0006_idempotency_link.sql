-- The foreign key idempotency.inbound_id → inbound_messages.id goes. The batch insert
-- (store/postgres.rs, INSERT_INBOUND and INSERT_BATCH) writes each idempotency record in the same
-- statement as the inbound row it points at, and the store refuses, before any SQL, a record whose
-- inbound_id is not its own message's id (store/plan.rs, check_storable), which is stronger than
-- the key: that only asked for *some* inbound row. Checking the key cost a trigger call and a
-- locking lookup per record: about 85 µs of a 4-message batch's 340 µs (pgbench, BENCHMARKS.md),
-- on the path every ACK waits for. Nothing deletes inbound rows, so the link cannot dangle later.
-- SQLite keeps its key: there the check is a lookup in the same process, at no measurable cost.
ALTER TABLE idempotency DROP CONSTRAINT idempotency_inbound_id_fkey;
