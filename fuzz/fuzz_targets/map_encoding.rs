//! cargo-fuzz target `map_encoding`: see `knit::fuzzing::map_encoding`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| knit::fuzzing::map_encoding(data));
