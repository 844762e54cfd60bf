//! Consul's sessions table (`agent/consul/state/session.go`): sessions with their checks,
//! Behavior, TTL and lock-delay, and a create request as Consul's agent decodes it (Go's JSON
//! rules, its defaults and `fixupEmptySessionChecks`). Plain data; creating, renewing and
//! invalidating, with their timers and the keys a session releases, are `fsm::session`'s.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::go_json::go_kind;

/// Default lock-delay of a new session.
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
/// Consul caps any session's lock-delay at this when it applies it.
pub const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// `session_ttl_min` default and `SessionTTLMax`.
pub const TTL_MIN: Duration = Duration::from_secs(10);
pub const TTL_MAX: Duration = Duration::from_secs(86400);
/// Consul's session timer fires at TTL × 2: a session is never invalidated before its TTL.
pub const TTL_MULTIPLIER: u32 = 2;
/// The agent's serf check, every session's default node check.
pub const SERF_CHECK: &str = "serfHealth";
/// Below this many nanoseconds a numeric LockDelay is taken as seconds (`lockDelayMinThreshold`).
const LOCK_DELAY_MIN_THRESHOLD: i64 = 1000;

/// What happens to a session's locks when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Behavior {
    Release,
    Delete,
}

/// A service check a session is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceCheck {
    #[serde(rename = "ID")]
    pub id: String,
    pub namespace: String,
}

/// One session as Consul's JSON shows it (`structs.Session`): LockDelay in nanoseconds,
/// `Checks` (deprecated) only when set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Session {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub node: String,
    /// Nanoseconds, as Go's `time.Duration` marshals.
    pub lock_delay: i64,
    pub behavior: Behavior,
    #[serde(rename = "TTL")]
    pub ttl: String,
    pub node_checks: Option<Vec<String>>,
    pub service_checks: Option<Vec<ServiceCheck>>,
    /// Go's `omitempty`: absent when nil or empty.
    #[serde(skip_serializing_if = "no_checks")]
    pub checks: Option<Vec<String>>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Session {
    /// Every check the session is bound to, of whatever kind (`Session.CheckIDs`).
    pub fn check_ids(&self) -> impl Iterator<Item = &str> {
        let legacy = self.checks.iter().flatten().map(String::as_str);
        let node = self.node_checks.iter().flatten().map(String::as_str);
        let service = self.service_checks.iter().flatten().map(|c| c.id.as_str());
        legacy.chain(node).chain(service)
    }

    /// The lock-delay to apply on invalidation, if any (negative or zero means none).
    pub fn lock_delay(&self) -> Option<Duration> {
        u64::try_from(self.lock_delay)
            .ok()
            .filter(|ns| *ns > 0)
            .map(Duration::from_nanos)
    }

    /// The TTL the timer runs on, if the session has one.
    pub fn ttl(&self) -> Option<Duration> {
        crate::duration::parse(&self.ttl).filter(|d| !d.is_zero())
    }
}

fn no_checks(c: &Option<Vec<String>>) -> bool {
    c.as_ref().is_none_or(Vec::is_empty)
}

struct Entry {
    session: Session,
    /// Bumped on every renew and destroy so a timer armed before it finds itself stale.
    timer_generation: u64,
}

/// The sessions table.
#[derive(Default)]
pub struct Sessions {
    by_id: BTreeMap<String, Entry>,
    /// The highest index of any create or destroy.
    table_index: u64,
}

impl Sessions {
    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn get(&self, id: &str) -> Option<&Session> {
        self.by_id.get(id).map(|e| &e.session)
    }

    /// Every session, ordered by ID as Consul's table is.
    pub fn list(&self) -> Vec<Session> {
        self.by_id.values().map(|e| e.session.clone()).collect()
    }

    /// The sessions of `node` (matched case-insensitively, as Consul's node index is).
    pub fn for_node(&self, node: &str) -> Vec<Session> {
        self.by_id
            .values()
            .filter(|e| e.session.node.eq_ignore_ascii_case(node))
            .map(|e| e.session.clone())
            .collect()
    }

    /// The index reads of the table answer at (never 0).
    pub fn index(&self) -> u64 {
        self.table_index.max(1)
    }

    /// Adds `session`, created at `idx`.
    pub fn insert(&mut self, idx: u64, mut session: Session) {
        session.create_index = idx;
        session.modify_index = idx;
        self.table_index = self.table_index.max(idx);
        self.by_id.insert(
            session.id.clone(),
            Entry {
                session,
                timer_generation: 0,
            },
        );
    }

