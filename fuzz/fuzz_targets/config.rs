//! `config::load_str` on arbitrary text: Ok or Err with positioned errors,
//! never a panic (the fuzzer builds with overflow checks on, so arithmetic on
//! durations and positions is checked too).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The loader reads the files a config names; never let it block on a
    // device or a pipe (an operator's config is trusted, the fuzzer is not).
    if ["/dev", "/proc", "/sys", "fifo"]
        .iter()
        .any(|p| text.contains(p))
    {
        return;
    }
    let base = std::path::Path::new("/nonexistent-authgate-fuzz");
    match authgate::testing::load_str("fuzz.toml", text, base) {
        Ok(_) => {}
        Err(e) => {
            assert!(!e.errors.is_empty(), "Err without any error");
            let lines = text.split('\n').count();
            for err in &e.errors {
                assert!(err.line >= 1 && err.col >= 1, "{err:?}");
                assert!(
                    err.line <= lines.max(1),
                    "{err:?} past the end ({lines} lines)"
                );
            }
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.toml:"), "{shown}");
        }
    }
});
