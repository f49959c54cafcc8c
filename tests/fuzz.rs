//! A bounded smoke of every fuzz target's property (fuzz/checks/): the config parser,
//! client-key and header extraction, and the path and framing checks, over their seed
//! corpora and a fixed number of mutations of them. Seconds, not minutes, and no build of
//! its own: the properties compile into this test as plain functions.
//!
//! This is not coverage-guided fuzzing; the long run is its own command (docs/development.md):
//! `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none -O <target>`. What
//! this keeps in `cargo test` is that every property still holds on its seeds and on
//! inputs near them, and that the fuzz targets still compile against the library.
//!
//! The mutations come from a fixed seed, so a failure reproduces; it is saved under
//! target/fuzz-artifacts/<target>/ where `cargo fuzz run <target> <file>` replays it.
//! `TOLLGATE_FUZZ_ITERATIONS` changes the number of mutations per target (default 20000),
//! `TOLLGATE_FUZZ_SEED` the seed.

#[path = "../fuzz/checks/client_key.rs"]
mod client_key;
#[path = "../fuzz/checks/config.rs"]
mod config;
#[path = "../fuzz/checks/request_checks.rs"]
mod request_checks;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 3] = [
    ("config", config::check),
    ("client_key", client_key::check),
    ("request_checks", request_checks::check),
];

/// Fragments the targets' formats are made of, spliced into inputs: a mutation that only
/// flips bytes rarely writes a YAML key or a header separator.
const TOKENS: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b": ",
    b"- ",
    b"  ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"${",
    b"%2e%2e/",
    b"/../",
    b"//",
    b"::ffff:",
    b"for=\"[",
    b"]:80",
    b", ",
    b";",
    b"0",
    b"-1",
    b"18446744073709551616",
    b"\xc3\xa9",
    b"\xff",
    b"\0",
    b"transfer-encoding: chunked",
    b"content-length: ",
    b"limits:",
    b"routes:",
    b"rate: 1/1s",
    b"key: [client_ip]",
];

fn seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("the seed corpus {} is unreadable: {e}", dir.display()))
        .map(|entry| entry.expect("a seed file").path())
        .collect();
    entries.sort();
    let seeds: Vec<Vec<u8>> = entries
        .iter()
        .map(|p| std::fs::read(p).expect("a readable seed"))
        .collect();
    assert!(!seeds.is_empty(), "{} holds no seed", dir.display());
    seeds
}

/// One to four random edits of a seed: byte flips, inserts, deletions, duplicated ranges,
/// tokens, and splices with another seed.
fn mutate(rng: &mut StdRng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = corpus[rng.gen_range(0..corpus.len())].clone();
    for _ in 0..rng.gen_range(1..=4) {
        let at = rng.gen_range(0..=data.len());
        match rng.gen_range(0..6) {
            0 if !data.is_empty() => {
                let i = at.min(data.len() - 1);
                data[i] ^= 1 << rng.gen_range(0..8);
            }
            1 => data.insert(at, rng.gen()),
            2 if at < data.len() => {
                let end = rng.gen_range(at..=data.len().min(at + 16));
                data.drain(at..end);
            }
            3 if at < data.len() => {
                let end = rng.gen_range(at..=data.len().min(at + 32));
                let copy = data[at..end].to_vec();
                data.splice(at..at, copy);
            }
            4 => {
                let token = TOKENS[rng.gen_range(0..TOKENS.len())];
                data.splice(at..at, token.iter().copied());
            }
            _ => {
                let other = &corpus[rng.gen_range(0..corpus.len())];
                let from = rng.gen_range(0..=other.len());
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
        }
    }
    data
}

/// Runs `check` on `data`; a panic comes back as its message, with the input saved.
fn run_one(target: &str, check: Check, data: &[u8]) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| check(data))).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into());
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target/fuzz-artifacts")
            .join(target);
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("crash-{:016x}", fnv(data)));
        let _ = std::fs::write(&file, data);
        format!(
            "{target}: {message}\n  input ({} bytes, saved as {}): {:?}",
            data.len(),
            file.display(),
            String::from_utf8_lossy(data)
        )
    })
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

#[test]
fn every_fuzz_property_holds_on_its_seeds_and_their_mutations() {
    let iterations = env_number("TOLLGATE_FUZZ_ITERATIONS", 20_000);
    let seed = env_number("TOLLGATE_FUZZ_SEED", 0x7011_6a7e);
    // The properties panic on purpose when they fail; keep the test's output to the report.
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut failures = Vec::new();
    for (target, check) in TARGETS {
        let corpus = seeds(&root.join(target));
        let mut rng = StdRng::seed_from_u64(seed);
        let mut failed = corpus
            .iter()
            .filter_map(|input| run_one(target, check, input).err())
            .collect::<Vec<_>>();
        for _ in 0..iterations {
            if failed.len() >= 3 {
                break;
            }
            let input = mutate(&mut rng, &corpus);
            if let Err(e) = run_one(target, check, &input) {
                failed.push(e);
            }
        }
        println!(
            "{target}: {} seeds and {iterations} mutations, {} failure(s)",
            corpus.len(),
            failed.len()
        );
        failures.extend(failed);
    }
    std::panic::set_hook(quiet);
    assert!(
        failures.is_empty(),
        "fuzz properties failed (seed {seed:#x}):\n{}",
        failures.join("\n")
    );
}
