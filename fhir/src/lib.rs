//! FHIR R4 JSON for Ferry: fhir-sdk's R4B models (which match R4 4.0.1 on the wire for the resources
//! Ferry serves) and the only functions that (de)serialise them.
//!
//! Every (de)serialisation of a FHIR model type in Ferry goes through this crate's non-generic
//! functions. serde code for the models is large (each resource can contain any other), and it is
//! generated where a generic serde call is instantiated; doing that once, here, keeps the gateway
//! crate's builds fast.

pub use fhir_sdk::r4b::{codes, resources, types};
pub use fhir_sdk::{Date, DateTime, Instant};

use fhir_sdk::r4b::resources::Resource;

/// A resource that could not be read from JSON.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// The element where reading failed, in FHIRPath-like dotted form (`Patient.name[0].given`);
    /// empty when the document itself is not JSON.
    pub path: String,
    /// A plain sentence saying what is wrong.
    pub message: String,
}

/// A resource that could not be written as JSON (in practice: never; kept typed so callers do not
/// have to unwrap).
#[derive(Debug, thiserror::Error)]
#[error("cannot write the resource as JSON: {0}")]
pub struct WriteError(#[from] serde_json::Error);

/// The resource as compact FHIR JSON.
pub fn to_vec(resource: &Resource) -> Result<Vec<u8>, WriteError> {
    Ok(serde_json::to_vec(resource)?)
}

/// Reads one resource of any type from FHIR JSON. The error names the element that failed
/// (`Patient.gender` for `"gender": "M"`), so an API can point the client at it.
///
/// The types Ferry works with are read directly as their struct: through the `Resource` enum
/// (tagged by `resourceType`) serde buffers the document first and loses the path of an error.
pub fn from_slice(bytes: &[u8]) -> Result<Resource, ParseError> {
    let resource_type = serde_json::from_slice::<TypeOnly>(bytes)
        .ok()
        .and_then(|t| t.resource_type)
        .unwrap_or_default();
    match resource_type.as_str() {
        "Patient" => typed::<resources::Patient>(bytes, &resource_type).map(Resource::Patient),
        "ServiceRequest" => {
            typed::<resources::ServiceRequest>(bytes, &resource_type).map(Resource::ServiceRequest)
        }
        "Encounter" => {
            typed::<resources::Encounter>(bytes, &resource_type).map(Resource::Encounter)
        }
        "Observation" => {
            typed::<resources::Observation>(bytes, &resource_type).map(Resource::Observation)
        }
        "DiagnosticReport" => typed::<resources::DiagnosticReport>(bytes, &resource_type)
            .map(Resource::DiagnosticReport),
        _ => typed::<Resource>(bytes, &resource_type),
    }
}

fn typed<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    resource_type: &str,
) -> Result<T, ParseError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = element_path(resource_type, &e.path().to_string());
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("the body is not valid JSON: {inner}")
        } else {
            inner.to_string()
        };
        ParseError { path, message }
    })?;
    de.end().map_err(|e| ParseError {
        path: String::new(),
        message: format!("the body has content after the resource: {e}"),
    })?;
    Ok(value)
}

/// Reads one resource from a JSON value (an entry of a Bundle, say).
pub fn from_value(value: &serde_json::Value) -> Result<Resource, ParseError> {
    match serde_json::to_vec(value) {
        Ok(bytes) => from_slice(&bytes),
        Err(e) => Err(ParseError {
            path: String::new(),
            message: e.to_string(),
        }),
    }
}

/// serde_path_to_error's path (`name[0].given`, or `.` for the root) prefixed with the resource
/// type, as FHIR's OperationOutcome.issue.expression expects.
fn element_path(resource_type: &str, inner: &str) -> String {
    let inner = inner.trim_start_matches('.');
    match (resource_type.is_empty(), inner.is_empty()) {
        (true, _) => inner.to_owned(),
        (false, true) => resource_type.to_owned(),
        (false, false) => format!("{resource_type}.{inner}"),
    }
}

#[derive(serde::Deserialize)]
struct TypeOnly {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_patient_and_names_the_element_that_fails() {
        let json = br#"{"resourceType":"Patient","id":"a1","gender":"female","birthDate":"1980-02-29","name":[{"family":"Muster","given":["Erika"]}]}"#;
        let resource = from_slice(json)
            .map_err(|e| e.message)
            .unwrap_or_else(|m| panic!("{m}"));
        let Resource::Patient(p) = &resource else {
            panic!("not a patient: {resource:?}")
        };
        assert_eq!(p.id.as_deref(), Some("a1"));
        let back = to_vec(&resource).unwrap_or_default();
        let a: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
        let b: serde_json::Value = serde_json::from_slice(&back).unwrap_or_default();
        assert_eq!(a, b);

        let bad = br#"{"resourceType":"Patient","name":[{"family":"X"}],"gender":"M"}"#;
        let err = from_slice(bad).err().map(|e| (e.path, e.message));
        let (path, message) = err.unwrap_or_default();
        assert_eq!(path, "Patient.gender", "{message}");

        let not_json = from_slice(b"{\"resourceType\":").err().map(|e| e.message);
        assert!(not_json.unwrap_or_default().contains("not valid JSON"));
    }
}
