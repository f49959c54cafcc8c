//! The config parser on arbitrary text: it must answer Ok or located errors, never panic,
//! and every error must name a line and column inside the text.
//!
//! Shared by the libFuzzer target (`fuzz/fuzz_targets/config.rs`) and the bounded smoke
//! run in `cargo test` (`tests/fuzz.rs`).

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match tollgate::config::parse(text, "fuzz.yaml") {
        Ok(loaded) => {
            // A valid config survives the admin API's redacted view.
            let _ = tollgate::admin::config_view::redacted_json(&loaded.config);
        }
        Err(tollgate::config::LoadError::Invalid(errors)) => {
            assert!(!errors.is_empty(), "an invalid config with no error");
            // YAML breaks lines at \n, \r\n, a lone \r and (YAML 1.1) NEL, LS and PS.
            let lines = text
                .replace("\r\n", "\n")
                .replace(['\r', '\u{85}', '\u{2028}', '\u{2029}'], "\n")
                .lines()
                .count()
                .max(1);
            for e in errors {
                assert!(e.position.line >= 1 && e.position.column >= 1, "{e}");
                assert!(
                    e.position.line <= lines + 1,
                    "line {} of {lines}: {e}",
                    e.position.line
                );
            }
        }
        Err(other) => panic!("parse gave a non-validation error: {other}"),
    }
}
