//! Agreement report: Ferry's mapping of the corpus against other converters' FHIR output for the same messages.
//!
//! The pairs (see `../shared/corpus/expected/SOURCES.md`):
//! - Microsoft FHIR-Converter: `expected/ms-fhir-converter/<stem>.expected.json` ↔ `hl7v2/ms-fhir-converter/<stem>.hl7`;
//! - CDC ReportStream (trusted-intermediary): `expected/cdc-trusted-intermediary/<stem>_1_hl7_translation.fhir.json`
//!   ↔ `hl7v2/cdc-trusted-intermediary/<stem>_0_initial_message.hl7` (the `_2_fhir_transformation` files are
//!   after their site-specific transforms, so not a conversion of the message).
//!
//! Neither is ground truth. The point is to find where Ferry differs and to say why, for each difference:
//! a Ferry bug to fix, or a choice (ours or theirs) written down in `conformance/agreement-explanations.json`.
//! The result is `conformance/agreement.md`; see `agreement/report.rs` for when the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on bad corpus files

mod agreement {
    pub mod compare;
    pub mod facts;
    pub mod fhir;
    pub mod ours;
    pub mod report;
}

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use agreement::compare::{self, FIELDS, Outcome};
use agreement::facts::{OrderFacts, Stamp};
use agreement::report::{Explanations, Report, recorded_rates};
use agreement::{fhir, ours};
use ferry::hl7::{self, DecodeOptions, Message};
use ferry::mapping::{Mapped, MappingSet};
use serde_json::Value;

/// A corpus message and another converter's bundle for it.
struct Pair {
    /// `<source>/<stem>`: the key of explanations and the name in the report.
    name: String,
    source: &'static str,
    hl7: PathBuf,
    bundle: PathBuf,
}

