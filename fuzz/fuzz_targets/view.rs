//! Fuzz target: `walsink::fuzzing::view` (the `walsink` tool's read path) on arbitrary
//! bytes, packed as a directory like the `directory` target's inputs (its corpus
//! serves both).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = walsink::fuzzing::view(data);
});
