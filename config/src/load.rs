//! Loading: the TOML file, then `REHYDRATOR_<SECTION>__<FIELD>` environment overrides, then
//! validation. Errors name the file and the field.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{ConfigError, FieldError};
use crate::raw::RawConfig;
use crate::settings::Settings;
use crate::validate::validate;

/// Loads `path` with the process environment.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    load_with_env(path, &std::env::vars().collect())
}

/// Loads `path` with `env` standing for the environment (tests pass their own).
pub fn load_with_env(path: &Path, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
    let fail = |errors: Vec<FieldError>| ConfigError {
        file: path.to_owned(),
        errors,
    };
    let whole = |reason: String| {
        fail(vec![FieldError {
            field: String::new(),
            reason,
        }])
    };

    let text = std::fs::read_to_string(path).map_err(|e| whole(format!("cannot read: {e}")))?;
    // Only `SECTION__FIELD` names are overrides; other REHYDRATOR_* variables (the log format,
    // say) are not configuration and must not trip the unknown-field check.
    let overrides: HashMap<String, String> = env
        .iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix("REHYDRATOR_")?;
            rest.contains("__")
                .then(|| (rest.to_ascii_lowercase().replace("__", "."), v.clone()))
        })
        .collect();
    let mut builder = config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml));
    for (key, value) in &overrides {
        builder = builder
            .set_override(key.as_str(), value.as_str())
            .map_err(|e| whole(format!("environment override {key}: {e}")))?;
    }
    let merged = builder.build().map_err(|e| whole(e.to_string()))?;
    let raw: RawConfig = merged.try_deserialize().map_err(|e| match &e {
        config::ConfigError::Type { key: Some(key), .. } => fail(vec![FieldError {
            field: key.clone(),
            reason: e.to_string().replace(&format!(" for key `{key}`"), ""),
        }]),
        _ => fail(vec![serde_error(&e.to_string())]),
    })?;
    validate(raw, env).map_err(fail)
}

/// Turns serde's "unknown field `x`, expected ... for key `section`" into a field error
/// naming `section.x`, so a misspelling is reported like every other field problem.
fn serde_error(message: &str) -> FieldError {
    let (text, key) = match message.rsplit_once(" for key `") {
        Some((text, key)) => (text, key.trim_end_matches('`')),
        None => (message, ""),
    };
    let unknown = text
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'));
    match unknown {
        Some((name, rest)) => FieldError {
            field: if key.is_empty() {
                name.to_owned()
            } else {
                format!("{key}.{name}")
            },
            reason: format!("unknown field{rest}"),
        },
        None => FieldError {
            field: key.to_owned(),
            reason: text.to_owned(),
        },
    }
}
