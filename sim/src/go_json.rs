//! Go's `encoding/json` as Consul's handlers meet bad input: the words of its errors, so the
//! simulator's 400s read as Consul's do. A leaf: the tables' decoders and the HTTP layer both
//! use it.

use serde_json::Value;

/// A serde_json error in the words of Go's `encoding/json`, for the syntax errors clients
/// actually hit: a truncated body is "unexpected EOF", a stray byte "invalid character 'x' ...".
/// Type errors keep serde's wording (Go's names Go types the simulator does not have).
pub fn go_json_error(e: &serde_json::Error, body: &[u8]) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => "unexpected EOF".into(),
        Category::Syntax => {
            // serde reports 1-based line and column of the offending byte.
            let offset = body
                .split(|b| *b == b'\n')
                .take(e.line().saturating_sub(1))
                .map(|l| l.len() + 1)
                .sum::<usize>()
                + e.column().saturating_sub(1);
            let context = if e.to_string().starts_with("trailing characters") {
                "after top-level value"
            } else {
                "looking for beginning of value"
            };
            match body.get(offset) {
                Some(b) => format!("invalid character {} {context}", go_char(*b)),
                None => "unexpected EOF".into(),
            }
        }
        Category::Data | Category::Io => e.to_string(),
    }
}

/// A byte quoted as Go's JSON scanner quotes it in errors.
fn go_char(b: u8) -> String {
    match b {
        b'\'' => "'\\''".into(),
        b'"' => "'\"'".into(),
        0x20..=0x7e => format!("'{}'", b as char),
        _ => format!("'\\x{b:02x}'"),
    }
}

/// The JSON kind as Go's `UnmarshalTypeError` names it.
pub fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
