#![no_main]
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run protocol` (from `fuzz/`): see the README.

libfuzzer_sys::fuzz_target!(|data: &[u8]| proctor_postgres::fuzzing::protocol(data));
