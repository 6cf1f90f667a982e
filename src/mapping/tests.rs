//! Tests of the mapping engine: every rule kind, every error with its HL7 location, explain, `for_each`
//! groups, `when` conditions, load problems with line and column, and the shipped `mappings/` with their
//! examples.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on bad fixtures

use std::path::Path;

use serde_json::{Value as J, json};

use super::*;
use crate::hl7::Message;

const DATATYPES: &str = r#"
datatypes:
  CX: { fields: { value: { path: .1, required: true }, authority: .4.1, type: .5 } }
  EI: { fields: { value: { path: .1, required: true }, authority: .2 } }
  XCN: { fields: { id: .1, family: .2.1, given: { each: [.3, .4] } } }
  DTM: { path: ., transform: datetime }
rules:
  svc: { path: PV1.10, transform: lower }
  enc: { when: { path: PV1, present: true }, fields: { hospital_service: PV1.10 } }
"#;

const TABLES: &[(&str, &str)] = &[
    (
        "tables/patient_class.yaml",
        "description: test\nmap: { I: inpatient, O: outpatient }\n",
    ),
    (
        "tables/sex.yaml",
        "map: { F: female, M: male }\ndefault: unknown\n",
    ),
];

/// A message with the awkward bits the rules must handle: escapes, repetitions, subcomponents, null.
const ADT: &str = "MSH|^~\\&|S|F|R|F|20261103143512||ADT^A04^ADT_A01|C1|P|2.5.1\r\
EVN|A04|20261103143512\r\
PID|1||X1^^^OTHER^PI~100010^^^TEST-HOSP^MR||M\\S\\ller&vd^Hans^Peter^^Dr^^L~Alias^Al^^^^^A||19840312|F|||\"\"|||||||||||||||||||Y\r\
PV1|1|I|W3^312^A^HOSP||||D1^Doc^Ann^B~D2^Two^Bob|||MED|||||||||V1^^^HOSP^VN|||||||||||||||||01||||||||20261103143000\r";

