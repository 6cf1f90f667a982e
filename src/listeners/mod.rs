//! The edges where data comes in and goes out: MLLP (HL7 v2 over TCP) and HTTP (health, metrics and
//! the FHIR API).

pub mod fhir;
pub mod http;
pub mod mllp;
