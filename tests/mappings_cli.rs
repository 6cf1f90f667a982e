//! The analyst tooling as analysts run it, on the shipped `mappings/`: `ferry mappings check`,
//! `ferry mappings test`, `ferry map --explain`, `ferry mappings schema`, and the catalogue
//! documentation kept in step with the code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn ferry(args: &[&str]) -> Output {
    Command::new(FERRY)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("FERRY_MAPPINGS_DIR")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn shipped_mappings_pass_check() {
    let out = ferry(&["mappings", "check", "mappings"]);
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout(&out).contains("are valid (version "),
        "{}",
        stdout(&out)
    );
}

#[test]
fn shipped_mappings_pass_their_examples() {
    let out = ferry(&["mappings", "test", "mappings"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(", 0 failed"), "{text}");
    // Every inbound mapping file has examples, and every fixture is the input of one.
    for entry in std::fs::read_dir(manifest("mappings/inbound")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let stem = name.trim_end_matches(".yaml");
        assert!(
            text.contains(&format!(" {stem} <- ")),
            "{name} has no example:\n{text}"
        );
    }
    for entry in std::fs::read_dir(manifest("fixtures/hl7v2")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            text.contains(&name),
            "fixture {name} is in no example:\n{text}"
        );
    }
}

/// A broken folder: every problem at once, each with file, line and column.
#[test]
fn check_reports_every_problem_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let mappings = dir.path().join("mappings");
    common::copy_tree(&manifest("mappings"), &mappings);
    common::copy_tree(&manifest("fixtures"), &dir.path().join("fixtures"));
    let a01 = mappings.join("inbound/adt_a01.patient_admitted.yaml");
    let text = std::fs::read_to_string(&a01).unwrap();
    let broken = text
        .replacen(
            "event: PatientAdmitted",
            "event: PatientAdmitted\ncolour: blue",
            1,
        )
        .replacen(
            "fields:\n",
            "fields:\n  nickname: { path: PID.5.1 }\n  patient_note: { path: \"PID.5[\" }\n",
            1,
        );
    std::fs::write(&a01, broken).unwrap();
    let out = ferry(&["mappings", "check", mappings.to_str().unwrap()]);
    let text = stdout(&out);
    assert!(!out.status.success(), "{text}");
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("adt_a01.patient_admitted.yaml:"))
        .collect();
    assert!(problems.len() >= 3, "{text}");
    assert!(problems.iter().any(|l| l.contains("colour")), "{text}");
    assert!(problems.iter().any(|l| l.contains("PID.5[")), "{text}");
    assert!(problems.iter().any(|l| l.contains("nickname")), "{text}");
    for line in problems {
        // file:line:column: sentence
        let rest = line.split(".yaml:").nth(1).unwrap();
        let mut parts = rest.splitn(3, ':');
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{line}");
        assert!(parts.next().unwrap().parse::<usize>().is_ok(), "{line}");
    }
}

