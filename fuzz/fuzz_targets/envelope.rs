//! Fuzz target: the CloudEvents envelope writer and reader (`scenewatch::fuzzing::envelope`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scenewatch::fuzzing::envelope(data);
});
