//! libFuzzer entry point; the property lives in `fuzz/checks/client_key.rs`.
#![no_main]

#[path = "../checks/client_key.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
