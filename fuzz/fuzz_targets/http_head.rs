//! cargo-fuzz target `http_head`: see `knit::fuzzing::request_head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| knit::fuzzing::request_head(data));