/// Writes a mapping directory: settings, datatypes and tables unless overridden, plus `files`.
fn write_set(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut all: Vec<(&str, &str)> = vec![
        ("settings.yaml", "default_timezone: Europe/Berlin\n"),
        ("datatypes.yaml", DATATYPES),
    ];
    all.extend_from_slice(TABLES);
    for f in files {
        all.retain(|(name, _)| *name != f.0);
        all.push(*f);
    }
    for (name, text) in all {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// An inbound file for ADT^A04 → PatientRegistered with the given `fields:` body (indented by the caller).
fn registered(fields: &str, stream: &str) -> String {
    format!("messages: [ADT^A04]\nevent: PatientRegistered\nstream: [{stream}]\nfields:\n{fields}")
}

fn load(files: &[(&str, &str)]) -> MappingSet {
    load_in(files).0
}

/// Loads a set and keeps its directory, for tests that read example files after loading.
fn load_in(files: &[(&str, &str)]) -> (MappingSet, tempfile::TempDir) {
    let dir = write_set(files);
    match MappingSet::load(dir.path()) {
        Ok(s) => (s, dir),
        Err(p) => panic!(
            "problems: {:#?}",
            p.iter().map(|p| p.to_string()).collect::<Vec<_>>()
        ),
    }
}

fn payload(set: &MappingSet, text: &str) -> J {
    let msg = Message::parse(text).unwrap();
    match set.map(&msg).unwrap() {
        Mapped::Events(e) => e[0].payload.to_value().unwrap(),
        Mapped::Unmapped => panic!("unmapped"),
    }
}

const IDS: &str = "    identifiers: { each: \"PID.3[*]\", as: CX }\n";

#[test]
fn every_rule_kind() {
    // (extra `patient:` fields, `encounter:` fields, JSON pointer, expected value; null = absent)
    let cases: &[(&str, &str, &str, J)] = &[
        // path, with escapes decoded and the first subcomponent of a composite used as text
        (
            "    names: { each: \"PID.5[*]\", fields: { family: .1 } }\n",
            "",
            "/patient/names/0/family",
            json!("M^ller"),
        ),
        // each over repetitions
        (
            "    names: { each: \"PID.5[*]\", fields: { family: .1.1 } }\n",
            "",
            "/patient/names/1/family",
            json!("Alias"),
        ),
        // each over a list of paths, absent ones dropped
        (
            "    names: { each: \"PID.5[*]\", fields: { given: { each: [.2, .3, .4] } } }\n",
            "",
            "/patient/names/0/given",
            json!(["Hans", "Peter"]),
        ),
        // each with where (filter) and prefer (order)
        (
            "",
            "",
            "/patient/identifiers",
            json!([{"value": "X1", "authority": "OTHER", "type": "PI"}, {"value": "100010", "authority": "TEST-HOSP", "type": "MR"}]),
        ),
        ("", "", "/patient/identifiers/0/value", json!("X1")),
        // first
        (
            "",
            "    hospital_service: { first: [PV1.99, PV1.98.1, PV1.10] }\n",
            "/encounter/hospital_service",
            json!("MED"),
        ),
        // pick + where
        (
            "",
            "    visit_number: { pick: \"PID.3[*]\", where: { .4.1: TEST-HOSP, .5: [MR, PI] }, as: CX }\n",
            "/encounter/visit_number/value",
            json!("100010"),
        ),
        // const
        (
            "",
            "    hospital_service: { const: CARD }\n",
            "/encounter/hospital_service",
            json!("CARD"),
        ),
        // use (a named rule, with its transform)
        (
            "",
            "    hospital_service: { use: svc }\n",
            "/encounter/hospital_service",
            json!("med"),
        ),
        // as: a datatype on a field
        (
            "",
            "    visit_number: { path: PV1.19, as: CX }\n",
            "/encounter/visit_number",
            json!({"value": "V1", "authority": "HOSP", "type": "VN"}),
        ),
        // as on each
        (
            "",
            "    attending: { each: \"PV1.7[*]\", as: XCN }\n",
            "/encounter/attending/1",
            json!({"id": "D2", "family": "Two", "given": ["Bob"]}),
        ),
        // table
        (
            "",
            "    class: { path: PV1.2, table: patient_class }\n",
            "/encounter/class",
            json!("inpatient"),
        ),
        // default when absent
        (
            "",
            "    class: { path: PV1.99, table: patient_class, default: unknown }\n",
            "/encounter/class",
            json!("unknown"),
        ),
        // table miss with the table's own default
        (
            "    sex: { path: PV1.2, table: sex }\n",
            "",
            "/patient/sex",
            json!("unknown"),
        ),
        // transforms
        (
            "    birth_date: { path: PID.7, transform: date }\n",
            "",
            "/patient/birth_date",
            json!("1984-03-12"),
        ),
        (
            "",
            "    admitted_at: { path: PV1.44, as: DTM }\n",
            "/encounter/admitted_at",
            json!("2026-11-03T14:30:00+01:00"),
        ),
        (
            "    deceased: { path: PID.30, transform: boolean }\n",
            "",
            "/patient/deceased",
            json!(true),
        ),
        (
            "",
            "    hospital_service: { path: PV1.10, transform: [lower, upper] }\n",
            "/encounter/hospital_service",
            json!("MED"),
        ),
        // join
        (
            "",
            "    hospital_service: { join: [PV1.10, PV1.99, PV1.2], separator: \"-\" }\n",
            "/encounter/hospital_service",
            json!("MED-I"),
        ),
        // when on a rule: holds / does not hold
        (
            "",
            "    hospital_service: { path: PV1.10, when: { path: PV1.2, in: [I] } }\n",
            "/encounter/hospital_service",
            json!("MED"),
        ),
        (
            "",
            "    hospital_service: { path: PV1.10, when: { path: PV1.2, not_in: [I] } }\n    discharge_disposition: PV1.36\n",
            "/encounter/hospital_service",
            J::Null,
        ),
        (
            "",
            "    hospital_service: { path: PV1.10, when: { path: [PV1.99, PV1.36], present: true } }\n",
            "/encounter/hospital_service",
            json!("MED"),
        ),
        // HL7 null "" is absent, so the default applies
        (
            "    addresses: { each: \"PID.11[*]\", fields: { city: .3 } }\n    sex: { path: PID.11, default: unknown }\n",
            "",
            "/patient/sex",
            json!("unknown"),
        ),
    ];
    for (i, (patient, encounter, pointer, want)) in cases.iter().enumerate() {
        let mut fields = format!("  patient:\n    fields:\n  {IDS}");
        for line in patient.lines() {
            fields.push_str(&format!("  {line}\n"));
        }
        if !encounter.is_empty() {
            fields.push_str("  encounter:\n    fields:\n");
            for line in encounter.lines() {
                fields.push_str(&format!("  {line}\n"));
            }
        }
        let file = registered(&fields, "patient");
        let set = load(&[("inbound/a04.yaml", &file)]);
        let p = payload(&set, ADT);
        let got = p.pointer(pointer).cloned().unwrap_or(J::Null);
        assert_eq!(&got, want, "case {i}: {pointer} in {p:#}\n{file}");
    }
}

#[test]
fn prefer_and_where_on_each() {
    let fields = "  patient:\n    fields:\n      identifiers: { each: \"PID.3[*]\", as: CX, prefer: { .5: MR } }\n      names: { each: \"PID.5[*]\", where: { .7: A }, fields: { family: .1 } }\n";
    let set = load(&[("inbound/a04.yaml", &registered(fields, "patient"))]);
    let p = payload(&set, ADT);
    assert_eq!(
        p.pointer("/patient/identifiers/0/value"),
        Some(&json!("100010"))
    );
    assert_eq!(
        p.pointer("/patient/identifiers/1/value"),
        Some(&json!("X1"))
    );
    assert_eq!(
        p.pointer("/patient/names"),
        Some(&json!([{"family": "Alias"}]))
    );
    let msg = Message::parse(ADT).unwrap();
    let Mapped::Events(e) = set.map(&msg).unwrap() else {
        panic!()
    };
    // The preferred identifier keys the stream.
    assert_eq!(
        e[0].stream_key,
        (Some("TEST-HOSP".to_string()), "100010".to_string())
    );
    assert_eq!(e[0].stream, StreamKind::Patient);
    assert_eq!(e[0].mapping, "a04");
}

/// Every error kind: (mapping fields, stream, message, code, ERR-2, path in the message text).
#[test]
fn errors_point_at_the_field() {
    let ids_required = "  patient:\n    fields:\n      identifiers: { each: \"PID.3[*]\", as: CX, required: true }\n";
    let with = |extra: &str| format!("{ids_required}{extra}");
    let msh = "MSH|^~\\&|S|F|R|F|20261103143512||ADT^A04|C1|P|2.5.1\r";
    let cases: Vec<(String, &str, String, MapErrorCode, &str, &str)> = vec![
        // required PID-3 missing → 101 at PID^1^3
        (
            with(""),
            "patient",
            format!("{msh}PID|1||||Doe^J\r"),
            MapErrorCode::RequiredMissing,
            "PID^1^3",
            "PID.3",
        ),
        // a CX without its ID in repetition 2 → 101 at the component
        (
            with(""),
            "patient",
            format!("{msh}PID|1||1^^^A^MR~^^^B^PI\r"),
            MapErrorCode::RequiredMissing,
            "PID^1^3^2^1",
            "PID.3[2].1",
        ),
        // no PID segment at all → still PID^1^3
        (
            with(""),
            "patient",
            format!("{msh}PV1|1|I\r"),
            MapErrorCode::RequiredMissing,
            "PID^1^3",
            "PID.3",
        ),
        // unparseable date → 102 at the field
        (
            with("      birth_date: { path: PID.7, transform: date }\n"),
            "patient",
            format!("{msh}PID|1||1^^^A^MR||Doe||19801345\r"),
            MapErrorCode::DataType,
            "PID^1^7",
            "PID.7",
        ),
        // unparseable time in a component → 102 at the component
        (
            format!(
                "{ids_required}  encounter:\n    fields:\n      admitted_at: {{ path: PV1.44.1, transform: datetime }}\n"
            ),
            "patient",
            format!(
                "{msh}PID|1||1^^^A^MR\rPV1|1|I||||||||||||||||||||||||||||||||||||||||||2026-11-03^S\r"
            ),
            MapErrorCode::DataType,
            "PV1^1^44^1^1",
            "PV1.44.1",
        ),
        // table miss without default → 103
        (
            format!(
                "{ids_required}  encounter:\n    fields:\n      class: {{ path: PV1.2, table: patient_class }}\n"
            ),
            "patient",
            format!("{msh}PID|1||1^^^A^MR\rPV1|1|Z\r"),
            MapErrorCode::TableValue,
            "PV1^1^2",
            "PV1.2",
        ),
        // no stream key → 101 at the key's source
        (
            format!(
                "{ids_required}  encounter:\n    fields:\n      visit_number: {{ path: PV1.19, as: CX }}\n"
            ),
            "encounter",
            format!("{msh}PID|1||1^^^A^MR\rPV1|1|I\r"),
            MapErrorCode::RequiredMissing,
            "PV1^1^19",
            "PV1.19",
        ),
        // a required object whose segment is missing → 101 at the segment
        (
            format!("{ids_required}  encounter: {{ use: enc, required: true }}\n"),
            "patient",
            format!("{msh}PID|1||1^^^A^MR\r"),
            MapErrorCode::RequiredMissing,
            "PV1^1",
            "PV1",
        ),
        // Y/N that is neither → 102
        (
            with("      deceased: { path: PID.30, transform: boolean }\n"),
            "patient",
            format!("{msh}PID|1||1^^^A^MR|||||||||||||||||||||||||||X\r"),
            MapErrorCode::DataType,
            "PID^1^30",
            "PID.30",
        ),
    ];
    for (fields, stream, text, code, erl, path) in cases {
        let set = load(&[("inbound/a04.yaml", &registered(&fields, stream))]);
        let msg = Message::parse(&text).unwrap();
        let e = set.map(&msg).unwrap_err();
        assert_eq!(e.code, code, "{fields}: {e:?}");
        assert_eq!(
            e.location.as_ref().map(|l| l.to_erl('^')).as_deref(),
            Some(erl),
            "{fields}: {e:?}"
        );
        // The ACK module writes the same ERL.
        let ack_loc: crate::hl7::ack::ErrorLocation = e.location.clone().unwrap().into();
        assert_eq!(ack_loc.segment, erl[..3]);
        assert_eq!(e.path, path, "{fields}");
        assert_eq!(e.mapping, "a04");
        // The sentence names the output field being built.
        assert!(e.message.contains(" for "), "{}", e.message);
        assert_eq!(e.code.error_code().code(), code.code());
    }
}

/// Outside explain an object's fields are evaluated in name order (its members come out sorted), but
/// when two fields fail, the error reported is that of the first in the file, whichever order the names
/// sort in, as it is at every level of nesting.
#[test]
fn the_first_failing_field_in_the_file_is_reported() {
    let msh = "MSH|^~\\&|S|F|R|F|20261103143512||ADT^A04|C1|P|2.5.1\r";
    // PID-7 is no date (102) and PID-8 is not in the table (103).
    let text = format!("{msh}PID|1||1^^^A^MR||Doe||19801345|F\r");
    let birth = "      birth_date: { path: PID.7, transform: date }\n";
    let sex = "      sex: { path: PID.8, table: patient_class }\n";
    for (first, second, code, erl) in [
        (sex, birth, MapErrorCode::TableValue, "PID^1^8"),
        (birth, sex, MapErrorCode::DataType, "PID^1^7"),
    ] {
        let fields = format!("  patient:\n    fields:\n{IDS_NESTED}{first}{second}");
        let set = load(&[("inbound/a04.yaml", &registered(&fields, "patient"))]);
        let e = set.map(&Message::parse(&text).unwrap()).unwrap_err();
        assert_eq!(e.code, code, "{fields}: {e:?}");
        assert_eq!(
            e.location.as_ref().map(|l| l.to_erl('^')).as_deref(),
            Some(erl),
            "{fields}: {e:?}"
        );
        // The sentence still names the output field, as the file's order finds it.
        assert!(e.message.contains(" for patient."), "{}", e.message);
    }
}

const IDS_NESTED: &str = "      identifiers: { each: \"PID.3[*]\", as: CX }\n";

/// Every message of `fixtures/hl7v2/` that decodes, with its file, in file name order.
pub(super) fn fixture_texts() -> Vec<(std::path::PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hl7v2");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .collect();
    files.sort();
    assert!(files.len() > 20, "{files:?}");
    files
        .into_iter()
        .filter_map(|file| {
            let bytes = std::fs::read(&file).unwrap();
            let text = crate::hl7::decode(&bytes, &Default::default())
                .ok()?
                .text
                .into_owned();
            Some((file, text))
        })
        .collect()
}

/// `map` reads the message without locations and `explain` with them: on every fixture message both
/// give the same events, or the same error (which `map` words from a second, located pass).
#[test]
fn mapping_without_locations_agrees_with_explain() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let set = MappingSet::load(&root.join("mappings")).unwrap();
    let (mut mapped, mut failed) = (0, 0);
    for (file, text) in fixture_texts() {
        let Ok(msg) = Message::parse(&text) else {
            continue;
        };
        let name = file.display();
        match (set.map(&msg), set.explain(&msg)) {
            (Ok(Mapped::Events(a)), Ok((Mapped::Events(b), _))) => {
                assert_eq!(a.len(), b.len(), "{name}");
                for (a, b) in a.iter().zip(&b) {
                    assert_eq!(a.payload, b.payload, "{name}");
                    assert_eq!(a.event_type, b.event_type, "{name}");
                    assert_eq!(a.stream_key, b.stream_key, "{name}");
                    assert_eq!(a.keys, b.keys, "{name}");
                }
                mapped += 1;
            }
            (Ok(Mapped::Unmapped), Ok((Mapped::Unmapped, _))) => {}
            (Err(a), Err(b)) => {
                assert_eq!(
                    (a.code, &a.location, &a.path, &a.message),
                    (b.code, &b.location, &b.path, &b.message),
                    "{name}"
                );
                assert!(a.location.is_some(), "{name}: {a:?}");
                failed += 1;
            }
            (a, b) => panic!("{name}: map gave {a:?}, explain {b:?}"),
        }
    }
    assert!(
        mapped > 20 && failed > 0,
        "{mapped} mapped, {failed} failed"
    );
}

#[test]
fn explain_names_rule_source_raw_and_value() {
    let fields = format!(
        "  patient:\n    fields:\n  {IDS}      names: {{ each: \"PID.5[*]\", fields: {{ family: .1 }} }}\n  encounter:\n    fields:\n      hospital_service: {{ const: X }}\n      class: {{ path: PV1.2, table: patient_class }}\n"
    );
    let set = load(&[("inbound/a04.yaml", &registered(&fields, "patient"))]);
    let msg = Message::parse(ADT).unwrap();
    let (mapped, ex) = set.explain(&msg).unwrap();
    assert_eq!(mapped, set.map(&msg).unwrap());
    let find = |out: &str| {
        ex.iter()
            .find(|e| e.output == out)
            .unwrap_or_else(|| panic!("{out} not in {ex:#?}"))
    };
    let id = find("patient.identifiers[1].value");
    assert_eq!(id.source.as_deref(), Some("PID.3[2].1"));
    assert_eq!(id.raw.as_deref(), Some("100010"));
    assert_eq!(id.value, json!("100010"));
    assert!(
        id.rule.starts_with("each PID.3[*] as CX → path .1"),
        "{}",
        id.rule
    );
    let name = find("patient.names[0].family");
    assert_eq!(name.raw.as_deref(), Some("M\\S\\ller"));
    assert_eq!(name.value, json!("M^ller"));
    assert_eq!(name.source.as_deref(), Some("PID.5.1.1"));
    let class = find("encounter.class");
    assert_eq!(class.raw.as_deref(), Some("I"));
    assert_eq!(class.value, json!("inpatient"));
    assert!(class.rule.contains("table patient_class"));
    let c = find("encounter.hospital_service");
    assert_eq!((c.source.clone(), c.value.clone()), (None, json!("X")));
    assert!(ex.iter().all(|e| e.event == 0));
}

const ORM: &str = "MSH|^~\\&|S|F|R|F|20261103153200||ORM^O01^ORM_O01|C2|P|2.5.1\r\
PID|1||100010^^^TEST-HOSP^MR\r\
ORC|NW|PL1^P\r\
OBR|1|PL1^P||70450^CT head^C4\r\
ORC|CA|PL2^P\r\
OBR|2|PL2^P||76700^US abdomen^C4\r\
ORC|NW|PL3^P\r\
OBR|3|||71046^XR chest^C4\r";

fn order_file(event: &str, code: &str) -> String {
    format!(
        "messages: [ORM^O01]\nevent: {event}\nstream: [order]\nfor_each: ORC\nwhen:\n  - {{ path: ORC.1, in: [{code}] }}\nfields:\n  patient: {{ fields: {{ identifiers: {{ each: \"PID.3[*]\", as: CX }} }} }}\n  order:\n    fields:\n      control: ORC.1\n      placer_order_number: {{ path: ORC.2, as: EI }}\n      code: {{ fields: {{ code: OBR.4.1 }} }}\n"
    )
}

#[test]
fn for_each_groups_and_when_conditions() {
    let placed = order_file("OrderPlaced", "NW");
    let cancelled = order_file("OrderCancelled", "CA");
    let set = load(&[
        ("inbound/orm.placed.yaml", &placed),
        ("inbound/orm.cancelled.yaml", &cancelled),
    ]);
    let msg = Message::parse(ORM).unwrap();
    let Mapped::Events(events) = set.map(&msg).unwrap() else {
        panic!("unmapped")
    };
    let got: Vec<(&str, &str, J)> = events
        .iter()
        .map(|e| {
            (
                e.event_type.as_str(),
                e.stream_key.1.as_str(),
                e.payload
                    .to_value()
                    .unwrap()
                    .pointer("/order/code/code")
                    .cloned()
                    .unwrap(),
            )
        })
        .collect();
    // Message order of groups across both files; OBR paths resolve inside each group; the patient
    // (before the first group) resolves in the whole message.
    assert_eq!(
        got,
        [
            ("OrderPlaced", "PL1", json!("70450")),
            ("OrderCancelled", "PL2", json!("76700")),
            ("OrderPlaced", "PL3", json!("71046")),
        ]
    );
    assert!(events.iter().all(|e| {
        e.payload
            .to_value()
            .unwrap()
            .pointer("/patient/identifiers/0/value")
            == Some(&json!("100010"))
    }));
    let (_, ex) = set.explain(&msg).unwrap();
    let src = ex
        .iter()
        .find(|e| e.event == 2 && e.output == "order.code.code")
        .unwrap();
    assert_eq!(src.source.as_deref(), Some("OBR[3].4.1"));

    // `[ORC, OBR]`: an OBR without an ORC before it starts its own group.
    let groups = placed.replace("for_each: ORC", "for_each: [ORC, OBR]");
    let set = load(&[("inbound/orm.placed.yaml", &groups)]);
    let text = "MSH|^~\\&|S|F|R|F|1||ORM^O01|C|P|2.5\rPID|1||1^^^A^MR\rORC|NW|PL1\rOBR|1|PL1||A\rOBR|2|PL2||B\rORC|NW|PL3\rOBR|3|PL3||C\r";
    let msg = Message::parse(text).unwrap();
    let Mapped::Events(events) = set.map(&msg).unwrap() else {
        panic!()
    };
    // The lone OBR group has no ORC-1 NW, so its `when` fails: two events.
    let codes: Vec<J> = events
        .iter()
        .map(|e| {
            e.payload
                .to_value()
                .unwrap()
                .pointer("/order/code/code")
                .cloned()
                .unwrap()
        })
        .collect();
    assert_eq!(codes, [json!("A"), json!("C")]);

    // No file for the message type, or no `when` holds: unmapped.
    let adt = Message::parse(ADT).unwrap();
    assert_eq!(set.map(&adt).unwrap(), Mapped::Unmapped);
    let none =
        Message::parse("MSH|^~\\&|S|F|R|F|1||ORM^O01|C|P|2.5\rPID|1||1^^^A^MR\rORC|XX|PL1\r")
            .unwrap();
    assert_eq!(set.map(&none).unwrap(), Mapped::Unmapped);
}

#[test]
fn message_type_matches_with_or_without_structure() {
    let fields = format!("  patient:\n    fields:\n  {IDS}");
    let set = load(&[("inbound/a04.yaml", &registered(&fields, "patient"))]);
    for msh9 in ["ADT^A04", "ADT^A04^ADT_A01"] {
        let text = format!("MSH|^~\\&|S|F|R|F|1||{msh9}|C|P|2.5\rPID|1||1^^^A^MR\r");
        let msg = Message::parse(&text).unwrap();
        assert!(
            matches!(set.map(&msg).unwrap(), Mapped::Events(_)),
            "{msh9}"
        );
    }
}

/// Load problems: (file, line, column, words the message must contain).
#[test]
fn problems_come_all_at_once_with_line_and_column() {
    let inbound = "\
messages: [ADT^A04, ADTA04]
event: PatientRegistered
stream: [patient, room]
colour: blue
fields:
  patient:
    fields:
      identifiers: { each: \"PID.3[x]\", as: CX }
      names: { each: \"PID.5[*]\", as: XPQ }
      sex: { path: PID.8, table: gender }
      birth_date: { path: PID.7, transform: dates }
      addresses: { use: address }
      telecoms: { path: PID.13, const: x }
      hair: PID.99
      deceased: .30
  encounter:
    fields:
      class: { path: PV1.2, tabel: patient_class }
examples:
  - input: missing.hl7
    expect: missing.json
";
    let datatypes =
        format!("{DATATYPES}  loop_a: {{ use: loop_b }}\n  loop_b: {{ use: loop_a }}\n");
    let dir = write_set(&[
        ("settings.yaml", "default_timezone: Mars/Olympus\n"),
        ("datatypes.yaml", &datatypes),
        ("inbound/bad.yaml", inbound),
        (
            "inbound/other.yaml",
            "event: PatientMoved\nmessages: ADT^A02\nstream: patient\nfields: {}\n",
        ),
        (
            "inbound/third.yaml",
            "messages: [ADT^A04]\nevent: PatientRegistered\nstream: [order]\nfields: {}\n",
        ),
        ("tables/broken.yaml", "map: [a, b\n"),
        ("examples/ignored.yaml", "not: [checked\n"),
        ("README.md", "not yaml: ["),
    ]);
    let problems = MappingSet::load(dir.path()).unwrap_err();
    let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let want: &[(&str, usize, usize, &str)] = &[
        ("settings.yaml", 1, 19, "unknown time zone \"Mars/Olympus\""),
        ("inbound/bad.yaml", 1, 21, "ADTA04"),
        ("inbound/bad.yaml", 3, 9, "unknown stream \"room\""),
        ("inbound/bad.yaml", 4, 1, "unknown key `colour`"),
        (
            "inbound/bad.yaml",
            8,
            35,
            "bad path \"PID.3[x]\": expected a number or '*' after '['",
        ),
        ("inbound/bad.yaml", 9, 38, "unknown datatype \"XPQ\""),
        ("inbound/bad.yaml", 10, 34, "unknown table \"gender\""),
        ("inbound/bad.yaml", 11, 45, "unknown transform \"dates\""),
        ("inbound/bad.yaml", 12, 25, "unknown rule \"address\""),
        (
            "inbound/bad.yaml",
            13,
            17,
            "exactly one source, this one has path and const",
        ),
        (
            "inbound/bad.yaml",
            14,
            7,
            "`hair` is not a field of the PatientRegistered payload at patient",
        ),
        (
            "inbound/bad.yaml",
            15,
            17,
            "relative path \".30\" outside a value",
        ),
        ("inbound/bad.yaml", 18, 29, "unknown key `tabel`"),
        (
            "inbound/bad.yaml",
            20,
            12,
            "example input \"missing.hl7\" not found",
        ),
        (
            "inbound/bad.yaml",
            21,
            13,
            "expected events file \"missing.json\" not found",
        ),
        ("inbound/other.yaml", 1, 8, "unknown event \"PatientMoved\""),
        (
            "inbound/third.yaml",
            3,
            9,
            "stream `order` needs order.placer_order_number in the payload, which PatientRegistered does not have",
        ),
        (
            "inbound/third.yaml",
            4,
            9,
            "PatientRegistered needs `patient` in `fields:`",
        ),
        ("tables/broken.yaml", 2, 1, "YAML syntax error"),
        (
            "datatypes.yaml",
            10,
            11,
            "refers to itself: loop_a → loop_b → loop_a",
        ),
    ];
    for (file, line, column, words) in want {
        let found = problems.iter().any(|p| {
            p.file.ends_with(file)
                && p.line == *line
                && p.column == *column
                && p.message.contains(words)
        });
        assert!(
            found,
            "missing {file}:{line}:{column}: {words}\nin {shown:#?}"
        );
    }
    // An unknown datatype is one problem, not also a shape mismatch.
    assert!(
        !shown
            .iter()
            .any(|s| s.contains("patient.names is an object")),
        "{shown:#?}"
    );
    // A YAML error only hints at quoting when a bracketed path is involved.
    assert!(
        !shown
            .iter()
            .any(|s| s.contains("broken") && s.contains("quotes"))
    );
    // Serving does not need example files: the same set without them has no example problems.
    let fixed = write_set(&[(
        "inbound/bad.yaml",
        &registered(&format!("  patient:\n    fields:\n  {IDS}"), "patient").replace(
            "fields:\n  patient",
            "examples:\n  - input: missing.hl7\n    expect: missing.json\nfields:\n  patient",
        ),
    )]);
    assert!(MappingSet::load(fixed.path()).is_err());
    let served = MappingSet::load_with(
        fixed.path(),
        LoadOptions {
            example_files: false,
        },
    )
    .unwrap();
    assert_eq!(served.examples().len(), 1);
    assert!(!served.run_examples()[0].passed);
    // Unknown keys say which are allowed.
    assert!(
        shown
            .iter()
            .any(|s| s.contains("allowed keys: path, first, each"))
    );
    // Files outside settings/datatypes/tables/inbound/fhir/outbound are not read.
    assert!(
        !problems
            .iter()
            .any(|p| p.file.ends_with("examples/ignored.yaml") || p.file.ends_with("README.md"))
    );
}

#[test]
fn target_shapes_are_checked() {
    let fields = "  patient:\n    fields:\n      identifiers: PID.3\n      deceased: PID.30\n      names: { each: \"PID.5[*]\", fields: { family: .1, nick: .2 } }\n      sex: { each: \"PID.8[*]\" }\n";
    let dir = write_set(&[("inbound/a.yaml", &registered(fields, "patient"))]);
    let problems = MappingSet::load(dir.path()).unwrap_err();
    let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    for words in [
        "patient.identifiers is a list in PatientRegistered, but this rule makes text (use `each:` for a list)",
        "patient.deceased is a boolean in PatientRegistered, but this rule makes text (add `transform: boolean` for Y/N)",
        "`nick` is not a field of the PatientRegistered payload at patient.names",
        "patient.sex is text in PatientRegistered, but this rule makes a list",
    ] {
        assert!(
            shown.iter().any(|s| s.contains(words)),
            "{words}\nin {shown:#?}"
        );
    }
}

#[test]
fn version_hashes_the_loaded_files_only() {
    let fields = format!("  patient:\n    fields:\n  {IDS}");
    let file = registered(&fields, "patient");
    let a = load(&[("inbound/a04.yaml", &file)]);
    let b = load(&[("inbound/a04.yaml", &file), ("README.md", "notes")]);
    let c = load(&[("inbound/a04.yaml", &format!("# changed\n{file}"))]);
    assert_eq!(a.version().len(), 16);
    assert!(a.version().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(a.version(), b.version());
    assert_ne!(a.version(), c.version());
}

#[test]
fn examples_pass_and_fail_with_a_diff() {
    let fields = format!("  patient:\n    fields:\n  {IDS}");
    let mut file = registered(&fields, "patient");
    file.push_str("examples:\n  - input: ../msg.hl7\n    expect: ../good.json\n  - input: ../msg.hl7\n    expect: ../bad.json\n  - input: ../bad.hl7\n    expect_ack: { code: AE, error: 101, location: PID^1^3 }\n  - input: ../bad.hl7\n    expect_ack: { code: AE, error: 101, location: PID^1^4 }\n");
    let good = json!([{"event": "PatientRegistered", "stream": "patient", "payload": {"patient": {"identifiers": [
        {"value": "X1", "authority": "OTHER", "type": "PI"}, {"value": "100010", "authority": "TEST-HOSP", "type": "MR"}]}}}]);
    let bad = json!([{"event": "PatientRegistered", "stream": "patient", "payload": {"patient": {"identifiers": [
        {"value": "X2", "authority": "OTHER", "type": "PI"}]}}}]);
    let file = file.replace("as: CX }", "as: CX, required: true }");
    let (set, _dir) = load_in(&[
        ("inbound/a04.yaml", &file),
        ("msg.hl7", ADT),
        ("bad.hl7", "MSH|^~\\&|S|F|R|F|1||ADT^A04|C|P|2.5\rPID|1||\r"),
        ("good.json", &good.to_string()),
        ("bad.json", &bad.to_string()),
    ]);
    let outcomes = set.run_examples();
    let passed: Vec<bool> = outcomes.iter().map(|o| o.passed).collect();
    assert_eq!(passed, [true, false, true, false], "{outcomes:#?}");
    let lines: Vec<&str> = outcomes[1].message.lines().map(str::trim).collect();
    assert!(
        lines.contains(&"-            \"value\": \"X2\"")
            || lines
                .iter()
                .any(|l| l.starts_with('-') && l.ends_with("\"value\": \"X2\"")),
        "{}",
        outcomes[1].message
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('+') && l.ends_with("\"value\": \"X1\"")),
        "{}",
        outcomes[1].message
    );
    assert!(
        outcomes[3]
            .message
            .contains("expected AE 101 at PID^1^4, got AE 101 at PID^1^3"),
        "{}",
        outcomes[3].message
    );
    assert_eq!(outcomes[0].example.line, 9);
}

#[test]
fn schema_knows_every_rule_key() {
    let schema = json_schema();
    let props = &schema["$defs"]["rule"]["anyOf"][1]["properties"];
    for key in super::load::RULE_KEYS {
        assert!(props.get(*key).is_some(), "{key} missing from the schema");
    }
    let events = schema["$defs"]["inbound"]["properties"]["event"]["enum"]
        .as_array()
        .unwrap();
    assert!(events.contains(&json!("PatientAdmitted")));
}

/// The shipped `mappings/` load, and every example passes (what `ferry mappings test` runs).
/// `FERRY_BLESS_EXAMPLES=1` rewrites expected event files from the actual output, for review with git diff.
#[test]
fn shipped_mappings_load_and_their_examples_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let set = match MappingSet::load(&dir) {
        Ok(s) => s,
        Err(p) => panic!(
            "{}",
            p.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    };
    let bless = std::env::var_os("FERRY_BLESS_EXAMPLES").is_some();
    let mut failures = Vec::new();
    for outcome in set.run_examples() {
        if outcome.passed {
            continue;
        }
        if bless && let Expectation::Rendered(path) = &outcome.example.expectation {
            let rendered = set.render_example_input(&outcome.example).unwrap().unwrap();
            std::fs::write(path, rendered_text(&rendered)).unwrap();
            continue;
        }
        if bless && let Expectation::Events(path) = &outcome.example.expectation {
            let mapped = set.map_example_input(&outcome.example).unwrap().unwrap();
            let text = serde_json::to_string_pretty(&events_json(&mapped)).unwrap();
            std::fs::write(path, text + "\n").unwrap();
            continue;
        }
        failures.push(format!(
            "{}:{} ({}): {}",
            outcome.example.file.display(),
            outcome.example.line,
            outcome.example.input.display(),
            outcome.message
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(set.examples().len() >= 10);
}

/// Regression: our MRN is the 4th repetition of PID-3 in adt_a01_multiple_ids; it must come first (it keys
/// the patient stream) and `explain` must name the repetition it came from.
#[test]
fn shipped_mappings_explain_where_the_mrn_came_from() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let set = MappingSet::load(&root.join("mappings")).unwrap();
    let text =
        std::fs::read_to_string(root.join("fixtures/hl7v2/adt_a01_multiple_ids.hl7")).unwrap();
    let msg = Message::parse(&text).unwrap();
    let (mapped, ex) = set.explain(&msg).unwrap();
    let Mapped::Events(events) = mapped else {
        panic!("unmapped")
    };
    assert_eq!(events[0].stream, StreamKind::Encounter);
    assert_eq!(events[0].mapping, "adt_a01.patient_admitted");
    let mrn = ex
        .iter()
        .find(|e| e.output == "patient.identifiers[0].value")
        .unwrap();
    assert_eq!(mrn.source.as_deref(), Some("PID.3[4].1"));
    assert_eq!(mrn.value, json!("100024"));
    assert!(
        mrn.rule
            .starts_with("use patient → first of required → each PID.3[*] prefer"),
        "{}",
        mrn.rule
    );
    // Every output leaf is explained.
    let admitted = ex
        .iter()
        .find(|e| e.output == "encounter.admitted_at")
        .unwrap();
    assert_eq!(admitted.raw.as_deref(), Some("20261104180000"));
    assert_eq!(admitted.value, json!("2026-11-04T18:00:00+01:00"));
}

/// Regression: a syntax error in datatypes.yaml or a table was repeated as "unknown datatype/rule/table"
/// at every use, burying the one real problem.
#[test]
fn a_broken_shared_file_is_one_problem() {
    let fields = "  patient:\n    fields:\n      identifiers: { each: \"PID.3[*]\", as: CX }\n      sex: { path: PID.8, table: sex }\n      names: { use: svc }\n";
    let dir = write_set(&[
        ("datatypes.yaml", "datatypes:\n  CX: { path: PID.3[*] }\n"),
        ("tables/sex.yaml", "map: [\n"),
        ("inbound/a.yaml", &registered(fields, "patient")),
    ]);
    let problems = MappingSet::load(dir.path()).unwrap_err();
    let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 2, "{shown:#?}");
    assert!(problems[0].file.ends_with("datatypes.yaml"), "{shown:#?}");
    assert!(
        shown[0].contains("put paths with brackets in quotes"),
        "{shown:#?}"
    );
    assert!(problems[1].file.ends_with("tables/sex.yaml"), "{shown:#?}");
}

/// FHIR mapping files: their problems are found like the HL7 ones (with line and column), and
/// a resource maps with element paths, `when`, `pick` and tables.
#[test]
fn fhir_files_are_checked_and_map_resources() {
    let fhir_datatypes = "\
datatypes:
  Identifier: { when: { path: .value, present: true }, fields: { value: { path: .value, required: true }, authority: { path: .system, transform: [authority] } } }
rules:
  person:
    fields:
      identifiers: { each: \"identifier[*]\", as: Identifier }
      sex: { path: gender, table: gender }
";
    let gender = (
        "tables/gender.yaml",
        "map: { female: female, male: male }\n",
    );
    let bad = "\
resource: Encounter
interactions: [create, delete]
messages: [ADT^A01]
event: PatientRegistered
stream: [patient]
fields:
  patient:
    fields:
      identifiers: { each: \"identifier[*]\", as: CX }
      names: { path: \"name[x]\" }
      birth_date: .birthDate
  encounter: { use: enc }
";
    let dir = write_set(&[
        ("fhir/datatypes.yaml", fhir_datatypes),
        ("fhir/bad.yaml", bad),
        gender,
    ]);
    let problems = MappingSet::load(dir.path()).unwrap_err();
    let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    for (line, needle) in [
        (
            1,
            "the FHIR API accepts writes of Patient and ServiceRequest",
        ),
        (2, "unknown interaction \"delete\""),
        (3, "unknown key `messages`"),
        (9, "datatype \"CX\" reads HL7 v2 values"),
        (10, "index \"x\" is neither a number nor *"),
        (11, "relative path \".birthDate\" outside a value"),
        (12, "rule \"enc\" reads HL7 v2 values"),
    ] {
        assert!(
            problems.iter().any(|p| p.file.ends_with("fhir/bad.yaml")
                && p.line == line
                && p.message.contains(needle)),
            "no problem at line {line} with {needle:?} in:\n{}",
            shown.join("\n")
        );
    }

    let good = "\
resource: Patient
interactions: [create]
event: PatientRegistered
stream: [patient]
when:
  - { path: active, not_in: [\"false\"] }
fields:
  patient: { use: person }
";
    let set = load(&[
        ("fhir/datatypes.yaml", fhir_datatypes),
        ("fhir/patient.yaml", good),
        gender,
    ]);
    let resource = json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "urn:oid:1.2.3", "value": "42" }, { "value": " " }],
        "gender": "female"
    });
    let mapped = set.map_fhir(FhirInteraction::Create, &resource);
    let Ok(Mapped::Events(events)) = mapped else {
        panic!("not mapped: {mapped:?}");
    };
    assert_eq!(
        events[0].payload.to_value().unwrap()["patient"],
        json!({ "identifiers": [{ "value": "42", "authority": "1.2.3" }], "sex": "female" })
    );
    assert_eq!(
        events[0].stream_key,
        (Some("1.2.3".to_owned()), "42".to_owned())
    );
    // `when` decides; the other interaction has no file.
    let inactive =
        json!({ "resourceType": "Patient", "active": false, "identifier": [{ "value": "1" }] });
    assert_eq!(
        set.map_fhir(FhirInteraction::Create, &inactive),
        Ok(Mapped::Unmapped)
    );
    assert_eq!(
        set.map_fhir(FhirInteraction::Update, &resource),
        Ok(Mapped::Unmapped)
    );
    // A code outside the table: 103 at the element, no HL7 location.
    let odd = json!({ "resourceType": "Patient", "identifier": [{ "value": "1" }], "gender": "X" });
    let e = set.map_fhir(FhirInteraction::Create, &odd).unwrap_err();
    assert_eq!(
        (e.code.code(), e.path.as_str(), e.location.is_none()),
        (103, "Patient.gender", true)
    );
}

// ---- outbound ------------------------------------------------------------------------------------------

const OUT_DATATYPES: &str = r#"
datatypes:
  CX: { fields: { "1": .value, "4": { fields: { "1": .authority } }, "5": .type } }
rules:
  pid:
    fields:
      "1": { const: "1" }
      "3": { each: "patient.identifiers[*]", as: CX, required: true }
      "8": { path: patient.sex, table: sex, reverse: true }
"#;

const OUT_ADT: &str = r#"events: [PatientRegistered]
format: hl7v2
message: { type: ADT^A04^ADT_A01, version: "2.5.1" }
segments:
  - MSH: { "3": { const: FERRY }, "5": { const: HIS } }
  - EVN: { "1": { const: A04 }, "2": { path: $event.recorded_at, transform: [hl7_datetime] } }
  - PID:
      use: pid
      "5": { each: "patient.names[*]", fields: { "1": .family, "2": ".given[0]" } }
      "7": { path: patient.birth_date, transform: [hl7_date] }
  - NK1: { each: "patient.names[*]", "2": .family }
  - PV1: { when: { path: encounter, present: true }, "2": { const: I } }
"#;

fn out_input<'a>(event: &'a str, payload: &'a J, meta: &'a J) -> OutboundInput<'a> {
    OutboundInput {
        tenant: "t",
        event_type: event,
        payload,
        metadata: meta,
        recorded_at: time::macros::datetime!(2026-11-03 14:30:05 +01:00),
        stream_id: "patient-1",
        stream_version: 3,
        delivery_id: "77",
        destination: "his",
    }
}

#[test]
fn outbound_hl7_renders_segments_fields_and_msh() {
    let set = load(&[
        ("outbound/datatypes.yaml", OUT_DATATYPES),
        ("outbound/his.yaml", OUT_ADT),
    ]);
    assert_eq!(
        set.outbound_events("outbound/his"),
        Some(&["PatientRegistered".to_string()][..])
    );
    assert_eq!(
        set.outbound_format("outbound/his"),
        Some(OutboundFormat::Hl7v2)
    );
    assert_eq!(set.outbound_events("his"), None);
    let payload = json!({"patient": {
        "identifiers": [{"value": "100010", "authority": "HOSP", "type": "MR"}, {"value": "X|1"}],
        "names": [{"family": "Müller^", "given": ["Hans"]}, {"family": "Alias"}],
        "birth_date": "1984-03-12",
        "sex": "female"
    }});
    let meta = json!({});
    let r = set
        .render_outbound(
            "outbound/his",
            &out_input("PatientRegistered", &payload, &meta),
        )
        .unwrap();
    assert_eq!(r.control_id.as_deref(), Some("77"));
    assert_eq!(r.content_type, "x-application/hl7-v2+er7");
    let text = String::from_utf8(r.body).unwrap();
    assert_eq!(
        text,
        "MSH|^~\\&|FERRY||HIS||20261103143005+0100||ADT^A04^ADT_A01|77|P|2.5.1||||||UNICODE UTF-8\r\
EVN|A04|20261103143005+0100\r\
PID|1||100010^^^HOSP^MR~X\\F\\1||M\u{fc}ller\\S\\^Hans~Alias||19840312|F\r\
NK1|1|M\u{fc}ller\\S\\\r\
NK1|2|Alias\r"
    );
    // What we write, our own parser reads back.
    let msg = Message::parse(&text).unwrap();
    assert_eq!(
        msg.query("PID.5[1].1").unwrap().unwrap().decoded(),
        "Müller^"
    );
    assert_eq!(msg.query("PID.3[2].1").unwrap().unwrap().decoded(), "X|1");
}

#[test]
fn outbound_explain_names_hl7_field_and_event_field() {
    let set = load(&[
        ("outbound/datatypes.yaml", OUT_DATATYPES),
        ("outbound/his.yaml", OUT_ADT),
    ]);
    let payload = json!({"patient": {
        "identifiers": [{"value": "100010", "authority": "HOSP"}, {"value": "200"}],
        "sex": "male"
    }});
    let meta = json!({});
    let (_, ex) = set
        .explain_outbound(
            "outbound/his",
            &out_input("PatientRegistered", &payload, &meta),
        )
        .unwrap();
    let find = |out: &str| {
        ex.iter()
            .find(|e| e.output == out)
            .unwrap_or_else(|| panic!("no {out} in {ex:#?}"))
    };
    let id = find("PID.3[2].1");
    assert_eq!(id.source.as_deref(), Some("patient.identifiers[1].value"));
    assert_eq!(id.value, json!("200"));
    assert!(
        id.rule.contains("each patient.identifiers[*] as CX"),
        "{}",
        id.rule
    );
    assert_eq!(find("PID.3[1].4.1").value, json!("HOSP"));
    let sex = find("PID.8");
    assert_eq!(sex.source.as_deref(), Some("patient.sex"));
    assert_eq!(sex.value, json!("M"));
    assert!(sex.rule.contains("table sex reverse"), "{}", sex.rule);
    assert_eq!(find("EVN.2").source.as_deref(), Some("$event.recorded_at"));
}

#[test]
fn outbound_render_errors_name_the_event_field() {
    let set = load(&[
        ("outbound/datatypes.yaml", OUT_DATATYPES),
        ("outbound/his.yaml", OUT_ADT),
    ]);
    let meta = json!({});
    let none = json!({"patient": {"sex": "female"}});
    let e = set
        .render_outbound(
            "outbound/his",
            &out_input("PatientRegistered", &none, &meta),
        )
        .unwrap_err();
    assert_eq!(e.path(), Some("patient.identifiers"));
    assert!(e.to_string().contains("required value is missing"), "{e}");
    assert!(e.to_string().contains("PID.3"), "{e}");

    // `other` is a value of no code in the test's sex table: no reverse entry and no default.
    let other = json!({"patient": {"identifiers": [{"value": "1"}], "sex": "other"}});
    let e = set
        .render_outbound(
            "outbound/his",
            &out_input("PatientRegistered", &other, &meta),
        )
        .unwrap_err();
    assert_eq!(e.path(), Some("patient.sex"));
    assert!(e.to_string().contains("has no code in table sex"), "{e}");

    let e = set
        .render_outbound("outbound/his", &out_input("OrderPlaced", &other, &meta))
        .unwrap_err();
    assert!(matches!(*e, OutboundError::EventNotHandled { .. }), "{e}");
    let e = set
        .render_outbound("outbound/nope", &out_input("OrderPlaced", &other, &meta))
        .unwrap_err();
    assert!(matches!(*e, OutboundError::UnknownMapping(_)), "{e}");
}

#[test]
fn outbound_json_builds_a_document_with_lists() {
    let file = r#"events: [PatientUpdated]
format: json
body:
  resourceType: { const: Bundle }
  id: $delivery.id
  timestamp: $event.recorded_at
  entry:
    list:
      - fields:
          fullUrl: { join: [{ const: "urn:x:" }, $event.stream_id], separator: "" }
          resource:
            fields:
              gender: patient.sex
              identifier: { each: "patient.identifiers[*]", fields: { value: .value } }
              active: { const: true }
"#;
    let set = load(&[("outbound/http.yaml", file)]);
    let payload = json!({"patient": {"identifiers": [{"value": "1"}], "sex": "female"}});
    let meta = json!({});
    let r = set
        .render_outbound(
            "outbound/http",
            &out_input("PatientUpdated", &payload, &meta),
        )
        .unwrap();
    assert_eq!(r.content_type, "application/json");
    assert_eq!(r.control_id, None);
    let v: J = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        v,
        json!({"resourceType": "Bundle", "id": "77", "timestamp": "2026-11-03T14:30:05+01:00",
               "entry": [{"fullUrl": "urn:x:patient-1", "resource": {"gender": "female",
               "identifier": [{"value": "1"}], "active": true}}]})
    );
}

#[test]
fn outbound_problems_come_with_line_and_column() {
    let bad = r#"events: [PatientRegistred]
format: hl7v2
message: { type: ADT^A04^ADT_A01, version: "2.5.1" }
segmnets: []
segments:
  - PID: { "3": { path: "patient.identifiers[x]" }, "8": { path: patient.sex, table: nosuch, reverse: true }, colour: red }
  - pid: {}
  - MSH: { "2": { const: x } }
  - PV1: { "2": { path: $nope.x }, "3": { path: encounter.class, reverse: true } }
"#;
    let inbound_reverse = "messages: [ADT^A04]\nevent: PatientRegistered\nstream: [patient]\nfields:\n  patient:\n    fields:\n      identifiers: { each: \"PID.3[*]\", as: CX }\n      sex: { path: PID.8, table: sex, reverse: true }\n";
    let dir = write_set(&[
        ("outbound/bad.yaml", bad),
        ("inbound/a04.yaml", inbound_reverse),
        (
            "tables/sex.yaml",
            "map: { F: female, M: male }\nreverse: { female: M }\n",
        ),
    ]);
    let problems = MappingSet::load(dir.path()).unwrap_err();
    let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    for (file, line, needle) in [
        ("outbound/bad.yaml", 1, "unknown event \"PatientRegistred\""),
        ("outbound/bad.yaml", 4, "unknown key `segmnets`"),
        (
            "outbound/bad.yaml",
            6,
            "index \"x\" is neither a number nor *",
        ),
        ("outbound/bad.yaml", 6, "unknown table \"nosuch\""),
        (
            "outbound/bad.yaml",
            6,
            "unknown key `colour` in segment PID",
        ),
        ("outbound/bad.yaml", 7, "\"pid\" is not a segment ID"),
        ("outbound/bad.yaml", 8, "MSH must be the first segment"),
        ("outbound/bad.yaml", 8, "MSH-1 and MSH-2 are the delimiters"),
        ("outbound/bad.yaml", 9, "unknown name $nope"),
        (
            "outbound/bad.yaml",
            9,
            "`reverse: true` reads a table backwards",
        ),
        (
            "inbound/a04.yaml",
            8,
            "`reverse` reads a table value → code, for outbound files",
        ),
        (
            "tables/sex.yaml",
            2,
            "a reverse entry must be one of the table's own pairs",
        ),
    ] {
        assert!(
            problems
                .iter()
                .any(|p| p.file.ends_with(file) && p.line == line && p.message.contains(needle)),
            "no problem at {file}:{line} with {needle:?} in:\n{}",
            shown.join("\n")
        );
    }
    // Columns point at the key.
    let colour = problems
        .iter()
        .find(|p| p.message.contains("`colour`"))
        .unwrap();
    assert_eq!(colour.column, 111);
}

#[test]
fn reverse_tables_take_the_first_code_unless_told() {
    let file = r#"events: [PatientRegistered]
format: hl7v2
message: { type: ADT^A04, version: "2.5.1" }
segments:
  - PID:
      "8": { path: patient.sex, table: sex, reverse: true }
      "9": { path: patient.sex, table: cls, reverse: true, default: Z }
"#;
    let set = load(&[
        ("outbound/o.yaml", file),
        (
            "tables/sex.yaml",
            "map: { F: female, W: female, M: male, X: unknown, U: unknown }\nreverse: { unknown: U }\n",
        ),
        ("tables/cls.yaml", "map: { I: inpatient }\n"),
    ]);
    let meta = json!({});
    let render = |sex: &str| {
        let p = json!({"patient": {"sex": sex}});
        let r = set
            .render_outbound("outbound/o", &out_input("PatientRegistered", &p, &meta))
            .unwrap();
        String::from_utf8(r.body).unwrap()
    };
    assert!(
        render("female").contains("\rPID||||||||F|Z\r"),
        "{}",
        render("female")
    );
    assert!(render("unknown").contains("\rPID||||||||U|Z\r"));
    assert!(render("male").contains("\rPID||||||||M|Z\r"));
}

/// Every shipped HL7 outbound example parses back with Ferry's own parser, MSH-10 is the control id the
/// delivery engine will match MSA-2 against, and where an inbound mapping reads the message type, it
/// gives back the event and patient identifiers that were rendered: the two directions agree.
#[test]
fn shipped_outbound_messages_map_back_to_their_events() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let set = MappingSet::load(&dir).unwrap();
    let mut round_trips = 0;
    for example in set.examples() {
        let Some(case) = &example.outbound else {
            continue;
        };
        let rendered = set.render_example_input(&example).unwrap().unwrap();
        if rendered.format != OutboundFormat::Hl7v2 {
            continue;
        }
        let text = String::from_utf8(rendered.body.clone()).unwrap();
        let msg = Message::parse(&text).unwrap();
        assert_eq!(Some(msg.msh_field(10)), rendered.control_id.as_deref());
        assert_eq!(msg.msh_field(10), case.delivery_id);
        let event = read_event(&example.input, case.index).unwrap();
        match set.map(&msg) {
            Ok(Mapped::Events(events)) => {
                assert_eq!(
                    events[0].event_type, event.event_type,
                    "{}",
                    example.mapping
                );
                assert_eq!(
                    events[0].payload.to_value().unwrap()["patient"]["identifiers"],
                    event.payload["patient"]["identifiers"],
                    "{}",
                    example.mapping
                );
                round_trips += 1;
            }
            // OMI^O23 has no inbound mapping.
            Ok(Mapped::Unmapped) => assert!(example.mapping.contains("omi"), "{}", example.mapping),
            Err(e) => panic!("{} renders a message Ferry refuses: {e}", example.mapping),
        }
    }
    assert!(round_trips >= 10, "{round_trips}");
}

/// Every `fields:` list of the shipped mappings is ranked: the evaluator walks each list in rank order
/// so that the objects it builds need no sort, which must be the order of the names. (A wrong rank
/// would not show in any output: the payload check would merely find the members unsorted and hand
/// the payload to the slower typed check.)
#[test]
fn shipped_field_lists_are_ranked_in_name_order() {
    use ast::{Build, FieldRule, Rule, Source};
    fn list(fields: &[FieldRule], lists: &mut usize) {
        let mut by_rank: Vec<&FieldRule> = fields.iter().collect();
        by_rank.sort_by_key(|f| f.rank);
        let ranked: Vec<&str> = by_rank.iter().map(|f| f.name.as_str()).collect();
        let mut named = ranked.clone();
        named.sort_unstable();
        assert_eq!(ranked, named);
        let ranks: Vec<u32> = by_rank.iter().map(|f| f.rank).collect();
        assert_eq!(ranks, (0..).take(fields.len()).collect::<Vec<u32>>());
        // The evaluator walks the list through `by_rank`: that walk must meet every field once, in name
        // order, or an object would lose a member or hold one twice.
        let walked: Vec<&str> = fields
            .iter()
            .map(|f| fields[f.by_rank as usize].name.as_str())
            .collect();
        assert_eq!(walked, named);
        *lists += 1;
        fields.iter().for_each(|f| rule(&f.rule, lists));
    }
    fn rule(r: &Rule, lists: &mut usize) {
        match &r.source {
            Source::Fields(fs) => list(fs, lists),
            Source::First(rs) | Source::List(rs) | Source::Join { parts: rs, .. } => {
                rs.iter().for_each(|r| rule(r, lists));
            }
            _ => {}
        }
        if let Some(Build::Fields(fs)) = &r.build {
            list(fs, lists);
        }
    }
    let set = MappingSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")).unwrap();
    let mut lists = 0;
    for named in set.ast.datatypes.iter().chain(&set.ast.rules) {
        rule(&named.rule, &mut lists);
    }
    for m in &set.ast.inbound {
        list(&m.fields, &mut lists);
    }
    for o in &set.ast.outbound {
        list(&o.body, &mut lists);
        o.segments.iter().for_each(|s| list(&s.fields, &mut lists));
    }
    assert!(lists > 30, "{lists}");
}
