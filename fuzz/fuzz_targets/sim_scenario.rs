//! Fuzz target: the simulator's scenario parser (`scenewatch::fuzzing::sim_scenario`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scenewatch::fuzzing::sim_scenario(data);
});
