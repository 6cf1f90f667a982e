-- FHIR read models (projections of the event store), written in the same transaction as the events
-- they come from. Keep in step with migrations/sqlite/0002_projections.sql; see there for comments.
-- Timestamps of the index (low, high) are fixed-width UTC text as on SQLite, so that both backends
-- compare them the same way; COLLATE "C" makes text order byte order whatever the database locale.

CREATE TABLE fhir_resources (
    hospital_id   TEXT        NOT NULL,
    resource_type TEXT        NOT NULL,
    id            TEXT        NOT NULL,
    version_id    BIGINT      NOT NULL CHECK (version_id >= 1),
    last_updated  TIMESTAMPTZ NOT NULL,
    patient_id    TEXT,
    state         TEXT        NOT NULL,
    body          TEXT        NOT NULL,
    PRIMARY KEY (hospital_id, resource_type, id)
);

CREATE INDEX fhir_resources_patient ON fhir_resources (hospital_id, patient_id)
    WHERE patient_id IS NOT NULL;
CREATE INDEX fhir_resources_updated ON fhir_resources (hospital_id, resource_type, last_updated);

CREATE TABLE fhir_history (
    hospital_id   TEXT        NOT NULL,
    resource_type TEXT        NOT NULL,
    id            TEXT        NOT NULL,
    version_id    BIGINT      NOT NULL,
    last_updated  TIMESTAMPTZ NOT NULL,
    body          TEXT        NOT NULL,
    PRIMARY KEY (hospital_id, resource_type, id, version_id)
);

CREATE INDEX fhir_history_updated ON fhir_history (hospital_id, resource_type, last_updated);

CREATE TABLE fhir_search (
    hospital_id   TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    system        TEXT COLLATE "C" NOT NULL,
    value         TEXT COLLATE "C" NOT NULL,
    low           TEXT COLLATE "C",
    high          TEXT COLLATE "C"
);

CREATE INDEX fhir_search_value ON fhir_search (hospital_id, resource_type, param, value, system);
CREATE INDEX fhir_search_low ON fhir_search (hospital_id, resource_type, param, low)
    WHERE low IS NOT NULL;
CREATE INDEX fhir_search_resource ON fhir_search (hospital_id, resource_type, id);
