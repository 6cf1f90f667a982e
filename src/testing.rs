//! Support shared by unit tests, integration tests and benchmarks: locating the shared corpus.
//!
//! The corpus lives beside the project (`../shared/corpus/`) and is read in place, never copied. In a
//! fresh clone without it the corpus tests say so and skip; with `CI=true` they must run, so a missing
//! corpus is then a failure.

use std::path::{Path, PathBuf};

/// `../shared/corpus` relative to the crate root.
pub fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus")
}

fn ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// A corpus folder, or `None` (after saying so) when the corpus is absent outside CI.
///
/// # Panics
/// When the folder is missing and `CI=true`.
pub fn corpus_dir(relative: &str) -> Option<PathBuf> {
    let dir = corpus_root().join(relative);
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        !ci(),
        "corpus folder {} is missing and CI=true: corpus tests must run in CI",
        dir.display()
    );
    eprintln!("skipping: corpus folder {} is absent", dir.display());
    None
}

/// A corpus file's text, or `None` (after saying so) when absent outside CI.
///
/// # Panics
/// When the file is missing and `CI=true`.
pub fn corpus_file(path: &str) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) => {
            assert!(!ci(), "corpus file {path} unreadable with CI=true: {e}");
            eprintln!("skipping: corpus file {path} is absent ({e})");
            None
        }
    }
}

/// Every file under `dir` (recursively) whose name ends with one of `extensions` (all files when
/// empty), sorted for stable test output.
pub fn files_under(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if extensions.is_empty()
                || extensions.iter().any(|ext| {
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(ext))
                })
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The well-formed HL7 v2 corpus: every `.hl7` file of `hl7v2/` except the byte-exact odd originals
/// in `_raw_odd/`. `None` when the corpus is absent outside CI.
pub fn hl7v2_corpus() -> Option<Vec<PathBuf>> {
    let dir = corpus_dir("hl7v2")?;
    Some(
        files_under(&dir, &[".hl7"])
            .into_iter()
            .filter(|p| !p.components().any(|c| c.as_os_str() == "_raw_odd"))
            .collect(),
    )
}
