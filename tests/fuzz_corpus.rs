//! Stable-toolchain coverage of the fuzz targets: replays every saved corpus file
//! (`fuzz/corpus/<target>/`) through the same function the target calls, then runs a
//! seeded mutation pass (bit flips, truncations, overwrites, splices) over the seeds, so
//! CI exercises the decoders on damaged input without nightly or libFuzzer.
//!
//! Rerun a failure with `WALSINK_SEED=<seed> cargo test --test fuzz_corpus`; raise the
//! mutation count with `WALSINK_FUZZ_MUTATIONS`.

use std::path::Path;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            Some((
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).ok()?,
            ))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus for {target}");
    files
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
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
    std::env::var("WALSINK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xF0221)
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

/// The unmodified seeds are real WALs: they must open and read back every record.
#[test]
fn directory_seeds_open_and_read_back() {
    for (name, bytes) in corpus("directory") {
        let n = walsink::fuzzing::directory(&bytes)
            .unwrap_or_else(|| panic!("seed {name} did not open"));
        match name.as_str() {
            "delivered" => assert_eq!(n, 0, "delivered records are not replayed"),
            "backlog" => assert_eq!(n, 600),
            "large" => assert_eq!(n, 2),
            _ => {}
        }
    }
}
