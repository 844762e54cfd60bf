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
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        errors: vec![FieldError {
            field: String::new(),
            reason: format!("cannot read: {e}"),
        }],
    })?;
    load_text(path, &text, env)
}

/// Loads `text` as the file `path` holds (errors name `path`), with `env` as the environment.
pub fn load_text(
    path: &Path,
    text: &str,
    env: &HashMap<String, String>,
) -> Result<Settings, ConfigError> {
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
        .add_source(config::File::from_str(text, config::FileFormat::Toml));
    for (key, value) in &overrides {
        builder = builder
            .set_override(key.as_str(), value.as_str())
            .map_err(|e| whole(format!("environment override {key}: {e}")))?;
    }
    let merged = builder.build().map_err(|e| whole(e.to_string()))?;
    // Serde stops at the first field it cannot take. So each one it refuses is reported and
    // taken out, and the rest read again, until it reads: a file with a typo, an unknown field
    // and two rule errors is reported in one pass, not four.
    let mut root = merged.cache;
    let mut refused: Vec<FieldError> = Vec::new();
    let raw = loop {
        match root.clone().try_deserialize::<RawConfig>() {
            Ok(raw) => break raw,
            Err(e) => {
                let error = structural_error(&e);
                let removed = refused.len() < MAX_STRUCTURAL && remove(&mut root, &error.field);
                refused.push(error);
                if !removed {
                    return Err(fail(refused));
                }
            }
        }
    };
    match validate(raw, env) {
        Ok(settings) if refused.is_empty() => Ok(settings),
        Ok(_) => Err(fail(refused)),
        Err(rules) => {
            // A field taken out reads as missing: its "is required" is not news.
            let taken: Vec<String> = refused.iter().map(|r| r.field.clone()).collect();
            refused.extend(
                rules
                    .into_iter()
                    .filter(|e| e.field.is_empty() || !taken.contains(&e.field)),
            );
            Err(fail(refused))
        }
    }
}

/// The most fields refused before giving up on reading the rest (a file of garbage).
const MAX_STRUCTURAL: usize = 50;

/// A deserialization error as a field error naming the field.
fn structural_error(e: &config::ConfigError) -> FieldError {
    match e {
        config::ConfigError::Type { key: Some(key), .. } => FieldError {
            field: key.clone(),
            reason: e.to_string().replace(&format!(" for key `{key}`"), ""),
        },
        _ => serde_error(&e.to_string()),
    }
}

/// Takes the value at `path` (`a.b`, `watch[1].type`) out of `root`; false if there is none.
fn remove(root: &mut config::Value, path: &str) -> bool {
    let mut steps: Vec<Step> = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            steps.push(Step::Key(name.to_owned()));
        }
        while let Some((index, after)) = rest.split_once(']') {
            match index.parse() {
                Ok(i) => steps.push(Step::Index(i)),
                Err(_) => return false,
            }
            rest = after.trim_start_matches('[');
        }
    }
    let Some((last, parents)) = steps.split_last() else {
        return false;
    };
    let mut at = root;
    for step in parents {
        let next = match (step, &mut at.kind) {
            (Step::Key(k), config::ValueKind::Table(t)) => t.get_mut(k),
            (Step::Index(i), config::ValueKind::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => at = n,
            None => return false,
        }
    }
    match (last, &mut at.kind) {
        (Step::Key(k), config::ValueKind::Table(t)) => t.remove(k).is_some(),
        (Step::Index(i), config::ValueKind::Array(a)) if *i < a.len() => {
            // An element cannot go without renumbering the rest: it is emptied instead.
            a[*i] = config::Value::new(None, config::ValueKind::Table(Default::default()));
            true
        }
        _ => false,
    }
}

enum Step {
    Key(String),
    Index(usize),
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
        Some((name, rest)) => {
            let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
            let hint = crate::suggest::did_you_mean(name, &expected)
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            FieldError {
                field: if key.is_empty() {
                    name.to_owned()
                } else {
                    format!("{key}.{name}")
                },
                reason: format!("unknown field{rest}{hint}"),
            }
        }
        None => FieldError {
            field: key.to_owned(),
            reason: text.to_owned(),
        },
    }
}
