-- FHIR read models (projections of the event store), written in the same transaction as the events
-- they come from. Keep in step with migrations/postgres/0003_projections.sql.

-- The current version of every resource. `state` is Ferry's own JSON the next event updates; `body`
-- is the FHIR JSON served (with meta.versionId and meta.lastUpdated).
CREATE TABLE fhir_resources (
    hospital_id   TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version_id    INTEGER NOT NULL CHECK (version_id >= 1),
    -- Same format as events.recorded_at: the commit that wrote this version.
    last_updated  TEXT    NOT NULL,
    -- The Patient this resource belongs to (NULL for a Patient): merges move these.
    patient_id    TEXT,
    state         TEXT    NOT NULL,
    body          TEXT    NOT NULL,
    PRIMARY KEY (hospital_id, resource_type, id)
) STRICT;

CREATE INDEX fhir_resources_patient ON fhir_resources (hospital_id, patient_id)
    WHERE patient_id IS NOT NULL;
-- Type-level _lastUpdated searches and default ordering.
CREATE INDEX fhir_resources_updated ON fhir_resources (hospital_id, resource_type, last_updated);

-- Every version, for vread and _history.
CREATE TABLE fhir_history (
    hospital_id   TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version_id    INTEGER NOT NULL,
    last_updated  TEXT    NOT NULL,
    body          TEXT    NOT NULL,
    PRIMARY KEY (hospital_id, resource_type, id, version_id)
) STRICT;

CREATE INDEX fhir_history_updated ON fhir_history (hospital_id, resource_type, last_updated);

-- Search index: one row per searchable value of the current version (see src/projections/search.rs).
-- Tokens and references: system + value; strings: normalised value (prefix match); dates: low..high.
CREATE TABLE fhir_search (
    hospital_id   TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    system        TEXT NOT NULL,
    value         TEXT NOT NULL,
    low           TEXT,
    high          TEXT
) STRICT;

CREATE INDEX fhir_search_value ON fhir_search (hospital_id, resource_type, param, value, system);
CREATE INDEX fhir_search_low ON fhir_search (hospital_id, resource_type, param, low)
    WHERE low IS NOT NULL;
CREATE INDEX fhir_search_resource ON fhir_search (hospital_id, resource_type, id);