/// Every pair whose both files exist, sorted by name. `None` when the corpus is absent outside CI.
fn pairs() -> Option<Vec<Pair>> {
    let expected = ferry::testing::corpus_dir("expected")?;
    let hl7v2 = ferry::testing::corpus_dir("hl7v2")?;
    let mut out = Vec::new();
    let sources: [(&'static str, &str, &str); 2] = [
        ("ms-fhir-converter", ".expected.json", ""),
        (
            "cdc-trusted-intermediary",
            "_1_hl7_translation.fhir.json",
            "_0_initial_message",
        ),
    ];
    for (source, bundle_suffix, hl7_suffix) in sources {
        for bundle in ferry::testing::files_under(&expected.join(source), &[bundle_suffix]) {
            // `docs/` holds API response samples, not conversions of corpus messages.
            if bundle.parent() != Some(&expected.join(source)) {
                continue;
            }
            let name = bundle.file_name().unwrap().to_str().unwrap();
            let stem = name.strip_suffix(bundle_suffix).unwrap();
            let hl7 = hl7v2.join(source).join(format!("{stem}{hl7_suffix}.hl7"));
            if hl7.is_file() {
                out.push(Pair {
                    name: format!("{source}/{stem}"),
                    source,
                    hl7,
                    bundle,
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Some(out)
}

fn read_bundle(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    // Some exported bundles start with a UTF-8 byte order mark.
    serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The message types issue 3 maps (the same scope as tests/mapping_corpus.rs): ADT, ORM^O01, OML^O21, ORU^R01.
/// Pairs of other types (SIU, MDM, VXU, …) would only fill the report with "unmapped".
fn in_scope(message: &Message<'_>) -> bool {
    let part = |p| {
        message
            .query(p)
            .ok()
            .flatten()
            .map(|v| v.decoded().into_owned())
            .unwrap_or_default()
    };
    let (kind, trigger) = (part("MSH.9.1"), part("MSH.9.2"));
    kind == "ADT"
        || matches!(
            (kind.as_str(), trigger.as_str()),
            ("ORM", "O01") | ("OML", "O21") | ("ORU", "R01")
        )
}

fn conformance(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conformance")
        .join(file)
}

/// Maps every paired message and compares it with its bundle.
fn run(pairs: &[Pair]) -> Report {
    // As in tests/mapping_corpus.rs: FERRY_CONFORMANCE_MAPPINGS tries a copy with a proposed change.
    let dir = std::env::var_os("FERRY_CONFORMANCE_MAPPINGS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings"),
        PathBuf::from,
    );
    let set = MappingSet::load(&dir).unwrap_or_else(|problems| {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        panic!("shipped mappings do not load:\n{}", list.join("\n"))
    });
    let mut report = Report::default();
    for pair in pairs {
        let bytes = std::fs::read(&pair.hl7).unwrap();
        let decoded = hl7::decode(&bytes, &DecodeOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", pair.hl7.display()));
        let message =
            Message::parse(&decoded.text).unwrap_or_else(|e| panic!("{}: {e}", pair.hl7.display()));
        if !in_scope(&message) {
            continue;
        }
        *report.sources.entry(pair.source.to_string()).or_default() += 1;
        match set.explain(&message) {
            Ok((Mapped::Events(events), explanations)) if !events.is_empty() => {
                let payloads: Vec<Value> = events
                    .iter()
                    .map(|e| e.payload.to_value())
                    .collect::<Result<_, _>>()
                    .unwrap_or_else(|e| panic!("{}: {e}", pair.hl7.display()));
                let payloads: Vec<&Value> = payloads.iter().collect();
                // The HL7 text behind the encounter times: whether the sender gave an offset decides how they
                // compare (compare::same_time).
                let raw: HashMap<(usize, String), String> = explanations
                    .into_iter()
                    .filter(|e| {
                        e.output == "encounter.admitted_at" || e.output == "encounter.discharged_at"
                    })
                    .filter_map(|e| Some(((e.event, e.output), e.raw?)))
                    .collect();
                let ours = ours::extract(&payloads, &raw);
                let theirs = fhir::extract(&read_bundle(&pair.bundle));
                report.add(&pair.name, &compare::compare(&ours, &theirs));
            }
            Ok(_) => report.not_mapped.push((
                pair.name.clone(),
                format!("unmapped {}", message.msh_field(9)),
            )),
            Err(e) => report.not_mapped.push((
                pair.name.clone(),
                format!("AE {} at {} ({})", e.code.code(), e.path, e.mapping),
            )),
        }
    }
    report
}

/// The agreement report is current: no field's rate below the committed one, every disagreement explained.
#[test]
fn agreement_with_other_converters_does_not_fall_and_every_disagreement_is_explained() {
    let Some(pairs) = pairs() else { return };
    let report = run(&pairs);
    let explanations_path = conformance("agreement-explanations.json");
    let explanations: Explanations = match std::fs::read_to_string(&explanations_path) {
        Ok(text) => serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", explanations_path.display())),
        Err(e) => panic!("{}: {e}", explanations_path.display()),
    };
    let md = report.render(&explanations);
    let md_path = conformance("agreement.md");
    println!(
        "{}",
        md.split("\n## Disagreements").next().unwrap_or_default()
    );
    let update = std::env::var("FERRY_UPDATE_AGREEMENT").is_ok_and(|v| v == "1");
    let mut problems = Vec::new();
    if update {
        std::fs::write(&md_path, &md).unwrap();
        println!("wrote {}", md_path.display());
    } else {
        let committed = std::fs::read_to_string(&md_path).unwrap_or_default();
        let recorded = recorded_rates(&committed);
        for field in FIELDS {
            let (compared, agreed) = report.rates.get(field).copied().unwrap_or_default();
            let Some(&(rec_compared, rec_agreed)) = recorded.get(*field) else {
                problems.push(format!(
                    "{field}: no recorded rate in {}",
                    md_path.display()
                ));
                continue;
            };
            // agreed/compared < rec_agreed/rec_compared, without floats; a field no longer compared at all
            // counts as a drop.
            if rec_compared > 0 && (compared == 0 || agreed * rec_compared < rec_agreed * compared)
            {
                problems.push(format!(
                    "{field}: agreed {agreed} of {compared}, recorded {rec_agreed} of {rec_compared}"
                ));
            }
        }
        if committed != md {
            println!("the report changed: FERRY_UPDATE_AGREEMENT=1 records it");
        }
    }
    for d in &report.disagreements {
        if explanations.reason(&d.key()).is_none() {
            problems.push(format!(
                "unexplained: {} (Ferry `{}`, other `{}`)",
                d.key(),
                d.ours,
                d.theirs
            ));
        }
    }
    let current: std::collections::BTreeSet<String> =
        report.disagreements.iter().map(|d| d.key()).collect();
    for key in explanations.disagreements.keys() {
        if !current.contains(key) {
            println!("explained but no longer a disagreement (remove it): {key}");
        }
    }
    assert!(
        problems.is_empty(),
        "agreement regressed (explain in {}, then FERRY_UPDATE_AGREEMENT=1):\n  {}",
        explanations_path.display(),
        problems.join("\n  ")
    );
}

fn corpus_bundle(relative: &str) -> Option<Value> {
    let path = ferry::testing::corpus_root()
        .join("expected")
        .join(relative);
    ferry::testing::corpus_file(path.to_str().unwrap())?;
    Some(read_bundle(&path))
}

#[test]
fn pairs_are_found_for_both_converters() {
    let Some(pairs) = pairs() else { return };
    let ms = pairs
        .iter()
        .filter(|p| p.source == "ms-fhir-converter")
        .count();
    let cdc = pairs.len() - ms;
    assert!(ms >= 120, "only {ms} Microsoft pairs");
    assert!(cdc >= 30, "only {cdc} ReportStream pairs");
}

#[test]
fn microsoft_adt_bundle_yields_pid3_identifiers_with_every_assigner_name() {
    let Some(bundle) = corpus_bundle("ms-fhir-converter/ADT-A01-01.expected.json") else {
        return;
    };
    let f = fhir::extract(&bundle);
    // PID-3 `PATID1234^5^M11^test1&2.16.1&HCD^MR`: the system is built from the universal ID type, the
    // assigner Organization carries the namespace `test1` and the OID.
    let patid = f
        .identifiers
        .iter()
        .find(|i| i.value == "PATID1234")
        .unwrap();
    assert!(patid.authorities.iter().any(|a| a == "test1"), "{patid:?}");
    assert!(patid.authorities.iter().any(|a| a == "2.16.1"), "{patid:?}");
    // `123456789^^^USSSA^SS`: only a system, with the namespace at its end.
    let ssn = f
        .identifiers
        .iter()
        .find(|i| i.value == "123456789")
        .unwrap();
    assert_eq!(ssn.authorities[0], "USSSA");
    assert_eq!(f.family.as_deref(), Some("EVERYMAN"));
    assert_eq!(f.given, ["ADAM", "A", "Addsm"]);
    assert_eq!(f.birth_date.as_deref(), Some("1988-08-18"));
    assert_eq!(f.gender.as_deref(), Some("male"));
    assert_eq!(f.encounter_class.as_deref(), Some("PRENC"));
    assert_eq!(
        f.period_start,
        Some(Stamp::new("2015-02-08T15:54:19+05:30"))
    );
    assert_eq!(f.period_end, None);
}

#[test]
fn microsoft_oru_bundle_yields_requests_with_placer_filler_code_and_status() {
    let Some(bundle) = corpus_bundle("ms-fhir-converter/ORU-R01-01.expected.json") else {
        return;
    };
    let f = fhir::extract(&bundle);
    let order = f
        .orders
        .iter()
        .find(|o| o.placer.as_deref() == Some("845439"))
        .unwrap();
    assert_eq!(order.filler.as_deref(), Some("986"));
    assert_eq!(order.code.as_deref(), Some("625-4"));
    assert_eq!(order.status.as_deref(), Some("completed"));
    // The parent order (ORC-8) becomes a request of its own, without a code.
    assert!(
        f.orders
            .iter()
            .any(|o| o.placer.as_deref() == Some("PAI-8.1") && o.code.is_none())
    );
}

#[test]
fn reportstream_bundle_yields_assigner_from_organization_and_status_unknown() {
    let Some(bundle) = corpus_bundle(
        "cdc-trusted-intermediary/Test__Orders__003_AL_ORM_O01_NBS_Fully_Populated_1_hl7_translation.fhir.json",
    ) else {
        return;
    };
    let f = fhir::extract(&bundle);
    // PID-3 `1300974^^^Baptist East^MR`: the namespace is the assigner Organization's identifier.
    assert_eq!(f.identifiers.len(), 1);
    assert_eq!(f.identifiers[0].value, "1300974");
    assert!(
        f.identifiers[0]
            .authorities
            .iter()
            .any(|a| a == "Baptist East")
    );
    assert_eq!(f.family.as_deref(), Some("ONE"));
    assert_eq!(f.given, ["TESTCASE"]);
    assert_eq!(f.birth_date.as_deref(), Some("2024-02-21"));
    assert_eq!(f.gender.as_deref(), Some("female"));
    assert_eq!(f.encounter_class, None);
    assert_eq!(f.orders.len(), 1);
    assert_eq!(f.orders[0].placer.as_deref(), Some("2801690163"));
    assert_eq!(f.orders[0].code, None);
    assert_eq!(f.orders[0].status.as_deref(), Some("unknown"));
}

fn stamp(text: &str, source: &str) -> Stamp {
    Stamp {
        text: text.to_string(),
        source: Some(source.to_string()),
    }
}

#[test]
fn times_sent_with_offset_compare_as_instants_in_any_zone() {
    // PV1-44 `20150208113419+0110`: Microsoft writes the instant in +05:30.
    let ours = stamp("2015-02-08T11:34:19+01:10", "20150208113419+0110");
    assert!(compare::same_time(
        &ours,
        &Stamp::new("2015-02-08T15:54:19+05:30")
    ));
    assert!(!compare::same_time(
        &ours,
        &Stamp::new("2015-02-08T11:34:19+05:30")
    ));
}

#[test]
fn times_sent_without_offset_compare_by_wall_clock_text() {
    // Ferry read `20150208113419` in Europe/Zurich, Microsoft in its machine's +05:30: same wall clock.
    let ours = stamp("2015-02-08T11:34:19+01:00", "20150208113419");
    assert!(compare::same_time(
        &ours,
        &Stamp::new("2015-02-08T11:34:19+05:30")
    ));
    assert!(!compare::same_time(
        &ours,
        &Stamp::new("2015-02-08T10:34:19+05:30")
    ));
    // A fraction's trailing zeros do not make a difference.
    let ours = stamp("2021-08-17T15:19:43.4+02:00", "20210817151943.4");
    assert!(compare::same_time(
        &ours,
        &Stamp::new("2021-08-17T15:19:43.400+05:30")
    ));
}

#[test]
fn dates_compare_as_text() {
    assert!(compare::same_time(
        &stamp("2015-02-08", "20150208"),
        &Stamp::new("2015-02-08")
    ));
    assert!(!compare::same_time(
        &stamp("2015-02", "201502"),
        &Stamp::new("2015-02-01")
    ));
}

fn order(
    placer: Option<&str>,
    code: &str,
    status: Option<&str>,
    control: &str,
) -> agreement::facts::OrderFacts {
    OrderFacts {
        placer: placer.map(str::to_string),
        filler: None,
        code: Some(code.to_string()),
        status: status.map(str::to_string),
        control: Some(control.to_string()),
    }
}

fn outcome(ours: &[OrderFacts], theirs: &[OrderFacts], field: &str) -> Outcome {
    let o = agreement::facts::Facts {
        orders: ours.to_vec(),
        ..Default::default()
    };
    let t = agreement::facts::Facts {
        orders: theirs.to_vec(),
        ..Default::default()
    };
    compare::compare(&o, &t)
        .into_iter()
        .find(|(f, _)| *f == field)
        .unwrap()
        .1
}

#[test]
fn orders_pair_by_placer_number_before_position() {
    // Microsoft lists the parent order (ORC-8) first; the placer number finds the real counterpart.
    let theirs = [
        OrderFacts {
            placer: Some("PAI-8.1".into()),
            status: Some("active".into()),
            ..Default::default()
        },
        order(Some("1101"), "57698-3", Some("active"), ""),
    ];
    let ours = [order(Some("1101"), "57698-3", Some("SC"), "NW")];
    assert_eq!(
        outcome(&ours, &theirs, "ServiceRequest.code"),
        Outcome::Agreed
    );
    assert_eq!(
        outcome(&ours, &theirs, "ServiceRequest.status"),
        Outcome::Agreed
    );
}

#[test]
fn order_status_comes_from_orc5_else_only_from_ending_controls() {
    let theirs = |s: &str| [order(None, "X", Some(s), "")];
    // ORC-5 CM → completed.
    let ours = [order(None, "X", Some("CM"), "SC")];
    assert_eq!(
        outcome(&ours, &theirs("completed"), "ServiceRequest.status"),
        Outcome::Agreed
    );
    // No ORC-5, ORC-1 CA → revoked.
    let ours = [order(None, "X", None, "CA")];
    assert_eq!(
        outcome(&ours, &theirs("revoked"), "ServiceRequest.status"),
        Outcome::Agreed
    );
    // No ORC-5, ORC-1 NW: Ferry makes no claim, so nothing is compared.
    let ours = [order(None, "X", None, "NW")];
    assert_eq!(
        outcome(&ours, &theirs("active"), "ServiceRequest.status"),
        Outcome::NotCompared
    );
    // `unknown` on the other side is no claim either.
    let ours = [order(None, "X", Some("SC"), "NW")];
    assert_eq!(
        outcome(&ours, &theirs("unknown"), "ServiceRequest.status"),
        Outcome::NotCompared
    );
}

#[test]
fn encounter_class_words_compare_through_act_codes() {
    let with = |class: &str| agreement::facts::Facts {
        encounter_class: Some(class.to_string()),
        ..Default::default()
    };
    let field = |o: &str, t: &str| {
        compare::compare(&with(o), &with(t))
            .into_iter()
            .find(|(f, _)| *f == "Encounter.class")
            .unwrap()
            .1
    };
    assert_eq!(field("inpatient", "IMP"), Outcome::Agreed);
    assert_eq!(field("preadmission", "PRENC"), Outcome::Agreed);
    assert_eq!(
        field("outpatient", "IMP"),
        Outcome::Disagreed {
            ours: "outpatient (= AMB)".into(),
            theirs: "IMP".into()
        }
    );
    // Ferry not recognising the class while the other side did is a difference to explain.
    assert!(matches!(field("unknown", "AMB"), Outcome::Disagreed { .. }));
}

#[test]
fn ferry_payloads_yield_first_patient_encounter_with_sources_and_every_order() {
    use std::collections::HashMap;
    let placed = serde_json::json!({
        "patient": {
            "identifiers": [{"value": "100010", "authority": "TEST-HOSP", "type": "MR"}, {"value": "756.1"}],
            "names": [{"family": "Brandt", "given": ["Lena", "Marie"]}, {"family": "Alias"}],
            "birth_date": "1984-03-12",
            "sex": "female"
        },
        "encounter": {"class": "inpatient", "admitted_at": "2026-11-03T14:30:00+01:00"},
        "order": {"control": "NW", "placer_order_number": {"value": "PL0101"}, "status": "SC",
                  "code": {"code": "CTHEAD"}}
    });
    let cancelled = serde_json::json!({
        "patient": {"identifiers": [{"value": "other"}]},
        "order": {"control": "CA", "filler_order_number": {"value": "FL0101"}}
    });
    let raw = HashMap::from([(
        (0, "encounter.admitted_at".to_string()),
        "202611031430".to_string(),
    )]);
    let f = agreement::ours::extract(&[&placed, &cancelled], &raw);
    assert_eq!(f.identifiers.len(), 2);
    assert_eq!(f.identifiers[0].authorities, ["TEST-HOSP"]);
    assert!(f.identifiers[1].authorities.is_empty());
    assert_eq!(f.family.as_deref(), Some("Brandt"));
    assert_eq!(f.given, ["Lena", "Marie"]);
    assert_eq!(f.birth_date.as_deref(), Some("1984-03-12"));
    assert_eq!(f.gender.as_deref(), Some("female"));
    assert_eq!(f.encounter_class.as_deref(), Some("inpatient"));
    assert_eq!(
        f.period_start,
        Some(stamp("2026-11-03T14:30:00+01:00", "202611031430"))
    );
    assert_eq!(f.period_end, None);
    assert_eq!(f.orders.len(), 2);
    assert_eq!(f.orders[0].placer.as_deref(), Some("PL0101"));
    assert_eq!(f.orders[0].status.as_deref(), Some("SC"));
    assert_eq!(f.orders[1].filler.as_deref(), Some("FL0101"));
    assert_eq!(f.orders[1].control.as_deref(), Some("CA"));
}

#[test]
fn rendered_report_records_rates_that_read_back_and_flags_unexplained_disagreements() {
    use agreement::report::{Explanations, Report, recorded_rates};
    let mut report = Report::default();
    report.sources.insert("ms-fhir-converter".into(), 2);
    report.add(
        "ms-fhir-converter/A",
        &[("Patient.gender", Outcome::Agreed)],
    );
    report.add(
        "ms-fhir-converter/B",
        &[
            (
                "Patient.gender",
                Outcome::Disagreed {
                    ours: "unknown".into(),
                    theirs: "other".into(),
                },
            ),
            (
                "Patient.birthDate",
                Outcome::Disagreed {
                    ours: "1980".into(),
                    theirs: "1980-01-01".into(),
                },
            ),
        ],
    );
    let mut explanations = Explanations::default();
    explanations
        .reasons
        .insert("ms-gender".into(), "Why.".into());
    explanations.disagreements.insert(
        "ms-fhir-converter/B|Patient.gender".into(),
        "ms-gender".into(),
    );
    let md = report.render(&explanations);
    let rates = recorded_rates(&md);
    assert_eq!(rates["Patient.gender"], (2, 1));
    assert_eq!(rates["Patient.birthDate"], (1, 0));
    assert_eq!(rates["Encounter.class"], (0, 0));
    assert!(md.contains("### `UNEXPLAINED` (1)"), "{md}");
    assert!(md.contains("- **`ms-gender`**: Why."), "{md}");
}

#[test]
fn assigner_with_spaces_matches_microsofts_hyphenated_system() {
    use agreement::facts::{Facts, Ident};
    let with = |authorities: &[&str]| Facts {
        identifiers: vec![Ident {
            value: "PATID1234".into(),
            authorities: authorities.iter().map(|a| a.to_string()).collect(),
        }],
        ..Default::default()
    };
    let field = |ours: &Facts, theirs: &Facts| {
        compare::compare(ours, theirs)
            .into_iter()
            .find(|(f, _)| *f == "Patient.identifier.assigner")
            .unwrap()
            .1
    };
    // LRI_2.0-NG_CBC_Typ_Message: PID-3 `PATID1234^^^NIST MPI^MR`.
    let theirs = with(&[
        "NIST-MPI",
        "http://example.com/v2-to-fhir-converter/Identifier/NIST-MPI",
    ]);
    assert_eq!(field(&with(&["NIST MPI"]), &theirs), Outcome::Agreed);
    assert!(matches!(
        field(&with(&["NIST"]), &theirs),
        Outcome::Disagreed { .. }
    ));
    // An identifier the other side keeps without any assigner is a difference to explain.
    assert!(matches!(
        field(&with(&["NIST MPI"]), &with(&[])),
        Outcome::Disagreed { .. }
    ));
}