    /// Removes the session at `idx`; what it was, if it existed.
    pub fn remove(&mut self, idx: u64, id: &str) -> Option<Session> {
        let e = self.by_id.remove(id)?;
        self.table_index = self.table_index.max(idx);
        Some(e.session)
    }

    /// A new generation for the session's TTL timer: a timer armed for an older one is stale.
    pub fn next_generation(&mut self, id: &str) -> Option<u64> {
        let e = self.by_id.get_mut(id)?;
        e.timer_generation += 1;
        Some(e.timer_generation)
    }

    /// The generation of the session's current TTL timer.
    pub fn generation(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).map(|e| e.timer_generation)
    }

    /// Every session's ID.
    pub fn ids(&self) -> Vec<String> {
        self.by_id.keys().cloned().collect()
    }

    /// The sessions bound to `node`: all of them when `check_id` is None, else those that list
    /// `check_id` among their checks (both matched case-insensitively, as Consul does).
    pub fn bound_to(&self, node: &str, check_id: Option<&str>) -> Vec<String> {
        self.by_id
            .values()
            .filter(|e| e.session.node.eq_ignore_ascii_case(node))
            .filter(|e| match check_id {
                None => true,
                Some(c) => e.session.check_ids().any(|id| id.eq_ignore_ascii_case(c)),
            })
            .map(|e| e.session.id.clone())
            .collect()
    }
}

/// A session/create body as Consul decodes it, before the server's validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub name: String,
    pub node: String,
    pub lock_delay: i64,
    pub behavior: String,
    pub ttl: String,
    pub node_checks: Option<Vec<String>>,
    pub service_checks: Option<Vec<ServiceCheck>>,
    pub checks: Option<Vec<String>>,
}

impl CreateRequest {
    /// The defaults of an empty body: the agent's node, its serf check, release, 15s.
    pub fn defaults(agent_node: &str) -> Self {
        Self {
            name: String::new(),
            node: agent_node.to_owned(),
            lock_delay: DEFAULT_LOCK_DELAY.as_nanos() as i64,
            behavior: "release".into(),
            ttl: String::new(),
            node_checks: Some(vec![SERF_CHECK.into()]),
            service_checks: None,
            checks: Some(vec![SERF_CHECK.into()]),
        }
    }

    /// Decodes `body` over the defaults as Go's `encoding/json` would: field names match
    /// case-insensitively, unknown fields are ignored, null leaves a field alone (a list
    /// becomes nil). Errors are the text after "Request decode failed: ".
    pub fn decode(agent_node: &str, body: &[u8]) -> Result<Self, String> {
        let mut req = Self::defaults(agent_node);
        let value: Value =
            serde_json::from_slice(body).map_err(|e| crate::go_json::go_json_error(&e, body))?;
        let obj = match value {
            Value::Object(obj) => obj,
            Value::Null => return Ok(req.fixup_checks()),
            other => {
                return Err(format!(
                    "json: cannot unmarshal {} into Go value of type structs.Session",
                    go_kind(&other)
                ))
            }
        };
        let mut first_err: Option<String> = None;
        let mut note = |e: String| {
            first_err.get_or_insert(e);
        };
        for (k, v) in &obj {
            match canonical_field(&obj, k) {
                Some("Name") => decode_string(v, "Name", &mut req.name).unwrap_or_else(&mut note),
                Some("Node") => decode_string(v, "Node", &mut req.node).unwrap_or_else(&mut note),
                Some("Behavior") => {
                    decode_string(v, "Behavior", &mut req.behavior).unwrap_or_else(&mut note)
                }
                Some("TTL") => decode_string(v, "TTL", &mut req.ttl).unwrap_or_else(&mut note),
                Some("LockDelay") => req.lock_delay = decode_lock_delay(v, req.lock_delay)?,
                Some("NodeChecks") => {
                    decode_strings(v, "NodeChecks", &mut req.node_checks).unwrap_or_else(&mut note)
                }
                Some("Checks") => {
                    decode_strings(v, "Checks", &mut req.checks).unwrap_or_else(&mut note)
                }
                Some("ServiceChecks") => {
                    decode_service_checks(v, &mut req.service_checks).unwrap_or_else(&mut note)
                }
                _ => {}
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(req.fixup_checks()),
        }
    }

    /// Consul's `fixupEmptySessionChecks`: an empty `Checks` means no node checks at all; the
    /// default `Checks` defers to `NodeChecks`; an empty `NodeChecks` drops the default `Checks`.
    pub fn fixup_checks(mut self) -> Self {
        let checks_len = self.checks.as_ref().map_or(0, Vec::len);
        let only_serf = checks_len == 1
            && self
                .checks
                .as_ref()
                .and_then(|c| c.first())
                .map(String::as_str)
                == Some(SERF_CHECK);
        if checks_len == 0 {
            self.node_checks = Some(Vec::new());
        } else if only_serf || self.node_checks.as_ref().map_or(0, Vec::len) == 0 {
            self.checks = None;
        }
        self
    }
}

/// The field of `structs.Session` a JSON key sets: an exact match wins, else the first
/// case-insensitive one, as in Go.
fn canonical_field(obj: &serde_json::Map<String, Value>, key: &str) -> Option<&'static str> {
    const FIELDS: [&str; 11] = [
        "ID",
        "Name",
        "Node",
        "LockDelay",
        "Behavior",
        "TTL",
        "NodeChecks",
        "ServiceChecks",
        "Checks",
        "CreateIndex",
        "ModifyIndex",
    ];
    let field = FIELDS
        .iter()
        .find(|f| **f == key)
        .or_else(|| FIELDS.iter().find(|f| f.eq_ignore_ascii_case(key)))?;
    // A later exact-case key for the same field takes precedence over this one.
    if *field != key && obj.contains_key(*field) {
        return None;
    }
    Some(field)
}

