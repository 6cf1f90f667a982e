//! The projection rules over the expected events of the shipped mapping examples
//! (`mappings/examples/*.json`), with metadata built as the ingest pipeline builds it.

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::*;
use crate::domain::{Payload, PayloadRef, StreamKind, stream_id, stream_key};

const TENANT: &str = "h1";

/// (event_type, payload, metadata) of every event an example expects.
fn example(name: &str) -> Vec<(String, Value, Value)> {
    let path = format!(
        "{}/mappings/examples/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let events: Vec<Value> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    events
        .into_iter()
        .map(|e| {
            let payload = e["payload"].clone();
            let mut streams = serde_json::Map::new();
            for kind in [
                StreamKind::Patient,
                StreamKind::Encounter,
                StreamKind::Order,
            ] {
                if let Some((a, v)) = stream_key(kind, &payload) {
                    streams.insert(
                        kind.as_str().into(),
                        stream_id(kind, TENANT, a.as_deref(), &v).into(),
                    );
                }
            }
            let metadata = json!({
                "inbound_id": format!("inbound-{name}"),
                "received_at": "2026-11-22T10:00:00Z",
                "streams": streams,
            });
            (
                e["event"].as_str().unwrap_or_default().to_owned(),
                payload,
                metadata,
            )
        })
        .collect()
}

/// Projects the examples in order, each as its own batch, carrying state over like the store does.
struct World {
    rows: std::collections::HashMap<ResourceKey, CurrentRow>,
    history: Vec<HistoryRow>,
    now: OffsetDateTime,
}

impl World {
    fn new() -> Self {
        Self {
            rows: Default::default(),
            history: Vec::new(),
            now: OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000),
        }
    }

    fn run(&mut self, names: &[&str]) {
        for name in names {
            self.run_events(name, example(name));
        }
    }

    fn run_events(&mut self, name: &str, events: Vec<(String, Value, Value)>) {
        {
            // As the ingest pipeline hands new events over: payloads as JSON text.
            let texts: Vec<Payload> = events.iter().map(|(_, p, _)| Payload::from(p)).collect();
            let views: Vec<EventView<'_>> = events
                .iter()
                .zip(&texts)
                .map(|((t, _, m), p)| EventView {
                    tenant: TENANT,
                    event_type: t,
                    payload: PayloadRef::Text(p),
                    metadata: m,
                })
                .collect();
            let plan = plan(views.iter().copied());
            let mut loaded: Vec<Loaded> = plan
                .keys
                .iter()
                .filter_map(|k| self.rows.get(k))
                .map(|r| Loaded {
                    key: r.key.clone(),
                    version: r.version,
                    state: r.state.clone(),
                })
                .collect();
            for (_, patient) in &plan.patients {
                for r in self.rows.values() {
                    if r.patient.as_deref() == Some(patient.as_str())
                        && !loaded.iter().any(|l| l.key == r.key)
                    {
                        loaded.push(Loaded {
                            key: r.key.clone(),
                            version: r.version,
                            state: r.state.clone(),
                        });
                    }
                }
            }
            self.now += time::Duration::seconds(1);
            let mut projector = Projector::new(self.now, loaded).unwrap_or_else(|e| panic!("{e}"));
            for v in &views {
                projector.apply(v).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            let out = projector.finish().unwrap_or_else(|e| panic!("{name}: {e}"));
            for row in out.current {
                self.rows.insert(row.key.clone(), row);
            }
            self.history.extend(out.history);
        }
    }

    fn of(&self, t: ResourceType) -> Vec<(&CurrentRow, Value)> {
        let mut rows: Vec<&CurrentRow> = self
            .rows
            .values()
            .filter(|r| r.key.resource_type == t)
            .collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows.into_iter()
            .map(|r| (r, serde_json::from_str(&r.body).unwrap_or_default()))
            .collect()
    }
}

#[test]
fn every_rendered_body_reads_back_as_its_fhir_resource() {
    let mut w = World::new();
    let names: Vec<String> =
        std::fs::read_dir(format!("{}/mappings/examples", env!("CARGO_MANIFEST_DIR")))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()?
                            .strip_suffix(".json")
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default();
    assert!(names.len() > 40, "examples not found");
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    w.run(&names);
    for t in ResourceType::ALL {
        assert!(!w.of(t).is_empty(), "no {t} from the examples");
    }
    for h in &w.history {
        let parsed = ferry_fhir::from_slice(h.body.as_bytes());
        assert!(
            parsed.is_ok(),
            "{}: {:?}\n{}",
            h.key.id,
            parsed.err().map(|e| (e.path, e.message)),
            h.body
        );
        let v: Value = serde_json::from_str(&h.body).unwrap_or_default();
        assert_eq!(v["resourceType"], h.key.resource_type.as_str());
        assert_eq!(v["id"], h.key.id.as_str());
        assert_eq!(v["meta"]["versionId"], h.version.to_string());
    }
}

#[test]
fn an_admission_makes_patient_and_encounter_and_later_events_move_the_status() {
    let mut w = World::new();
    w.run(&["adt_a01_basic"]);
    let patients = w.of(ResourceType::Patient);
    assert_eq!(patients.len(), 1);
    let (row, patient) = &patients[0];
    assert_eq!(patient["identifier"][0]["value"], "100010");
    assert_eq!(
        patient["identifier"][0]["system"],
        "urn:ferry:authority:TEST-HOSP"
    );
    assert_eq!(patient["identifier"][0]["type"]["coding"][0]["code"], "MR");
    assert_eq!(patient["name"][0]["family"], "Brandt");
    assert_eq!(patient["gender"], "female");
    assert_eq!(patient["birthDate"], "1984-03-12");
    assert_eq!(patient["active"], true);
    assert_eq!(row.version, 1);
    let encounters = w.of(ResourceType::Encounter);
    assert_eq!(encounters.len(), 1);
    let (enc_row, enc) = &encounters[0];
    assert_eq!(enc["status"], "in-progress");
    assert_eq!(enc["class"]["code"], "IMP");
    assert_eq!(
        enc["subject"]["reference"],
        format!("Patient/{}", row.key.id)
    );
    assert_eq!(enc["period"]["start"], "2026-11-03T14:30:00+01:00");
    assert_eq!(
        enc["participant"][0]["individual"]["display"],
        "Dr. Chidi Okafor"
    );
    assert_eq!(enc_row.patient.as_deref(), Some(row.key.id.as_str()));

    // The same admission again changes nothing: no new version.
    w.run(&["adt_a01_basic"]);
    assert_eq!(w.of(ResourceType::Encounter)[0].0.version, 1);
    assert_eq!(w.history.len(), 2);

    // Discharged (with a time): finished, period closed; the discharge cancelled: in progress
    // again, period open; the admission cancelled: cancelled.
    let as_event = |event_type: &str, discharged: Option<&str>| {
        let mut events = example("adt_a01_basic");
        events[0].0 = event_type.to_owned();
        if let Some(at) = discharged {
            events[0].1["encounter"]["discharged_at"] = json!(at);
        }
        events
    };
    w.run_events(
        "a03",
        as_event("PatientDischarged", Some("2026-11-06T10:00:00+01:00")),
    );
    let enc = w.of(ResourceType::Encounter)[0].1.clone();
    assert_eq!(enc["status"], "finished");
    assert_eq!(enc["period"]["end"], "2026-11-06T10:00:00+01:00");
    assert_eq!(enc["location"][0]["status"], "completed");
    w.run_events("a13", as_event("DischargeCancelled", None));
    let enc = w.of(ResourceType::Encounter)[0].1.clone();
    assert_eq!(enc["status"], "in-progress");
    assert!(enc["period"].get("end").is_none(), "{enc}");
    w.run_events("a11", as_event("AdmissionCancelled", None));
    let (row, enc) = w.of(ResourceType::Encounter)[0].clone();
    assert_eq!(enc["status"], "cancelled");
    assert_eq!(row.version, 4);
    // The patient's data did not change through all this: still version 1.
    assert_eq!(w.of(ResourceType::Patient)[0].0.version, 1);
}

#[test]
fn a_merge_retires_the_old_patient_links_both_and_moves_its_encounters() {
    let mut w = World::new();
    let events = example("adt_a40_basic");
    let merged_id = events[0].1["merged"]["identifiers"][0]["value"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Make the retired record known first, with a visit, as an A01 would.
    let old_stream = stream_id(
        StreamKind::Patient,
        TENANT,
        events[0].1["merged"]["identifiers"][0]["authority"].as_str(),
        &merged_id,
    );
    let old_id = apply::resource_id(&old_stream).to_owned();
    let mut admission = example("adt_a01_basic");
    admission[0].1["patient"]["identifiers"] = events[0].1["merged"]["identifiers"].clone();
    let views: Vec<(String, Value, Value)> = admission
        .into_iter()
        .map(|(t, p, _)| {
            let mut streams = serde_json::Map::new();
            for kind in [StreamKind::Patient, StreamKind::Encounter] {
                if let Some((a, v)) = stream_key(kind, &p) {
                    streams.insert(
                        kind.as_str().into(),
                        stream_id(kind, TENANT, a.as_deref(), &v).into(),
                    );
                }
            }
            (t, p, json!({ "streams": streams }))
        })
        .collect();
    let mut projector = Projector::new(w.now, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    for (t, p, m) in &views {
        projector
            .apply(&EventView {
                tenant: TENANT,
                event_type: t,
                // As a stored event is read back (a projection rebuild).
                payload: PayloadRef::Value(p),
                metadata: m,
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
    for row in projector.finish().unwrap_or_else(|e| panic!("{e}")).current {
        w.rows.insert(row.key.clone(), row);
    }
    let encounter_before = w.of(ResourceType::Encounter)[0].1.clone();
    assert_eq!(
        encounter_before["subject"]["reference"],
        format!("Patient/{old_id}")
    );

    w.run(&["adt_a40_basic"]);
    let patients = w.of(ResourceType::Patient);
    let old = patients
        .iter()
        .find(|(r, _)| r.key.id == old_id)
        .map(|p| p.1.clone())
        .unwrap_or_default();
    let survivor = patients
        .iter()
        .find(|(r, _)| r.key.id != old_id)
        .cloned()
        .unwrap_or_else(|| panic!("no survivor"));
    assert_eq!(old["active"], false);
    assert_eq!(old["link"][0]["type"], "replaced-by");
    assert_eq!(
        old["link"][0]["other"]["reference"],
        format!("Patient/{}", survivor.0.key.id)
    );
    assert_eq!(survivor.1["link"][0]["type"], "replaces");
    assert_eq!(
        survivor.1["link"][0]["other"]["reference"],
        format!("Patient/{old_id}")
    );
    let (enc_row, enc) = &w.of(ResourceType::Encounter)[0];
    assert_eq!(
        enc["subject"]["reference"],
        format!("Patient/{}", survivor.0.key.id)
    );
    assert_eq!(enc_row.version, 2);
    assert_eq!(enc_row.patient.as_deref(), Some(survivor.0.key.id.as_str()));
}

#[test]
fn orders_and_results_become_service_requests_reports_and_observations() {
    let mut w = World::new();
    w.run(&["orm_o01_nw"]);
    let (_, sr) = &w.of(ResourceType::ServiceRequest)[0];
    assert_eq!(sr["status"], "active");
    assert_eq!(sr["intent"], "order");
    assert!(sr["identifier"].as_array().is_some_and(|a| !a.is_empty()));
    w.run(&["orm_o01_ca"]);
    let srs = w.of(ResourceType::ServiceRequest);
    assert!(
        srs.iter().any(|(_, s)| s["status"] == "revoked"),
        "{:?}",
        srs.iter().map(|s| &s.1["status"]).collect::<Vec<_>>()
    );

    w.run(&["oru_r01_lab"]);
    let reports = w.of(ResourceType::DiagnosticReport);
    assert_eq!(reports.len(), 1);
    let (_, dr) = &reports[0];
    let observations = w.of(ResourceType::Observation);
    assert!(!observations.is_empty());
    assert_eq!(
        dr["result"].as_array().map(Vec::len),
        Some(observations.len())
    );
    assert!(
        dr["basedOn"][0]["reference"]
            .as_str()
            .is_some_and(|r| r.starts_with("ServiceRequest/"))
    );
    let (_, obs) = &observations[0];
    assert_eq!(obs["subject"], dr["subject"]);
    assert!(obs["code"]["coding"][0]["code"].is_string());
}

#[test]
fn search_entries_cover_the_parameters_and_dates_become_ranges() {
    assert_eq!(
        search::range("1980-02-29"),
        Some((
            "1980-02-29T00:00:00.000000Z".into(),
            "1980-02-29T23:59:59.999999Z".into()
        ))
    );
    assert_eq!(
        search::range("2026-11-05T14:00:00+01:00"),
        Some((
            "2026-11-05T13:00:00.000000Z".into(),
            "2026-11-05T13:00:00.999999Z".into()
        ))
    );
    assert_eq!(
        search::range("2024"),
        Some((
            "2024-01-01T00:00:00.000000Z".into(),
            "2024-12-31T23:59:59.999999Z".into()
        ))
    );
    assert_eq!(search::range("2024-13"), None);
    assert_eq!(
        search::normalize(" Müller-Lüdenscheidt "),
        "muller-ludenscheidt"
    );

    let mut w = World::new();
    w.run(&["adt_a01_basic"]);
    let (row, _) = &w.of(ResourceType::Patient)[0];
    let params: Vec<&str> = row.search.iter().map(|e| e.param).collect();
    for p in [
        "identifier",
        "family",
        "given",
        "name",
        "birthdate",
        "gender",
    ] {
        assert!(params.contains(&p), "{p} missing from {params:?}");
    }
    let family = row
        .search
        .iter()
        .find(|e| e.param == "family")
        .map(|e| e.value.clone());
    assert_eq!(family.as_deref(), Some("brandt"));
}
