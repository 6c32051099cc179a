//! cargo-fuzz target `ecs_json`: see `knit::fuzzing::ecs_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| knit::fuzzing::ecs_json(data));
