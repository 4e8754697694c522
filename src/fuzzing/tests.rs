//! The stable harness: every target over its whole seed corpus
//! (`fuzz/corpus/<target>/`), then a fixed number of deterministic
//! mutations of it, so CI fuzzes on stable without libFuzzer. A crash found
//! by either becomes a file in the corpus and a named test below.

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::TARGETS;

/// Mutated inputs per target (five targets: 20,000 in all), unless
/// `PGKEEL_FUZZ_MUTATIONS` asks for more (a longer run by hand).
const MUTATIONS_PER_TARGET: usize = 4_000;

fn mutations() -> usize {
    std::env::var("PGKEEL_FUZZ_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MUTATIONS_PER_TARGET)
}

/// `PGKEEL_FUZZ_SEED` picks another fixed seed for a run by hand.
fn seed() -> u64 {
    std::env::var("PGKEEL_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SEED)
}

/// Fixed, so a failure reproduces; the failing input is printed.
const SEED: u64 = 0x7067_6b65_656c;

/// Inputs stay small, as libFuzzer's default `-max_len` keeps them.
const MAX_INPUT: usize = 4096;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("a corpus file"))
        .collect()
}

/// One mutation of a corpus input, in the ways libFuzzer mutates: flip,
/// set, insert or erase bytes, splice another input in, or interesting
/// lengths written over four bytes.
fn mutate(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[rng.random_range(0..seeds.len())].clone();
    for _ in 0..rng.random_range(1..=8) {
        let at = if v.is_empty() {
            0
        } else {
            rng.random_range(0..v.len())
        };
        match rng.random_range(0..7) {
            0 if !v.is_empty() => v[at] ^= 1 << rng.random_range(0..8),
            1 if !v.is_empty() => v[at] = rng.random(),
            2 => v.insert(at, rng.random()),
            3 if !v.is_empty() => {
                let n = rng.random_range(1..=(v.len() - at).min(16));
                v.drain(at..at + n);
            }
            4 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                if !other.is_empty() {
                    let from = rng.random_range(0..other.len());
                    let to = rng.random_range(from..=other.len());
                    v.splice(at..at, other[from..to].iter().copied());
                }
            }
            5 if v.len() >= at + 4 => {
                let n: i32 = *[
                    0,
                    1,
                    3,
                    4,
                    5,
                    8,
                    0x7fff_ffff,
                    -1,
                    i32::MIN,
                    10_000,
                    10_001,
                    65,
                ]
                .get(rng.random_range(0..12))
                .expect("in range");
                v[at..at + 4].copy_from_slice(&n.to_be_bytes());
            }
            _ => {
                let n = rng.random_range(0..32);
                v.extend((0..n).map(|_| rng.random::<u8>()));
            }
        }
    }
    v.truncate(MAX_INPUT);
    v
}

fn run(name: &str, f: fn(&[u8]), input: &[u8]) {
    if std::panic::catch_unwind(|| f(input)).is_err() {
        panic!("target {name} failed on input {input:?}");
    }
}

#[test]
fn every_target_runs_its_corpus_and_mutations() {
    for &(name, f) in TARGETS {
        let seeds = corpus(name);
        assert!(seeds.len() >= 5, "{name}: a corpus of a few files at least");
        for input in &seeds {
            run(name, f, input);
        }
        let mut rng = StdRng::seed_from_u64(seed());
        for _ in 0..mutations() {
            let input = mutate(&mut rng, &seeds);
            run(name, f, &input);
        }
        // And plain noise, which no corpus file resembles.
        for _ in 0..mutations() / 8 {
            let n = rng.random_range(0..256);
            let input: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            run(name, f, &input);
        }
    }
}

#[test]
fn every_target_has_a_corpus() {
    for &(name, _) in TARGETS {
        assert!(!corpus(name).is_empty(), "{name}");
    }
}
