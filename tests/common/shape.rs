//! Compares the JSON shape of a simulator response against a sample response from Consul's API
//! docs (tests/fixtures/consul/*.json), so the simulator cannot drift from what a client of real
//! Consul expects: a field's name (case included) and its JSON type must match.
//!
//! Rules (fixture side):
//! - every field the fixture has must be in the response, with the same JSON type
//!   (number/string/bool/object/array); `null` in the fixture accepts anything;
//! - an array's first fixture element is the shape of every response element (an empty fixture
//!   array accepts any elements);
//! - a response field the fixture lacks is an error (a simulator inventing fields is a fidelity
//!   bug), unless the per-fixture rules in tests/fixtures/consul/rules.json allow it.
//!
//! `rules.json` maps a fixture file name to [`Rules`]. Paths are written `$` (the root), `.Name`
//! (a field), `[]` (any array element) and `{}` (any value of a map), e.g. `$.Servers{}.Meta`.

use std::collections::HashSet;
use std::path::PathBuf;

use serde_json::Value;

/// Per-fixture exceptions, as listed in tests/fixtures/consul/rules.json.
#[derive(Debug, Default, Clone)]
pub struct Rules {
    /// Objects keyed by IDs or names: each value is checked against the fixture's largest value
    /// (an empty fixture map accepts any values), and the keys themselves are free.
    pub maps: HashSet<String>,
    /// Fields real Consul omits when empty (Go's `json:",omitempty"`).
    pub optional: HashSet<String>,
    /// Fields real Consul may send as `null` though the sample shows a value.
    pub nullable: HashSet<String>,
    /// Fields real Consul may send that the sample lacks; `<object path>.*` allows any.
    pub extra: HashSet<String>,
}

impl Rules {
    /// The rules of one fixture from a rules.json object (missing lists are empty).
    pub fn from_json(v: &Value) -> Self {
        let list = |key: &str| -> HashSet<String> {
            v.get(key)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        Self {
            maps: list("maps"),
            optional: list("optional"),
            nullable: list("nullable"),
            extra: list("extra"),
        }
    }
}

/// The JSON type of a value, as messages name it (Go's words, as the simulator uses them).
fn kind(v: &Value) -> &'static str {
    rehydrator_sim::go_json::go_kind(v)
}

/// Every shape difference between `fixture` and `actual`, one message each, naming `label`
/// (the endpoint) and the JSON path.
pub fn shape_errors(fixture: &Value, actual: &Value, label: &str, rules: &Rules) -> Vec<String> {
    let mut errors = Vec::new();
    walk(fixture, actual, "$", "$", rules, &mut errors);
    errors
        .into_iter()
        .map(|e| format!("{label}: {e}"))
        .collect()
}

/// `rule` is the canonical path the rules use (`[]`, `{}`); `shown` names the actual element.
fn walk(fx: &Value, act: &Value, rule: &str, shown: &str, rules: &Rules, errors: &mut Vec<String>) {
    if fx.is_null() {
        return;
    }
    if act.is_null() {
        if !rules.nullable.contains(rule) {
            errors.push(format!("{shown}: expected {}, got null", kind(fx)));
        }
        return;
    }
    if kind(fx) != kind(act) {
        errors.push(format!(
            "{shown}: expected {}, got {} ({act})",
            kind(fx),
            kind(act)
        ));
        return;
    }
    match (fx, act) {
        (Value::Array(fa), Value::Array(aa)) => {
            if let Some(template) = fa.first() {
                let rule = format!("{rule}[]");
                for (i, av) in aa.iter().enumerate() {
                    walk(template, av, &rule, &format!("{shown}[{i}]"), rules, errors);
                }
            }
        }
        (Value::Object(fo), Value::Object(ao)) if rules.maps.contains(rule) => {
            // The richest value is the best template (an empty list says little).
            let template = fo.values().max_by_key(|v| v.to_string().len());
            if let Some(template) = template {
                let rule = format!("{rule}{{}}");
                for (k, av) in ao {
                    walk(
                        template,
                        av,
                        &rule,
                        &format!("{shown}[{k:?}]"),
                        rules,
                        errors,
                    );
                }
            }
        }
        (Value::Object(fo), Value::Object(ao)) => {
            for (k, fv) in fo {
                let field_rule = format!("{rule}.{k}");
                let field_shown = format!("{shown}.{k}");
                match ao.get(k) {
                    Some(av) => walk(fv, av, &field_rule, &field_shown, rules, errors),
                    None if rules.optional.contains(&field_rule) => {}
                    None => {
                        let casing = ao.keys().find(|a| a.eq_ignore_ascii_case(k));
                        match casing {
                            Some(a) => errors.push(format!(
                                "{field_shown}: missing (wrong casing: response has {a:?})"
                            )),
                            None => errors.push(format!("{field_shown}: missing")),
                        }
                    }
                }
            }
            for (k, av) in ao {
                if fo.contains_key(k)
                    || rules.extra.contains(&format!("{rule}.{k}"))
                    || rules.extra.contains(&format!("{rule}.*"))
                {
                    continue;
                }
                // A casing mismatch was already reported as a missing field.
                if fo.keys().any(|f| f.eq_ignore_ascii_case(k)) {
                    continue;
                }
                errors.push(format!(
                    "{shown}.{k}: unexpected field (not in Consul's response), value {av}"
                ));
            }
        }
        _ => {}
    }
}

/// Panics with every difference if `actual` does not have `fixture`'s shape (strict: no rules).
pub fn assert_shape(fixture: &Value, actual: &Value, path: &str) {
    assert_shape_with(fixture, actual, path, &Rules::default());
}

/// Panics with every difference if `actual` does not have `fixture`'s shape under `rules`.
pub fn assert_shape_with(fixture: &Value, actual: &Value, path: &str, rules: &Rules) {
    let errors = shape_errors(fixture, actual, path, rules);
    assert!(
        errors.is_empty(),
        "response shape differs from Consul's ({} difference(s)):\n  {}\nresponse: {actual}",
        errors.len(),
        errors.join("\n  ")
    );
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/consul")
}

/// A fixture file (`name` like "kv_get.json") and its rules from rules.json.
pub fn fixture(name: &str) -> (Value, Rules) {
    let dir = fixtures_dir();
    let read = |file: &str| -> Value {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("fixture {} is not JSON: {e}", path.display()))
    };
    let all_rules = read("rules.json");
    let rules = all_rules
        .get(name)
        .map(Rules::from_json)
        .unwrap_or_default();
    (read(name), rules)
}

/// Asserts `actual`, the response of `endpoint`, has the shape of fixture `name`.
pub fn assert_fixture(name: &str, actual: &Value, endpoint: &str) {
    let (fx, rules) = fixture(name);
    assert_shape_with(&fx, actual, &format!("{endpoint} (fixture {name})"), &rules);
}
