#![no_main]
// See sca_dispatch::fuzzing::answers for what it checks.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sca_dispatch::fuzzing::answers(data));
