//! Fuzz target: the configuration loader: a file and environment variables (`scenewatch::fuzzing::config_sources`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scenewatch::fuzzing::config_sources(data);
});
