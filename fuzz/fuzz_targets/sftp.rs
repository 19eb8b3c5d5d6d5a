#![no_main]
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run sftp` (from `fuzz/`): see the README.

libfuzzer_sys::fuzz_target!(|data: &[u8]| proctor_ssh::sftp::fuzzing::channel_masked_by_all(data));
