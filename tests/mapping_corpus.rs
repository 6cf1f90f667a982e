//! Corpus tally: every ADT, ORM^O01, OML^O21 and ORU^R01 message of `../shared/corpus/hl7v2/` through the shipped
//! `mappings/`.
//!
//! Each message either maps to events, is unmapped (an ADT trigger Ferry has no event for, such as A06 or A14),
//! or is refused with a mapping error (AE). The expected tally is committed in `conformance/corpus-tally.json`:
//! per message type the counts, and every AE reason (code, path, mapping) with how many messages it refuses.
//! `conformance/README.md` says why each listed reason is right or what would fix it.
//!
//! The test fails when a type maps fewer messages than recorded, or a message is refused for a reason not
//! listed. `FERRY_UPDATE_TALLY=1 cargo test --test mapping_corpus` rewrites the file (then explain any new
//! reason in the README); `FERRY_TALLY_VERBOSE=1` prints every refusal with the engine's sentence.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on bad corpus files

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ferry::hl7::{self, DecodeOptions, Message};
use ferry::mapping::{MapError, Mapped, MappingSet};
use serde::{Deserialize, Serialize};

/// `conformance/corpus-tally.json`.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tally {
    /// `MSH-9.1^MSH-9.2` → counts.
    types: BTreeMap<String, Counts>,
    /// Every reason a message was refused for, sorted.
    reasons: Vec<Reason>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Counts {
    messages: usize,
    mapped: usize,
    /// No mapping for this trigger (or, for orders, for this ORC-1).
    unmapped: usize,
    /// Refused with AE.
    refused: usize,
}

/// An AE reason, normalised so that one cause is one entry: the path without repetition or occurrence indexes
/// (`PID.3[2].1` → `PID.3.1`), since which repetition or OBX failed differs from message to message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reason {
    /// HL7 table 0357: 101 required field missing, 102 data type error, 103 table value not found.
    code: u16,
    path: String,
    mapping: String,
    /// How many corpus messages it refuses (information; not a failure condition).
    messages: usize,
    /// The first such message (relative to `hl7v2/`), to look at.
    example: String,
}

impl Reason {
    fn key(&self) -> (u16, &str, &str) {
        (self.code, &self.path, &self.mapping)
    }
}

/// Whether a message type is in the tally's scope.
fn in_scope(kind: &str, trigger: &str) -> bool {
    kind == "ADT"
        || matches!(
            (kind, trigger),
            ("ORM", "O01") | ("OML", "O21") | ("ORU", "R01")
        )
}

/// `PID.3[2].1` → `PID.3.1`.
fn normalise_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            _ if !in_index => out.push(c),
            _ => {}
        }
    }
    out
}

fn tally_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance/corpus-tally.json")
}

/// The shipped `mappings/`, or the folder `FERRY_CONFORMANCE_MAPPINGS` names: a copy with a proposed change, to
/// see what it does to the corpus before it is made.
fn mappings() -> MappingSet {
    let dir = std::env::var_os("FERRY_CONFORMANCE_MAPPINGS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings"),
        PathBuf::from,
    );
    MappingSet::load(&dir).unwrap_or_else(|problems| {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        panic!("shipped mappings do not load:\n{}", list.join("\n"))
    })
}

