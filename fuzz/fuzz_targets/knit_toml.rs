//! cargo-fuzz target `knit_toml`: see `knit::fuzzing::knit_toml`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| knit::fuzzing::knit_toml(data));
