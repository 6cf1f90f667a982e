//! Mapping throughput: the shipped `mappings/` applied to our ADT^A01 and ORM^O01 fixtures, one
//! thread. The target of the mappings issue is ≥ 100,000 messages/s on one core for each.
//!
//! "map" measures mapping a message that is already parsed (what the pipeline adds per message);
//! "parse+map" includes parsing the text, to show the share of each. Every iteration builds the
//! full events: payload JSON, domain check (`normalize_payload`) and stream keys.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry::hl7::{DecodeOptions, Message, decode};
use ferry::mapping::{Mapped, MappingSet};

/// The allocator of the `ferry` binary (`src/main.rs`), so that this measures mapping as ingest
/// runs it: building and dropping an event is mostly small allocations.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/hl7v2")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    decode(&bytes, &DecodeOptions::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .text
        .into_owned()
}

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let set = MappingSet::load(&dir).unwrap_or_else(|problems| {
        panic!("shipped mappings have problems: {problems:?}");
    });
    for (name, file) in [
        ("adt_a01", "adt_a01_basic.hl7"),
        ("orm_o01", "orm_o01_nw.hl7"),
    ] {
        let text = fixture(file);
        let message = Message::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        // A benchmark of a message that maps to nothing would measure nothing.
        match set.map(&message) {
            Ok(Mapped::Events(events)) if !events.is_empty() => {}
            other => panic!("{file} does not map to events: {other:?}"),
        }
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(1));
        g.bench_function("map", |b| b.iter(|| set.map(black_box(&message))));
        g.bench_function("parse+map", |b| {
            b.iter(|| {
                let m = Message::parse(black_box(&text)).map_err(|e| e.to_string())?;
                set.map(&m).map_err(|e| e.to_string())
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
