//! Ferry: an HL7 v2 / FHIR integration gateway.
//!
//! The pipeline, stage by stage, and the file of each:
//!
//! | stage | file |
//! |---|---|
//! | MLLP listener (accept loop, connections, shutdown) | `src/listeners/mllp.rs` |
//! | MLLP framing (codec) and client | `src/mllp/codec.rs`, `src/mllp/client.rs` |
//! | HTTP listener (health, metrics; nests the FHIR API) | `src/listeners/http.rs` |
//! | FHIR API: read, vread, history, search | `src/listeners/fhir/mod.rs` (`params.rs`, `outcome.rs`, `capability.rs`) |
//! | decode bytes → text by MSH-18 | `src/hl7/decode.rs` |
//! | parse (zero-copy), escapes, paths | `src/hl7/parse.rs`, `src/hl7/escape.rs`, `src/hl7/path.rs` |
//! | write HL7 v2 messages (outbound) | `src/hl7/write.rs` |
//! | ACK building | `src/hl7/ack.rs` |
//! | domain events (catalogue, payload types, payload check, stream ids) | `src/domain/mod.rs`, `src/domain/model.rs`, `src/domain/check.rs` |
//! | mapping: HL7 v2 → domain events (YAML rules, checks, explain, examples) | `src/mapping/mod.rs` (loader `load.rs`, evaluator `eval.rs`) |
//! | outbound mapping: stored event → HL7 v2 message or JSON for a destination | `src/mapping/outbound.rs` (files in `mappings/outbound/`) |
//! | hot reload of the mapping folder | `src/reload.rs` |
//! | ingest: validate → map → commit → ACK | `src/pipeline.rs` |
//! | group commit | `src/store/group_commit.rs` |
//! | store contract; SQLite and PostgreSQL backends | `src/store/mod.rs`, `src/store/sqlite.rs`, `src/store/postgres.rs` |
//! | projections: events → FHIR read models (in the commit) | `src/projections/mod.rs` (`apply.rs`, `render.rs`, `search.rs`); SQL in `src/store/sqlite_fhir.rs`, `src/store/postgres_fhir.rs`, `src/store/fhir.rs` |
//! | access control for the FHIR API (bearer JWTs, JWKS, SMART scopes) | `src/auth/mod.rs` (`jwks.rs`, `scopes.rs`) |
//! | wiring and shutdown | `src/app.rs` |
//! | configuration | `src/config.rs` |
//!
//! Dependencies point inward: `hl7` knows nothing of sockets or stores; `domain` depends on serde
//! only; `mapping` depends on `hl7` and `domain`, never on the store; `projections` depends on
//! `domain` and knows no SQL; `store` knows no HL7 text;
//! the pipeline ties them together for the listeners; `main.rs` depends on everything.
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod hl7;
pub mod listeners;
pub mod loadgen;
pub mod mapping;
pub mod mllp;
pub mod pipeline;
pub mod projections;
pub mod reload;
pub mod sink;
pub mod store;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;
