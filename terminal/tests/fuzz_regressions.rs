//! What the fuzzer found in terminal screens, replayed in every test run,
//! and a short deterministic run of the entry point on generated input
//! (the coverage-guided runs live in `fuzz/`; see the README's "Fuzzing").

use std::path::Path;

use proctor_terminal::fuzzing;
use rand::{Rng, SeedableRng};

#[test]
fn inputs_the_fuzzer_found_stay_fixed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/terminal");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        println!("{}", path.display());
        fuzzing::screen(&std::fs::read(&path).unwrap());
        replayed += 1;
    }
    assert!(replayed > 0, "no regression inputs under {}", dir.display());
}

#[test]
fn the_entry_point_holds_on_generated_input() {
    const PIECES: [&[u8]; 14] = [
        b"\x1b[?1049h",
        b"\x1b[?1049l",
        b"\x1b[2;5r",
        b"\x1b7",
        b"\x1b8",
        b"\x1b[31;1m",
        b"\x1b[H\x1b[2J",
        b"\xff\xfe\x05\x10",
        b"\xff\xfd",
        "日本".as_bytes(),
        b"\r\n",
        b"lorem ipsum ",
        b"\x1b]0;title\x07",
        b"\x1bM",
    ];
    for case in 0..300u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(case);
        let mut input = vec![rng.random_range(0..30u8), rng.random_range(0..90u8)];
        for _ in 0..rng.random_range(1..60) {
            if rng.random_range(0..5) == 0 {
                input.push(rng.random());
            } else {
                input.extend_from_slice(PIECES[rng.random_range(0..PIECES.len())]);
            }
        }
        fuzzing::screen(&input);
    }
}
