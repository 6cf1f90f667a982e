//! Corpus tests for the HL7 v2 module: every well-formed message decodes and parses; the odd originals (BOM + LF,
//! CRLF) decode and parse; every malformed input goes through decode + parse + queries without panicking; and
//! arbitrary or mutated input never panics (proptest).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on bad fixtures

use ferry::hl7::{self, DecodeOptions, Message};
use proptest::prelude::*;

/// Touches everything a caller might: all levels of every field, decoding, and a few queries.
fn exercise(m: &Message<'_>) -> usize {
    let mut n = 0;
    for seg in m.segments() {
        for f in seg.fields() {
            n += f.decoded().len();
            for r in f.repetitions() {
                for c in r.components() {
                    for s in c.subcomponents() {
                        n += s.decoded().len() + usize::from(s.is_null());
                    }
                }
            }
        }
    }
    for p in [
        "MSH.9.1",
        "MSH.10",
        "PID.3[*].1",
        "OBX[*].5",
        "PID.5.1.1",
        "MSH.18",
    ] {
        n += m.query_all(p).unwrap().len();
        let _ = m.query(p).unwrap();
    }
    n
}

#[test]
fn every_well_formed_message_parses() {
    let Some(all) = ferry::testing::hl7v2_corpus() else {
        return;
    };
    assert!(all.len() >= 733, "only {} files", all.len());
    let mut segments = 0;
    for p in &all {
        let bytes = std::fs::read(p).unwrap();
        let d = hl7::decode(&bytes, &DecodeOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let m = Message::parse(&d.text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(!m.msh_field(9).is_empty(), "{}: no MSH-9", p.display());
        segments += m.segment_count();
        exercise(&m);
    }
    println!("{} messages, {segments} segments", all.len());
}

#[test]
fn odd_originals_with_bom_lf_and_crlf_parse() {
    let Some(dir) = ferry::testing::corpus_dir("hl7v2/_raw_odd") else {
        return;
    };
    for name in [
        "ms_VXU_bom_lf.hl7",
        "ms_ADT01-23_bom_lf.hl7",
        "ms_LAB-ORM-1_bom_lf.hl7",
        "cdc_003_CA_ORU_R01_CDPH_produced_0_initial_message.hl7",
    ] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let d = hl7::decode(&bytes, &DecodeOptions::default()).unwrap();
        assert_eq!(d.bom_stripped, name.contains("bom"), "{name}");
        assert!(
            matches!(d.text, std::borrow::Cow::Borrowed(_)),
            "{name}: not zero-copy"
        );
        let m = Message::parse(&d.text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(m.segment_count() > 2, "{name}");
        assert!(
            m.segments().all(|s| !s.raw().contains(['\r', '\n'])),
            "{name}"
        );
        // The parser also tolerates the BOM itself.
        let text = std::str::from_utf8(&bytes).unwrap();
        let m2 = Message::parse(text).unwrap();
        assert_eq!(m2.segment_count(), m.segment_count(), "{name}");
        assert_eq!(m2.msh_field(10), m.msh_field(10), "{name}");
    }
    // These two carry `^~\\&` (a Java-escaped backslash written twice): a duplicate encoding character.
    for name in ["lfh_sample_win.hl7", "lfh_sample_unix.hl7"] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let d = hl7::decode(&bytes, &DecodeOptions::default()).unwrap();
        let e = Message::parse(&d.text).unwrap_err();
        assert!(
            matches!(e, hl7::ParseError::BadEncodingCharacters { .. }),
            "{name}: {e}"
        );
    }
}

#[test]
fn malformed_inputs_do_not_panic() {
    let Some(dir) = ferry::testing::corpus_dir("hl7v2_negative") else {
        return;
    };
    let all = ferry::testing::files_under(&dir, &[]);
    assert!(all.len() >= 70, "only {} files", all.len());
    let (mut ok, mut failed) = (0, 0);
    for p in &all {
        let name = p.strip_prefix(&dir).unwrap_or(p).display().to_string();
        let bytes = std::fs::read(p).unwrap();
        let d = match hl7::decode(&bytes, &DecodeOptions::default()) {
            Ok(d) => d,
            Err(e) => {
                println!("decode error  {name}: {e}");
                failed += 1;
                continue;
            }
        };
        match Message::parse(&d.text) {
            Ok(m) => {
                ok += 1;
                exercise(&m);
                println!(
                    "PARSES        {name}: MSH-9={:?} MSH-10={:?} MSH-12={:?} segments={}",
                    m.msh_field(9),
                    m.msh_field(10),
                    m.msh_field(12),
                    m.segment_count()
                );
            }
            Err(e) => {
                failed += 1;
                let loc = e.location().map(|l| l.to_erl('^')).unwrap_or_default();
                println!("parse error   {name}: {e} [{loc}]");
            }
        }
    }
    println!("{ok} parse, {failed} rejected");
}

fn corpus_sample() -> &'static [Vec<u8>] {
    static SAMPLE: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SAMPLE.get_or_init(load_sample)
}

fn load_sample() -> Vec<Vec<u8>> {
    let Some(all) = ferry::testing::hl7v2_corpus() else {
        return vec![b"MSH|^~\\&|A|B\rPID|1||x^y~z\r".to_vec()];
    };
    all.iter()
        .step_by(25)
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

fn run_everything(bytes: &[u8]) {
    for opts in [
        DecodeOptions::default(),
        DecodeOptions {
            fallback: None,
            ..DecodeOptions::default()
        },
    ] {
        if let Ok(d) = hl7::decode(bytes, &opts)
            && let Ok(m) = Message::parse(&d.text)
        {
            exercise(&m);
            let _ = hl7::encode(&d.text, d.charset);
            let _ = m.msh().field(2).map(|f| f.component(2));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        run_everything(&bytes);
        let mut with_msh = b"MSH|^~\\&|".to_vec();
        with_msh.extend_from_slice(&bytes);
        run_everything(&with_msh);
    }

    #[test]
    fn arbitrary_strings_never_panic(s in "(MSH|PID|OBX|\\\\|\\||\\^|~|&|#|\r|\n|[A-Z0-9]|ü|\"|\\.br|X0D|F|S)*") {
        run_everything(s.as_bytes());
        let seps = hl7::Separators::default();
        let e = hl7::escape(&s, &seps);
        prop_assert_eq!(hl7::unescape(&e, &seps), s.as_str());
    }

    #[test]
    fn mutated_corpus_messages_never_panic(
        idx in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let sample = corpus_sample();
        let mut msg = idx.get(sample).clone();
        for (at, b) in edits {
            if !msg.is_empty() {
                let i = at.index(msg.len());
                msg[i] = b;
            }
        }
        run_everything(&msg);
        if !msg.is_empty() {
            msg.truncate(cut.index(msg.len()));
            run_everything(&msg);
        }
    }

    #[test]
    fn arbitrary_paths_never_panic(p in "[A-Z\\[\\]\\.\\*0-9a-z]{0,20}") {
        let m = Message::parse("MSH|^~\\&|A\rPID|1||x^y&z~w\r").unwrap();
        if let Ok(path) = p.parse::<hl7::Path>() {
            prop_assert_eq!(path.to_string().parse::<hl7::Path>().unwrap(), path);
        }
        let _ = m.query(&p);
        let _ = m.query_all(&p);
    }
}
