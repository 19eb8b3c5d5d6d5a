//! What the fuzzers found, replayed in every test run, and a short
//! deterministic run of each fuzz entry point on generated input (the
//! coverage-guided runs live in `fuzz/`; see the README's "Fuzzing").
//!
//! `fuzz/regressions/TARGET/` holds inputs that once broke TARGET (a crash
//! or a broken invariant), each kept as a test after its fix.

use std::path::Path;

use proctor_postgres::fuzzing;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 3] =
    [("classifier", fuzzing::classifier), ("masking", fuzzing::masking), ("protocol", fuzzing::protocol)];

#[test]
fn inputs_the_fuzzers_found_stay_fixed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                continue;
            }
            let input = std::fs::read(&path).unwrap();
            println!("{name}: {}", path.display());
            target(&input);
            replayed += 1;
        }
    }
    println!("{replayed} inputs replayed");
    assert!(replayed > 0, "no regression inputs under {}", root.display());
}

/// Fragments the generated inputs are made of: SQL and protocol pieces
/// the decoders care about, and noise.
const FRAGMENTS: &[&[u8]] = &[
    b"select 1",
    b"delete from t where id = id",
    b"--\r; drop table t",
    b"/* /* */ */",
    b"'a''b'",
    b"E'\\''",
    b"$$x$$",
    b"$1",
    b"explain (analyze 'on') ",
    b"copy t to '/tmp/x'",
    b"merge into m using s on true when matched then delete",
    b"\x01",
    b"4539148803436467",
    b"AKIAIOSFODNN7EXAMPLE",
    b"-----BEGIN PRIVATE KEY-----",
    b"eyJhbGciOiJIUzI1NiJ9.eyJ4IjoxfQ.c2ln",
    b"ada@example.com",
    b"DE89370400440532013000",
    b"postgres://u:secret@h/db",
    b"\xff\xfe",
    b"\0",
    b"Q",
    b"P",
    b"B",
    b"E",
    b"D",
    b"T",
    b"C",
    b"Z",
];

#[test]
fn fuzz_entry_points_hold_on_generated_input() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xf022);
    for round in 0..3_000 {
        let mut input = Vec::new();
        for _ in 0..rng.random_range(1..12) {
            if rng.random_bool(0.7) {
                input.extend_from_slice(FRAGMENTS[rng.random_range(0..FRAGMENTS.len())]);
            } else {
                let noise: [u8; 4] = rng.random();
                input.extend_from_slice(&noise[..rng.random_range(0..4)]);
            }
        }
        let (_, target) = TARGETS[round % TARGETS.len()];
        target(&input);
    }
}
