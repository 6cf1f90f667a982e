//! The edges where data comes in: MLLP (HL7 v2 over TCP) and HTTP (health, later FHIR).

pub mod http;
pub mod mllp;
