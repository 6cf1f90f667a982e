//! Parser throughput on the whole well-formed corpus (loaded once), Ferry against hl7-parser 0.3.
//!
//! "parse" measures parsing alone; "parse+query" also reads a few paths per message, as the ingest pipeline
//! does for header validation and routing. Throughput is in bytes of message text.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry::hl7::{DecodeOptions, Message, Path as HlPath, decode};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if p.file_name().is_none_or(|n| n != "_raw_odd") {
                files(&p, out);
            }
        } else if p.extension().is_some_and(|e| e == "hl7") {
            out.push(p);
        }
    }
}

fn load() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/hl7v2");
    let mut paths = Vec::new();
    files(&dir, &mut paths);
    paths
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|b| {
            decode(&b, &DecodeOptions::default())
                .ok()
                .map(|d| d.text.into_owned())
        })
        .collect()
}

const QUERIES: [&str; 5] = ["MSH.9.1", "MSH.10", "PID.3.1", "PID.5.1", "OBX.5"];

fn bench(c: &mut Criterion) {
    let corpus = load();
    if corpus.is_empty() {
        println!("corpus folder is absent: skipping the parse benchmarks");
        return;
    }
    let bytes: usize = corpus.iter().map(String::len).sum();
    println!("corpus: {} messages, {bytes} bytes", corpus.len());

    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("ferry", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &corpus {
                if let Ok(msg) = Message::parse(black_box(m)) {
                    n += msg.segment_count();
                }
            }
            n
        })
    });
    g.bench_function("hl7-parser", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &corpus {
                if let Ok(msg) = hl7_parser::Message::parse(black_box(m)) {
                    n += msg.segments.len();
                }
            }
            n
        })
    });
    g.finish();

    let paths: Vec<HlPath> = QUERIES.iter().filter_map(|q| q.parse().ok()).collect();
    let mut g = c.benchmark_group("parse+query");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("ferry", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &corpus {
                if let Ok(msg) = Message::parse(black_box(m)) {
                    for p in &paths {
                        n += msg.get(p).map_or(0, |v| v.decoded().len());
                    }
                }
            }
            n
        })
    });
    g.bench_function("hl7-parser", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &corpus {
                if let Ok(msg) = hl7_parser::Message::parse(black_box(m)) {
                    for q in QUERIES {
                        n += msg.query(q).map_or(0, |v| v.raw_value().len());
                    }
                }
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
