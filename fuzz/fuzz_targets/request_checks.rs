//! libFuzzer entry point; the property lives in `fuzz/checks/request_checks.rs`.
#![no_main]

#[path = "../checks/request_checks.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
