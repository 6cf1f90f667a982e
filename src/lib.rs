//! Ferry: an HL7 v2 / FHIR integration gateway.
#![forbid(unsafe_code)]

pub mod hl7;
