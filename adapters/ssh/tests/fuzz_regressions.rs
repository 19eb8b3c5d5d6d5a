//! What the fuzzer found in SFTP channels, replayed in every test run (the
//! coverage-guided runs live in `fuzz/`; see the README's "Fuzzing"; a
//! generated run of the same entry point is among the unit tests).

use std::path::Path;

#[test]
fn inputs_the_fuzzer_found_stay_fixed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/sftp");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        println!("{}", path.display());
        proctor_ssh::sftp::fuzzing::channel_masked_by_all(&std::fs::read(&path).unwrap());
        replayed += 1;
    }
    assert!(replayed > 0, "no regression inputs under {}", dir.display());
}
