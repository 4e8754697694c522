//! `pgkeel::fuzzing::frontend`: see src/fuzzing/ for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgkeel::fuzzing::frontend(data));
