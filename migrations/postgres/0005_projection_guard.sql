-- A batch's read-model rows are written by one statement (store/postgres_fhir.rs, WRITE_SQL).
-- It ends by calling this check: when fewer resources were written than planned, another
-- instance changed or created one of them since this batch read it, and the statement fails
-- with serialization_failure (40001), which Ferry retries as contention.
CREATE FUNCTION ferry_check_resources_written(planned BIGINT, written BIGINT) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF written <> planned THEN
        RAISE EXCEPTION 'read-model contention: % of % resources written', written, planned
            USING ERRCODE = '40001';
    END IF;
    RETURN written;
END
$$;
