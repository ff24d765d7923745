//! Fuzz target: one HTTP answer of the Media Intelligence API: classification, the models, the envelope of a result (`scenewatch::fuzzing::ncp_answer`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    scenewatch::fuzzing::ncp_answer(data);
});
