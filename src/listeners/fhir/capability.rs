//! The CapabilityStatement: exactly what this API implements, generated from the same tables the
//! handlers use (resource types, interactions, search parameters), so it cannot claim more.

use serde_json::{Value, json};

use super::params;
use crate::mapping::WRITABLE_RESOURCES;
use crate::projections::ResourceType;

/// The statement as served (read through fhir-sdk's model, so it is a valid resource).
pub fn statement() -> Vec<u8> {
    let value = statement_value();
    let bytes = serde_json::to_vec(&value).unwrap_or_default();
    match ferry_fhir::from_slice(&bytes).and_then(|r| {
        ferry_fhir::to_vec(&r).map_err(|e| ferry_fhir::ParseError {
            path: String::new(),
            message: e.to_string(),
        })
    }) {
        Ok(modelled) => modelled,
        Err(e) => {
            // Pinned by a test; should it ever happen, serve what we built rather than nothing.
            tracing::error!(error = %e.message, path = %e.path, "CapabilityStatement does not fit the FHIR model.");
            bytes
        }
    }
}

fn statement_value() -> Value {
    let resources: Vec<Value> = ResourceType::ALL
        .into_iter()
        .map(|rt| {
            let search: Vec<Value> = params::params(rt)
                .iter()
                .map(|p| {
                    json!({
                        "name": p.name,
                        "type": p.kind.as_str(),
                        "documentation": p.doc,
                    })
                })
                .chain([
                    json!({ "name": "_id", "type": "token", "documentation": "Logical id." }),
                    json!({
                        "name": "_lastUpdated",
                        "type": "date",
                        "documentation": "When the resource last changed."
                    }),
                ])
                .collect();
            let writable = WRITABLE_RESOURCES.contains(&rt.as_str());
            let mut interaction = vec![
                json!({ "code": "read" }),
                json!({ "code": "vread" }),
                json!({ "code": "history-instance" }),
                json!({ "code": "history-type" }),
                json!({ "code": "search-type" }),
            ];
            if writable {
                interaction.push(json!({
                    "code": "create",
                    "documentation": "Mapped to domain events by mappings/fhir/; the id is \
                        derived from the first identifier (409 when that identifier is known)."
                }));
                interaction.push(json!({
                    "code": "update",
                    "documentation": "Of a resource Ferry holds; If-Match is honoured (412)."
                }));
            }
            let mut resource = json!({
                "type": rt.as_str(),
                "interaction": interaction,
                "versioning": if writable { "versioned-update" } else { "versioned" },
                "readHistory": true,
                "updateCreate": false,
                "conditionalCreate": writable,
                "conditionalRead": "not-supported",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "searchParam": search,
            });
            if rt != ResourceType::Patient {
                resource["searchInclude"] =
                    json!([format!("{rt}:patient"), format!("{rt}:subject")]);
            }
            resource
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "publisher": "Ferry",
        "kind": "instance",
        "software": { "name": "Ferry", "version": env!("CARGO_PKG_VERSION") },
        "implementation": {
            "description": "Ferry HL7 v2 / FHIR gateway: FHIR R4 API over the projections of its event store; writes become domain events"
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Resources are projections of the event store, which HL7 v2 feeds \
                and FHIR writes append to. Writes (create, update, transaction) of Patient and \
                ServiceRequest are mapped to domain events by mappings/fhir/. Search: repeated \
                parameters AND, comma-separated values OR (a literal comma cannot be escaped); \
                string parameters match by prefix ignoring case and accents (:exact and :contains \
                are supported); dates take the prefixes eq ne gt lt ge le sa eb ap; paging with \
                _count (default 20, at most 1000) and the next/previous links; _summary=count. \
                Unknown parameters are ignored unless the request says Prefer: handling=strict.",
            "resource": resources,
            "interaction": [{
                "code": "transaction",
                "documentation": "Bundles of POST (create, with ifNoneExist) and PUT (update, with \
                    ifMatch) entries of Patient and ServiceRequest, applied atomically; urn:uuid \
                    references between entries are resolved."
            }],
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_is_a_valid_capability_statement_listing_every_search_parameter() {
        let value = statement_value();
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        let parsed = ferry_fhir::from_slice(&bytes);
        assert!(
            parsed.is_ok(),
            "{:?}",
            parsed.err().map(|e| (e.path, e.message))
        );
        let served: Value = serde_json::from_slice(&statement()).unwrap_or_default();
        assert_eq!(served["resourceType"], "CapabilityStatement");
        assert_eq!(served["fhirVersion"], "4.0.1");
        let resources = served["rest"][0]["resource"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(resources.len(), ResourceType::ALL.len());
        for rt in ResourceType::ALL {
            let r = resources
                .iter()
                .find(|r| r["type"] == rt.as_str())
                .unwrap_or_else(|| panic!("{rt} missing"));
            let names: Vec<&str> = r["searchParam"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            for p in params::params(rt) {
                assert!(names.contains(&p.name), "{rt} lacks {}", p.name);
            }
            // Writes are claimed exactly for the types the API writes; delete never.
            let codes: Vec<&str> = r["interaction"]
                .as_array()
                .map(|a| a.iter().filter_map(|i| i["code"].as_str()).collect())
                .unwrap_or_default();
            let writable = WRITABLE_RESOURCES.contains(&rt.as_str());
            assert_eq!(codes.contains(&"create"), writable, "{rt}");
            assert_eq!(codes.contains(&"update"), writable, "{rt}");
            assert!(!codes.contains(&"delete"));
        }
    }
}
