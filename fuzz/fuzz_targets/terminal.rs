#![no_main]
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run terminal` (from `fuzz/`): see the README.

libfuzzer_sys::fuzz_target!(|data: &[u8]| proctor_terminal::fuzzing::screen(data));
