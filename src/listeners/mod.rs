//! The edges where data comes in and goes out: MLLP (HL7 v2 over TCP) and HTTP (health, metrics and
//! the FHIR API, and the admin API of outbound delivery).

pub mod admin;
pub mod fhir;
pub mod http;
pub mod mllp;
