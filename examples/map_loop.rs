fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let set = ferry::mapping::MappingSet::load(&dir).unwrap();
    let name = std::env::args().nth(1).unwrap_or("adt_a01_basic.hl7".into());
    let n: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(10000);
    let bytes = std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hl7v2").join(name)).unwrap();
    let text = ferry::hl7::decode(&bytes, &Default::default()).unwrap().text.into_owned();
    let msg = ferry::hl7::Message::parse(&text).unwrap();
    let t = std::time::Instant::now();
    let mut k = 0;
    for _ in 0..n {
        if let Ok(ferry::mapping::Mapped::Events(e)) = set.map(std::hint::black_box(&msg)) { k += e.len(); }
    }
    eprintln!("{k} events, {:.2} us/map", t.elapsed().as_secs_f64() * 1e6 / n as f64);
}