fn type_error(v: &Value, field: &str, go_type: &str) -> String {
    format!(
        "json: cannot unmarshal {} into Go struct field .{field} of type {go_type}",
        go_kind(v)
    )
}

fn decode_string(v: &Value, field: &str, out: &mut String) -> Result<(), String> {
    match v {
        Value::Null => Ok(()),
        Value::String(s) => {
            *out = s.clone();
            Ok(())
        }
        other => Err(type_error(other, field, "string")),
    }
}

fn decode_strings(v: &Value, field: &str, out: &mut Option<Vec<String>>) -> Result<(), String> {
    match v {
        Value::Null => {
            *out = None;
            Ok(())
        }
        Value::Array(items) => {
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => list.push(s.clone()),
                    Value::Null => list.push(String::new()),
                    other => return Err(type_error(other, field, "string")),
                }
            }
            *out = Some(list);
            Ok(())
        }
        other => Err(type_error(other, field, "[]string")),
    }
}

fn decode_service_checks(v: &Value, out: &mut Option<Vec<ServiceCheck>>) -> Result<(), String> {
    let items = match v {
        Value::Null => {
            *out = None;
            return Ok(());
        }
        Value::Array(items) => items,
        other => return Err(type_error(other, "ServiceChecks", "[]structs.ServiceCheck")),
    };
    let mut list = Vec::with_capacity(items.len());
    for item in items {
        let mut check = ServiceCheck {
            id: String::new(),
            namespace: String::new(),
        };
        match item {
            Value::Object(obj) => {
                for (k, v) in obj {
                    if k.eq_ignore_ascii_case("ID") {
                        decode_string(v, "ServiceChecks.ID", &mut check.id)?;
                    } else if k.eq_ignore_ascii_case("Namespace") {
                        decode_string(v, "ServiceChecks.Namespace", &mut check.namespace)?;
                    }
                }
            }
            Value::Null => {}
            other => return Err(type_error(other, "ServiceChecks", "structs.ServiceCheck")),
        }
        list.push(check);
    }
    *out = Some(list);
    Ok(())
}

