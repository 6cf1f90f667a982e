-- Lets the batch insert (one statement, committed on its own) abort itself when fewer idempotency
-- records went in than were sent: another Ferry instance inserted one of the keys meanwhile, and
-- the whole batch must be rolled back and retried (it then answers that message as a duplicate).
-- Raising inside the statement rolls it back without a separate BEGIN/COMMIT round trip.
-- SQLSTATE FE001 is Ferry's own code; the store maps it to StoreError::IdempotencyRace.
CREATE FUNCTION ferry_check_idempotency_inserted(sent BIGINT, inserted BIGINT) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF inserted <> sent THEN
        RAISE EXCEPTION 'idempotency race: % of % idempotency records inserted', inserted, sent
            USING ERRCODE = 'FE001';
    END IF;
    RETURN inserted;
END
$$;
