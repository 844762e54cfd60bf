//! The configuration loader on any text: it never panics, and a refusal names the file and
//! says why for each field it refuses. A file it takes renders back to TOML.
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    match rehydrator_config::load_text(path, text, &HashMap::new()) {
        Ok(settings) => {
            let toml = settings.to_toml();
            assert!(!toml.starts_with("# cannot render"), "{toml}");
        }
        Err(e) => {
            assert_eq!(e.file, path);
            assert!(!e.errors.is_empty(), "a refusal without a reason");
            for field in &e.errors {
                assert!(!field.reason.trim().is_empty(), "{field:?}");
            }
        }
    }
});
