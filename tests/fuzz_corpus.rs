//! Stable-toolchain coverage of the fuzz targets: replays every seed
//! (`fuzz/seeds/<target>/`) and saved corpus file (`fuzz/corpus/<target>/`) through the
//! same function the target calls, then runs a
//! seeded mutation pass (bit flips, truncations, overwrites, splices) over the seeds, so
//! CI exercises the decoders on damaged input without nightly or libFuzzer.
//!
//! Rerun a failure with `WALSINK_SEED=<seed> cargo test --test fuzz_corpus`; raise the
//! mutation count with `WALSINK_FUZZ_MUTATIONS`.

mod common;

use common::Rng;
use std::path::Path;

/// Every file of `fuzz/seeds/<target>/` (named seeds from real WALs, never minimized)
/// and `fuzz/corpus/<target>/` (what the fuzzer found, minimized with `cargo fuzz cmin`).
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for kind in ["seeds", "corpus"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            if let Ok(bytes) = std::fs::read(e.path()) {
                files.push((e.file_name().to_string_lossy().into_owned(), bytes));
            }
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no seeds or corpus for {target}");
    files
}

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => b.truncate(rng.below(b.len() + 1)),
            2 if !b.is_empty() => {
                let i = rng.below(b.len());
                let n = rng.below(16).min(b.len() - i);
                for x in &mut b[i..i + n] {
                    *x = rng.next() as u8;
                }
            }
            3 => {
                let at = rng.below(b.len() + 1);
                let from = rng.below(other.len() + 1);
                let n = rng.below(64).min(other.len() - from);
                b.splice(at..at, other[from..from + n].iter().copied());
            }
            _ if !b.is_empty() => {
                // Plausible-looking lengths are the decoders' hardest case.
                let i = rng.below(b.len());
                let n = 4.min(b.len() - i);
                let v = (rng.next() as u32).to_le_bytes();
                b[i..i + n].copy_from_slice(&v[..n]);
            }
            _ => {}
        }
    }
    b
}

fn seed() -> u64 {
    common::seed_or(0xF0221)
}

fn mutations() -> usize {
    std::env::var("WALSINK_FUZZ_MUTATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500)
}

fn run(target: &str, f: fn(&[u8])) {
    let files = corpus(target);
    for (_, bytes) in &files {
        f(bytes);
    }
    let seed = seed();
    eprintln!(
        "{target}: {} corpus files replayed; {} mutations from seed {seed} (rerun: WALSINK_SEED={seed} cargo test --test fuzz_corpus)",
        files.len(),
        mutations()
    );
    let mut rng = Rng(seed);
    for _ in 0..mutations() {
        let a = &files[rng.below(files.len())].1;
        let b = &files[rng.below(files.len())].1;
        let input = mutate(&mut rng, a, b);
        f(&input);
    }
}

#[test]
fn segment_corpus_and_mutations_never_panic() {
    run("segment", |b| {
        let _ = walsink::fuzzing::segment(b);
    });
}

#[test]
fn register_corpus_and_mutations_never_panic() {
    run("register", |b| {
        let _ = walsink::fuzzing::register(b);
    });
}

#[test]
fn directory_corpus_and_mutations_never_panic() {
    run("directory", |b| {
        let _ = walsink::fuzzing::directory(b);
    });
}

/// The tool's read path (the view, every segment, the registers, the dead letters)
/// over the directory corpus and its mutations: it never panics and never writes.
#[test]
fn view_over_the_directory_corpus_and_mutations_never_panics_or_writes() {
    run("directory", |b| {
        let _ = walsink::fuzzing::view(b);
    });
    run("view", |b| {
        let _ = walsink::fuzzing::view(b);
    });
}

/// The named seeds (from `fuzz/tools/fuzz_seeds.rs`) are real WALs: they must open and
/// read back every record. Inputs the fuzzer added may be refused; they only must not
/// panic (checked above).
#[test]
fn directory_seeds_open_and_read_back() {
    let files = corpus("directory");
    for (name, want) in [("delivered", 0), ("backlog", 600), ("large", 2)] {
        let bytes = &files
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("seed {name} missing"))
            .1;
        let n = walsink::fuzzing::directory(bytes)
            .unwrap_or_else(|| panic!("seed {name} did not open"));
        assert_eq!(n, want, "seed {name}");
    }
}
