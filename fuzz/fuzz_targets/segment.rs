//! Fuzz target: `walsink::fuzzing::segment` on arbitrary bytes (see that function's doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = walsink::fuzzing::segment(data);
});
