//! Fuzz target: `walsink::fuzzing::register` on arbitrary bytes (see that function's doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = walsink::fuzzing::register(data);
});