/// LockDelay takes a Go duration string or a number of nanoseconds; anything under 1000ns is
/// read as seconds (users send `15` meaning 15s). Other JSON types count as zero.
fn decode_lock_delay(v: &Value, current: i64) -> Result<i64, String> {
    let ns = match v {
        Value::Null => return Ok(current),
        Value::String(s) => crate::duration::parse_signed(s)?,
        // Go converts the float64 to a Duration, truncating toward zero.
        Value::Number(n) => n.as_f64().map_or(0, |f| f as i64),
        _ => 0,
    };
    Ok(if ns < LOCK_DELAY_MIN_THRESHOLD {
        ns.saturating_mul(1_000_000_000)
    } else {
        ns
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_body_defaults() {
        let r = CreateRequest::defaults("agent").fixup_checks();
        assert_eq!(r.node, "agent");
        assert_eq!(r.node_checks, Some(vec![SERF_CHECK.to_string()]));
        assert_eq!(r.checks, None);
        assert_eq!(r.lock_delay, 15_000_000_000);
        assert_eq!(r.behavior, "release");
    }

    #[test]
    fn decode_is_case_insensitive_and_reads_lock_delay_like_consul() {
        let r = CreateRequest::decode("a", br#"{"name":"x","ttl":"10s","LockDelay":"5s"}"#);
        assert_eq!(
            r.as_ref()
                .map(|r| (r.name.as_str(), r.ttl.as_str(), r.lock_delay)),
            Ok(("x", "10s", 5_000_000_000))
        );
        let secs = CreateRequest::decode("a", br#"{"LockDelay":15}"#).map(|r| r.lock_delay);
        assert_eq!(secs, Ok(15_000_000_000), "small numbers are seconds");
        let ns = CreateRequest::decode("a", br#"{"LockDelay":2000000000}"#).map(|r| r.lock_delay);
        assert_eq!(ns, Ok(2_000_000_000));
        let zero = CreateRequest::decode("a", br#"{"LockDelay":"0s"}"#).map(|r| r.lock_delay);
        assert_eq!(zero, Ok(0));
        let bad = CreateRequest::decode("a", br#"{"LockDelay":"abc"}"#);
        assert_eq!(bad, Err("time: invalid duration \"abc\"".to_string()));
        let unknown = CreateRequest::decode("a", br#"{"Bogus":1}"#);
        assert!(
            unknown.is_ok(),
            "Session's own UnmarshalJSON ignores unknown fields"
        );
        let wrong = CreateRequest::decode("a", br#"{"TTL":10}"#);
        assert!(wrong.is_err_and(|e| e.starts_with("json: cannot unmarshal number")));
        assert!(CreateRequest::decode("a", b"{nope").is_err());
    }

    #[test]
    fn checks_fixup_follows_consul() {
        let none = CreateRequest::decode("a", br#"{"Checks":[]}"#);
        assert_eq!(
            none.map(|r| (r.node_checks, r.checks)),
            Ok((Some(vec![]), Some(vec![])))
        );
        let node = CreateRequest::decode("a", br#"{"NodeChecks":["c1"]}"#);
        assert_eq!(
            node.map(|r| (r.node_checks, r.checks)),
            Ok((Some(vec!["c1".to_string()]), None))
        );
        let no_node = CreateRequest::decode("a", br#"{"NodeChecks":[]}"#);
        assert_eq!(
            no_node.map(|r| (r.node_checks, r.checks)),
            Ok((Some(vec![]), None))
        );
        let legacy = CreateRequest::decode("a", br#"{"Checks":["c1"]}"#);
        assert_eq!(
            legacy.map(|r| (r.node_checks, r.checks)),
            Ok((
                Some(vec![SERF_CHECK.to_string()]),
                Some(vec!["c1".to_string()])
            ))
        );
    }

    #[test]
    fn go_durations_and_their_errors() {
        assert_eq!(crate::duration::parse_signed("1m30s"), Ok(90_000_000_000));
        assert_eq!(crate::duration::parse_signed("-2s"), Ok(-2_000_000_000));
        assert_eq!(
            crate::duration::parse_signed("10"),
            Err("time: missing unit in duration \"10\"".to_string())
        );
        assert_eq!(
            crate::duration::parse_signed("10x"),
            Err("time: unknown unit \"x\" in duration \"10x\"".to_string())
        );
        assert_eq!(
            crate::duration::parse_signed("abc"),
            Err("time: invalid duration \"abc\"".to_string())
        );
    }

    #[test]
    fn session_json_matches_consul() {
        let s = Session {
            id: "id".into(),
            name: "n".into(),
            node: "node".into(),
            lock_delay: 15_000_000_000,
            behavior: Behavior::Release,
            ttl: "10s".into(),
            node_checks: Some(vec![SERF_CHECK.into()]),
            service_checks: None,
            checks: None,
            create_index: 3,
            modify_index: 3,
        };
        let v = serde_json::to_value(&s).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"ID":"id","Name":"n","Node":"node","LockDelay":15000000000u64,
                "Behavior":"release","TTL":"10s","NodeChecks":["serfHealth"],
                "ServiceChecks":null,"CreateIndex":3,"ModifyIndex":3})
        );
    }
}