/// Maps every in-scope corpus message. `None` when the corpus is absent outside CI.
fn run() -> Option<Tally> {
    let files = ferry::testing::hl7v2_corpus()?;
    let root = ferry::testing::corpus_root().join("hl7v2");
    let set = mappings();
    let mut tally = Tally::default();
    let mut reasons: BTreeMap<(u16, String, String), Reason> = BTreeMap::new();
    // Every refusal with the engine's sentence, for whoever works through the list.
    let verbose = std::env::var("FERRY_TALLY_VERBOSE").is_ok_and(|v| v == "1");
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        let decoded = hl7::decode(&bytes, &DecodeOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let message =
            Message::parse(&decoded.text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let kind = message
            .query("MSH.9.1")
            .unwrap()
            .map(|v| v.decoded().into_owned());
        let trigger = message
            .query("MSH.9.2")
            .unwrap()
            .map(|v| v.decoded().into_owned());
        let (kind, trigger) = (kind.unwrap_or_default(), trigger.unwrap_or_default());
        if !in_scope(&kind, &trigger) {
            continue;
        }
        let counts = tally.types.entry(format!("{kind}^{trigger}")).or_default();
        counts.messages += 1;
        match set.map(&message) {
            Ok(Mapped::Events(events)) if !events.is_empty() => counts.mapped += 1,
            Ok(_) => counts.unmapped += 1,
            Err(error) => {
                let MapError {
                    code,
                    path: p,
                    mapping,
                    message: sentence,
                    ..
                } = *error;
                counts.refused += 1;
                let example = path
                    .strip_prefix(&root)
                    .unwrap_or(path)
                    .display()
                    .to_string();
                if verbose {
                    println!(
                        "AE {} at {p} ({mapping}) {example}: {sentence}",
                        code.code()
                    );
                }
                let p = normalise_path(&p);
                reasons
                    .entry((code.code(), p.clone(), mapping.clone()))
                    .or_insert(Reason {
                        code: code.code(),
                        path: p,
                        mapping,
                        messages: 0,
                        example,
                    })
                    .messages += 1;
            }
        }
    }
    tally.reasons = reasons.into_values().collect();
    Some(tally)
}

/// The tally as a table, for the test's output.
fn print(tally: &Tally) {
    println!(
        "{:<10} {:>8} {:>7} {:>9} {:>8}",
        "type", "messages", "mapped", "unmapped", "refused"
    );
    let mut total = Counts::default();
    for (kind, c) in &tally.types {
        println!(
            "{kind:<10} {:>8} {:>7} {:>9} {:>8}",
            c.messages, c.mapped, c.unmapped, c.refused
        );
        total.messages += c.messages;
        total.mapped += c.mapped;
        total.unmapped += c.unmapped;
        total.refused += c.refused;
    }
    println!(
        "{:<10} {:>8} {:>7} {:>9} {:>8}",
        "total", total.messages, total.mapped, total.unmapped, total.refused
    );
    println!("\nAE reasons (code path mapping: messages, e.g.):");
    for r in &tally.reasons {
        println!(
            "  {} {} {}: {} ({})",
            r.code, r.path, r.mapping, r.messages, r.example
        );
    }
}

/// What makes `now` worse than `recorded`: fewer mapped messages for a type, or an AE reason not listed.
fn regressions(recorded: &Tally, now: &Tally) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, was) in &recorded.types {
        let is = now.types.get(kind).map_or(0, |c| c.mapped);
        if is < was.mapped {
            out.push(format!(
                "{kind}: {is} messages mapped, {} recorded",
                was.mapped
            ));
        }
    }
    for r in &now.reasons {
        if !recorded.reasons.iter().any(|k| k.key() == r.key()) {
            out.push(format!(
                "new AE reason {} at {} in {} ({} messages, e.g. {})",
                r.code, r.path, r.mapping, r.messages, r.example
            ));
        }
    }
    out
}

#[test]
fn corpus_messages_map_or_are_refused_for_a_listed_reason() {
    let Some(now) = run() else { return };
    print(&now);
    let path = tally_path();
    if std::env::var("FERRY_UPDATE_TALLY").is_ok_and(|v| v == "1") {
        let json = serde_json::to_string_pretty(&now).unwrap() + "\n";
        std::fs::write(&path, json).unwrap();
        println!("\nwrote {}", path.display());
        return;
    }
    let recorded: Tally = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let problems = regressions(&recorded, &now);
    assert!(
        problems.is_empty(),
        "the corpus tally regressed (see {}; FERRY_UPDATE_TALLY=1 records a deliberate change, then explain new \
         reasons in conformance/README.md):\n  {}",
        path.display(),
        problems.join("\n  ")
    );
    if now != recorded {
        println!("\nthe tally changed without regressing: FERRY_UPDATE_TALLY=1 records it");
    }
}

#[test]
fn regressions_are_fewer_mapped_messages_or_an_unlisted_reason() {
    let reason = |code, path: &str| Reason {
        code,
        path: path.into(),
        mapping: "adt_a01.patient_admitted".into(),
        messages: 1,
        example: "x.hl7".into(),
    };
    let tally = |mapped, reasons| Tally {
        types: BTreeMap::from([(
            "ADT^A01".to_string(),
            Counts {
                messages: 10,
                mapped,
                unmapped: 0,
                refused: 10 - mapped,
            },
        )]),
        reasons,
    };
    let recorded = tally(8, vec![reason(101, "PID.3.1")]);
    // More mapped, a listed reason with another count: fine.
    let mut better = tally(9, vec![reason(101, "PID.3.1")]);
    better.reasons[0].messages = 5;
    assert!(regressions(&recorded, &better).is_empty());
    assert_eq!(regressions(&recorded, &tally(7, vec![])).len(), 1);
    assert_eq!(
        regressions(&recorded, &tally(8, vec![reason(102, "PID.7")])).len(),
        1
    );
}

#[test]
fn reason_paths_lose_repetition_and_occurrence_indexes() {
    assert_eq!(normalise_path("PID.3[2].1"), "PID.3.1");
    assert_eq!(normalise_path("OBX[12].5[1]"), "OBX.5");
    assert_eq!(normalise_path("PV1.44.1"), "PV1.44.1");
}