#[test]
fn map_explain_names_rule_source_and_raw_value() {
    let fixture = manifest("fixtures/hl7v2/adt_a01_basic.hl7");
    let out = ferry(&["map", fixture.to_str().unwrap(), "--explain"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\"event\": \"PatientAdmitted\""), "{text}");
    let identifier = text
        .lines()
        .find(|l| l.trim_start().starts_with("patient.identifiers[0].value"))
        .unwrap_or_else(|| panic!("no explanation of the identifier:\n{text}"));
    assert!(identifier.contains("PID.3"), "{identifier}");
    assert!(identifier.contains("100010"), "{identifier}");
    let birth = text
        .lines()
        .find(|l| l.trim_start().starts_with("patient.birth_date"))
        .unwrap();
    assert!(
        birth.contains("PID.7") && birth.contains("19840312") && birth.contains("1984-03-12"),
        "{birth}"
    );

    let bad = manifest("fixtures/hl7v2/adt_a01_empty_pid3.hl7");
    let out = ferry(&["map", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stdout(&out).starts_with("AE 101 at PID^1^3"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn map_outbound_renders_an_event_and_explains_each_hl7_field() {
    let event = manifest("mappings/examples/orm_o01_nw.json");
    let out = ferry(&[
        "map",
        event.to_str().unwrap(),
        "--outbound",
        "outbound/pacs_orm_o01",
        "--delivery-id",
        "D-9",
        "--explain",
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let msh = text.lines().next().unwrap();
    assert!(msh.starts_with("MSH|^~\\&|FERRY|"), "{msh}");
    assert!(msh.contains("|ORM^O01^ORM_O01|D-9|P|2.5.1"), "{msh}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("ORC|NW|PL0101^FERRY-TEST")),
        "{text}"
    );
    let id = text
        .lines()
        .find(|l| l.trim_start().starts_with("PID.3[1].1 "))
        .unwrap_or_else(|| panic!("no explanation of PID-3:\n{text}"));
    assert!(
        id.contains("patient.identifiers[0].value") && id.contains("100010"),
        "{id}"
    );
    let sex = text
        .lines()
        .find(|l| l.trim_start().starts_with("PID.8 "))
        .unwrap();
    assert!(
        sex.contains("\"F\"") && sex.contains("patient.sex") && sex.contains("reverse"),
        "{sex}"
    );

    // An event type the file does not render is refused with a sentence, not a panic.
    let adt = manifest("mappings/examples/adt_a01_basic.json");
    let out = ferry(&[
        "map",
        adt.to_str().unwrap(),
        "--outbound",
        "outbound/pacs_orm_o01",
    ]);
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("does not render PatientAdmitted events"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn map_explains_a_fhir_resource_by_its_elements() {
    let fixture = manifest("fixtures/fhir/servicerequest_update.json");
    let out = ferry(&[
        "map",
        fixture.to_str().unwrap(),
        "--interaction",
        "update",
        "--explain",
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\"event\": \"OrderChanged\""), "{text}");
    let placer = text
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("order.placer_order_number.authority")
        })
        .unwrap_or_else(|| panic!("no explanation of the placer number:\n{text}"));
    assert!(
        placer.contains("ServiceRequest.identifier[0].system")
            && placer.contains("urn:oid:1.2.276.0.76.4.17.2")
            && placer.contains("transform authority"),
        "{placer}"
    );
    // A create (`--interaction` defaults to create; the fixture has no id) is a new order: NW.
    let created = ferry(&[
        "map",
        manifest("fixtures/fhir/servicerequest_create.json")
            .to_str()
            .unwrap(),
    ]);
    assert!(
        stdout(&created).contains("\"control\": \"NW\""),
        "{}",
        stdout(&created)
    );

    let bad = manifest("fixtures/fhir/patient_bad_gender.json");
    let out = ferry(&["map", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stdout(&out).starts_with("error 103 at Patient.gender"),
        "{}",
        stdout(&out)
    );
}

/// The committed schema files are what the code generates (so editors and docs never drift).
#[test]
fn committed_schemas_match_the_code() {
    for (args, file) in [
        (vec!["mappings", "schema"], "mappings/schema.json"),
        (
            vec!["mappings", "schema", "--events"],
            "mappings/events.schema.json",
        ),
    ] {
        let out = ferry(&args);
        assert!(out.status.success());
        let committed = std::fs::read_to_string(manifest(file)).unwrap_or_default();
        assert!(
            committed == stdout(&out),
            "{file} is out of date: run `ferry {} --output {file}`",
            args.join(" ")
        );
        let _: serde_json::Value = serde_json::from_str(&committed).unwrap();
    }
}

/// The catalogue in mappings/README.md lists every event with its schema version.
#[test]
fn readme_catalogue_lists_every_event() {
    let readme = std::fs::read_to_string(manifest("mappings/README.md")).unwrap();
    for spec in ferry::domain::catalogue() {
        let row = format!("| `{}` | {} |", spec.name, spec.schema_version);
        assert!(
            readme.contains(&row),
            "mappings/README.md lacks the row {row}"
        );
    }
}
