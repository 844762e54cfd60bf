//! Consul sessions: the `Sessions` table, TTL timers, invalidation (with each session's
//! Behavior and lock-delay) and the `/v1/session/...` endpoints.
//!
//! rehydrator holds its rollout lock through a session; the cluster code calls
//! `invalidate_for_node` when a node fails or one of its checks goes critical. The semantics
//! follow Consul's `agent/session_endpoint.go`, `agent/consul/session_endpoint.go`,
//! `session_ttl.go` and the state store's `deleteSessionTxn`.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;

use crate::api::kv;
use crate::http::{blocking, hold_for_leader, only, ApiError, Fresh, Params, QueryOptions, Read};
use crate::state::{Sim, State};
use crate::watch::{Change, Topic};

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

    fn insert(&mut self, idx: u64, mut session: Session) {
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

    fn remove(&mut self, idx: u64, id: &str) -> Option<Session> {
        let e = self.by_id.remove(id)?;
        self.table_index = self.table_index.max(idx);
        Some(e.session)
    }

    fn next_generation(&mut self, id: &str) -> Option<u64> {
        let e = self.by_id.get_mut(id)?;
        e.timer_generation += 1;
        Some(e.timer_generation)
    }

    fn generation(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).map(|e| e.timer_generation)
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
            serde_json::from_slice(body).map_err(|e| crate::http::go_json_error(&e, body))?;
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
    fn fixup_checks(mut self) -> Self {
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

fn go_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
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

/// Creates a session on the leader: Consul's endpoint validation (Behavior, TTL), then the
/// state store's (node, checks). Returns the new session's ID and arms its TTL timer.
pub fn create(sim: &Sim, st: &mut State, req: CreateRequest) -> Result<String, ApiError> {
    if !st.cluster.has_leader() {
        return Err(ApiError::no_leader());
    }
    let behavior = match req.behavior.as_str() {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => return Err(ApiError::rpc(format!("Invalid Behavior setting '{other}'"))),
    };
    if !req.ttl.is_empty() {
        let ttl = crate::duration::parse_signed(&req.ttl)
            .map_err(|e| ApiError::rpc(format!("Session TTL '{}' invalid: {e}", req.ttl)))?;
        let min = TTL_MIN.as_nanos() as i64;
        let max = TTL_MAX.as_nanos() as i64;
        if ttl != 0 && (ttl < min || ttl > max) {
            return Err(ApiError::rpc(format!(
                "Invalid Session TTL '{ttl}', must be between [{}={}]",
                crate::duration::format(TTL_MIN),
                crate::duration::format(TTL_MAX)
            )));
        }
    }
    if !st.catalog.node_exists(&req.node) {
        return Err(ApiError::rpc("Missing node registration"));
    }
    let session = Session {
        id: uuid::Uuid::new_v4().to_string(),
        name: req.name,
        node: req.node,
        lock_delay: req.lock_delay,
        behavior,
        ttl: req.ttl,
        node_checks: req.node_checks,
        service_checks: req.service_checks,
        checks: req.checks,
        create_index: 0,
        modify_index: 0,
    };
    for check in session.check_ids() {
        match st.catalog.check_status(&session.node, check).as_deref() {
            None => {
                return Err(ApiError::rpc(format!(
                    "Missing check '{check}' registration"
                )))
            }
            Some("critical") => {
                return Err(ApiError::rpc(format!(
                    "Check '{check}' is in critical state"
                )))
            }
            Some(_) => {}
        }
    }
    let id = session.id.clone();
    let idx = st.next_index();
    st.sessions.insert(idx, session);
    arm_timer(sim, st, &id);
    st.notify(Change::table(Topic::Sessions));
    Ok(id)
}

/// Destroys a session on the leader, as `PUT /v1/session/destroy` does: unknown IDs are fine.
pub fn destroy(st: &mut State, id: &str) -> Result<(), ApiError> {
    if !st.cluster.has_leader() {
        return Err(ApiError::no_leader());
    }
    if st.sessions.contains(id) {
        let idx = st.next_index();
        let keys = invalidate(st, idx, id);
        notify_invalidated(st, keys);
    }
    Ok(())
}

/// Resets a session's TTL timer on the leader; None when the session does not exist.
pub fn renew(sim: &Sim, st: &mut State, id: &str) -> Result<Option<Session>, ApiError> {
    if !st.cluster.has_leader() {
        return Err(ApiError::no_leader());
    }
    let Some(session) = st.sessions.get(id).cloned() else {
        return Ok(None);
    };
    arm_timer(sim, st, id);
    Ok(Some(session))
}

/// Invalidates the sessions bound to `node` — all of them when `check_id` is None (the node was
/// deregistered or failed), else those that list `check_id` among their checks — applying each
/// session's Behavior and lock-delay. Called by the cluster/catalog when a check goes critical.
/// Takes one index for the whole invalidation, as Consul does it in one transaction.
pub fn invalidate_for_node(_sim: &Sim, st: &mut State, node: &str, check_id: Option<&str>) {
    let doomed: Vec<String> = st
        .sessions
        .by_id
        .values()
        .filter(|e| e.session.node.eq_ignore_ascii_case(node))
        .filter(|e| match check_id {
            None => true,
            Some(c) => e.session.check_ids().any(|id| id.eq_ignore_ascii_case(c)),
        })
        .map(|e| e.session.id.clone())
        .collect();
    if doomed.is_empty() {
        return;
    }
    let idx = st.next_index();
    let mut keys = Vec::new();
    for id in &doomed {
        tracing::debug!(session = %id, %node, check = ?check_id, "Session invalidated.");
        keys.extend(invalidate(st, idx, id));
    }
    notify_invalidated(st, keys);
}

/// Removes session `id` at `idx`, releasing or deleting its keys per its Behavior and putting
/// each under the session's lock-delay. Returns the keys it changed. The caller notifies.
fn invalidate(st: &mut State, idx: u64, id: &str) -> Vec<String> {
    let Some(session) = st.sessions.remove(idx, id) else {
        return Vec::new();
    };
    let held = st.kv.held_by(id);
    let until = session.lock_delay().map(|d| kv::lock_delay_until(st, d));
    let mut changed = Vec::with_capacity(held.len());
    for key in held {
        let wrote = match session.behavior {
            Behavior::Release => st.kv.release(idx, &key),
            Behavior::Delete => st.kv.delete(idx, &key),
        };
        if let Some(until) = until {
            st.kv.set_lock_delay(&key, until);
        }
        if wrote {
            changed.push(key);
        }
    }
    changed
}

fn notify_invalidated(st: &mut State, keys: Vec<String>) {
    st.notify(Change {
        keys,
        tables: vec![Topic::Sessions],
    });
}

/// (Re)starts the TTL timer of session `id`: it fires at TTL × 2 of simulated time. A renew or
/// destroy in between bumps the generation, so the stale timer does nothing.
fn arm_timer(sim: &Sim, st: &mut State, id: &str) {
    let Some(ttl) = st.sessions.get(id).and_then(Session::ttl) else {
        return;
    };
    let Some(generation) = st.sessions.next_generation(id) else {
        return;
    };
    let id = id.to_owned();
    sim.after_in(st, ttl * TTL_MULTIPLIER, move |sim, st| {
        expire(sim, st, &id, generation)
    });
}

fn expire(sim: &Sim, st: &mut State, id: &str, generation: u64) {
    if st.sessions.generation(id) != Some(generation) {
        return;
    }
    // A leaderless cluster runs no session timers; the next leader restarts them in full.
    if !st.cluster.has_leader() {
        arm_timer(sim, st, id);
        return;
    }
    tracing::debug!(session = %id, "Session TTL expired.");
    let idx = st.next_index();
    let keys = invalidate(st, idx, id);
    notify_invalidated(st, keys);
}

/// Restarts every TTL timer in full, as a newly elected Consul leader does
/// (`initializeSessionTimers`). For the cluster code to call on a leader change.
pub fn reset_timers(sim: &Sim, st: &mut State) {
    let ids: Vec<String> = st.sessions.by_id.keys().cloned().collect();
    for id in ids {
        arm_timer(sim, st, &id);
    }
}

/// Registers `/v1/session/...`; each route answers 405 for other methods, as Consul does.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/session/create", web::route().to(create_endpoint))
        .route(
            "/v1/session/destroy/{id:.*}",
            web::route().to(destroy_endpoint),
        )
        .route("/v1/session/renew/{id:.*}", web::route().to(renew_endpoint))
        .route("/v1/session/info/{id:.*}", web::route().to(info_endpoint))
        .route("/v1/session/node/{node:.*}", web::route().to(node_endpoint))
        .route("/v1/session/list", web::route().to(list_endpoint));
}

/// The decoded path after `prefix`, as Consul's `strings.TrimPrefix(req.URL.Path, ...)`.
fn tail(req: &HttpRequest, prefix: &str) -> String {
    let raw = req.path().strip_prefix(prefix).unwrap_or_default();
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

fn dc_of(params: &Params) -> QueryOptions {
    QueryOptions {
        index: 0,
        wait: Duration::ZERO,
        consistency: crate::http::Consistency::Default,
        dc: params
            .get("dc")
            .filter(|d| !d.is_empty())
            .map(str::to_owned),
        jitter: true,
    }
}

async fn create_endpoint(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let params = Params::from_request(&req);
    let agent_node = sim.lock().config.agent_node.clone();
    let create_req = if body.is_empty() {
        CreateRequest::defaults(&agent_node).fixup_checks()
    } else {
        CreateRequest::decode(&agent_node, &body)
            .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?
    };
    let opts = dc_of(&params);
    hold_for_leader(&sim, opts.dc.as_deref()).await;
    let mut st = sim.lock();
    opts.check_dc(&st)?;
    let id = create(&sim, &mut st, create_req)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .json(serde_json::json!({ "ID": id })))
}

async fn destroy_endpoint(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let params = Params::from_request(&req);
    let id = tail(&req, "/v1/session/destroy/");
    if id.is_empty() {
        return Err(ApiError::bad_request("Missing session"));
    }
    let opts = dc_of(&params);
    hold_for_leader(&sim, opts.dc.as_deref()).await;
    let mut st = sim.lock();
    opts.check_dc(&st)?;
    destroy(&mut st, &id)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body("true"))
}

async fn renew_endpoint(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let opts = QueryOptions::from_request(&req)?;
    let id = tail(&req, "/v1/session/renew/");
    if id.is_empty() {
        return Err(ApiError::bad_request("Missing session"));
    }
    hold_for_leader(&sim, opts.dc.as_deref()).await;
    let mut st = sim.lock();
    opts.check_dc(&st)?;
    match renew(&sim, &mut st, &id)? {
        Some(session) => Ok(HttpResponse::Ok().json(vec![session])),
        None => Err(ApiError::not_found(format!("Session id '{id}' not found"))),
    }
}

async fn info_endpoint(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "GET")?;
    let opts = QueryOptions::from_request(&req)?;
    let id = tail(&req, "/v1/session/info/");
    if id.is_empty() {
        return Err(ApiError::bad_request("Missing session"));
    }
    read_sessions(&sim, &opts, |s| s.get(&id).cloned().into_iter().collect()).await
}

async fn node_endpoint(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "GET")?;
    let opts = QueryOptions::from_request(&req)?;
    let node = tail(&req, "/v1/session/node/");
    if node.is_empty() {
        return Err(ApiError::bad_request("Missing node name"));
    }
    read_sessions(&sim, &opts, |s| s.for_node(&node)).await
}

async fn list_endpoint(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "GET")?;
    let opts = QueryOptions::from_request(&req)?;
    read_sessions(&sim, &opts, Sessions::list).await
}

/// A blocking read of the sessions table; every such read answers at the table's index.
async fn read_sessions(
    sim: &Sim,
    opts: &QueryOptions,
    pick: impl Fn(&Sessions) -> Vec<Session>,
) -> Result<HttpResponse, ApiError> {
    let (meta, sessions) = blocking(sim, opts, Fresh::Greater, |st| {
        Ok(Read {
            index: st.sessions.index(),
            value: pick(&st.sessions),
            topics: vec![Topic::Sessions],
        })
    })
    .await?;
    Ok(meta.json(&sessions))
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

#[cfg(test)]
mod http_tests {
    use std::time::Duration;

    use actix_web::http::Method;

    use crate::api::kv::testkit::{bounded, Api};

    async fn create(api: &Api, body: &str) -> String {
        let r = api.put("/v1/session/create", body.as_bytes()).await;
        assert_eq!(r.status, 200, "create {body}: {}", r.text());
        r.json()["ID"].as_str().unwrap_or_default().to_owned()
    }

    #[actix_rt::test]
    async fn lock_contention_and_lock_index_over_http() {
        bounded(async {
            let api = Api::start(1.0);
            let s1 = create(&api, "").await;
            let s2 = create(&api, r#"{"Name":"second"}"#).await;
            let r = api.put(&format!("/v1/kv/lock?acquire={s1}"), b"one").await;
            assert_eq!(r.text(), "true");
            let r = api.put(&format!("/v1/kv/lock?acquire={s2}"), b"two").await;
            assert_eq!(r.text(), "false", "held by s1");
            let r = api.put(&format!("/v1/kv/lock?acquire={s1}"), b"one'").await;
            assert_eq!(r.text(), "true", "the holder re-acquires");
            let e = api.get("/v1/kv/lock").await.json()[0].clone();
            assert_eq!(
                (e["LockIndex"].as_u64(), e["Session"].as_str()),
                (Some(1), Some(s1.as_str()))
            );
            let r = api.put(&format!("/v1/kv/lock?release={s2}"), b"").await;
            assert_eq!(r.text(), "false", "only the holder releases");
            let r = api.put(&format!("/v1/kv/lock?release={s1}"), b"one'").await;
            assert_eq!(r.text(), "true");
            // An API release applies no lock-delay: s2 gets it at once, LockIndex moves on.
            let r = api.put(&format!("/v1/kv/lock?acquire={s2}"), b"two").await;
            assert_eq!(r.text(), "true");
            let e = api.get("/v1/kv/lock").await.json()[0].clone();
            assert_eq!(
                (e["LockIndex"].as_u64(), e["Session"].as_str()),
                (Some(2), Some(s2.as_str()))
            );
            let r = api.put("/v1/kv/lock?acquire=", b"").await;
            assert_eq!(
                (r.status, r.text()),
                (
                    500,
                    format!("{}{}", crate::http::RPC_PREFIX, "missing session")
                )
            );
        })
        .await;
    }

    #[actix_rt::test]
    async fn destroy_releases_the_lock_and_applies_lock_delay() {
        bounded(async {
            // 1s of lock-delay is 20ms of wall time at 50x.
            let api = Api::start(50.0);
            let s1 = create(&api, r#"{"LockDelay":"1s"}"#).await;
            let s2 = create(&api, "").await;
            api.put(&format!("/v1/kv/leader?acquire={s1}"), b"s1 data")
                .await;
            let r = api.put(&format!("/v1/session/destroy/{s1}"), b"").await;
            assert_eq!((r.status, r.text()), (200, "true".into()));
            let e = api.get("/v1/kv/leader").await.json()[0].clone();
            assert!(e.get("Session").is_none(), "released");
            assert_eq!(e["Value"], "czEgZGF0YQ==", "release keeps the value");
            let r = api.put(&format!("/v1/kv/leader?acquire={s2}"), b"s2").await;
            assert_eq!(r.text(), "false", "the key is under lock-delay");
            // Lock-delay is wall-clock time passing; poll with a bound.
            let mut acquired = false;
            for _ in 0..200 {
                if api
                    .put(&format!("/v1/kv/leader?acquire={s2}"), b"s2")
                    .await
                    .text()
                    == "true"
                {
                    acquired = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(acquired, "the lock-delay never lapsed");
            let r = api.get(&format!("/v1/session/info/{s1}")).await;
            assert_eq!(r.json(), serde_json::json!([]));
        })
        .await;
    }

    #[actix_rt::test]
    async fn behavior_delete_deletes_the_keys() {
        bounded(async {
            let api = Api::start(1.0);
            let s = create(&api, r#"{"Behavior":"delete","LockDelay":0}"#).await;
            api.put(&format!("/v1/kv/eph?acquire={s}"), b"x").await;
            api.put(&format!("/v1/session/destroy/{s}"), b"").await;
            assert_eq!(api.get("/v1/kv/eph").await.status, 404);
            let r = api
                .put("/v1/session/create", br#"{"Behavior":"keep"}"#)
                .await;
            assert_eq!(
                (r.status, r.text()),
                (
                    500,
                    format!(
                        "{}{}",
                        crate::http::RPC_PREFIX,
                        "Invalid Behavior setting 'keep'"
                    )
                )
            );
        })
        .await;
    }

    #[actix_rt::test]
    async fn ttl_expiry_releases_the_lock_no_sooner_than_twice_the_ttl() {
        bounded(async {
            // A 10s TTL runs a 20s timer: 400ms of wall time at 50x.
            let api = Api::start(50.0);
            let started = tokio::time::Instant::now();
            let s = create(&api, r#"{"TTL":"10s"}"#).await;
            let r = api.put(&format!("/v1/kv/ttl-lock?acquire={s}"), b"v").await;
            assert_eq!(r.text(), "true");
            let idx = api.get("/v1/kv/ttl-lock").await.index.unwrap_or(0);
            // The blocking read returns when the expiry releases the key.
            let r = api
                .get(&format!("/v1/kv/ttl-lock?index={idx}&wait=1m"))
                .await;
            assert!(
                started.elapsed() >= Duration::from_millis(400),
                "expired before 2×TTL"
            );
            assert!(r.json()[0].get("Session").is_none(), "{}", r.text());
            let r = api.put(&format!("/v1/session/renew/{s}"), b"").await;
            assert_eq!(r.status, 404);
        })
        .await;
    }

    #[actix_rt::test]
    async fn renew_keeps_a_ttl_session_alive() {
        bounded(async {
            let api = Api::start(50.0);
            let s = create(&api, r#"{"TTL":"10s"}"#).await;
            // Renew every 5s of simulated time (100ms) for 60s, well past 2×TTL.
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let r = api.put(&format!("/v1/session/renew/{s}"), b"").await;
                assert_eq!(r.status, 200, "renew failed: {}", r.text());
                assert_eq!(r.json()[0]["ID"], s.as_str());
                assert_eq!(r.json()[0]["TTL"], "10s");
            }
            // Left alone, it lapses; the session list unblocks when it goes.
            let idx = api.get("/v1/session/list").await.index.unwrap_or(0);
            let r = api.get(&format!("/v1/session/list?index={idx}")).await;
            assert_eq!(r.json(), serde_json::json!([]));
        })
        .await;
    }

    #[actix_rt::test]
    async fn invalidate_for_node_ends_sessions_bound_to_the_check() {
        bounded(async {
            let api = Api::start(1.0);
            let node = api.sim().lock().config.agent_node.clone();
            let bound = create(&api, r#"{"LockDelay":"0s"}"#).await;
            let unbound = create(&api, r#"{"NodeChecks":[]}"#).await;
            api.put(&format!("/v1/kv/k?acquire={bound}"), b"").await;
            {
                let sim = api.sim().clone();
                let mut st = sim.lock();
                super::invalidate_for_node(&sim, &mut st, &node, Some("some-other-check"));
                assert!(st.sessions.contains(&bound));
                super::invalidate_for_node(&sim, &mut st, &node.to_uppercase(), Some("SERFHEALTH"));
                assert!(!st.sessions.contains(&bound), "the check's sessions end");
                assert!(
                    st.sessions.contains(&unbound),
                    "a session without the check stays"
                );
            }
            assert!(api.get("/v1/kv/k").await.json()[0].get("Session").is_none());
            {
                let sim = api.sim().clone();
                let mut st = sim.lock();
                super::invalidate_for_node(&sim, &mut st, &node, None);
                assert!(
                    !st.sessions.contains(&unbound),
                    "a failed node ends all its sessions"
                );
            }
        })
        .await;
    }

    #[actix_rt::test]
    async fn reads_and_errors_match_consul() {
        bounded(async {
            let api = Api::start(1.0);
            let node = api.sim().lock().config.agent_node.clone();
            let s = create(&api, r#"{"Name":"n","TTL":"15s"}"#).await;
            let r = api.get(&format!("/v1/session/info/{s}")).await;
            let e = r.json()[0].clone();
            assert_eq!(e["Node"], node.as_str());
            assert_eq!(e["LockDelay"], 15_000_000_000u64);
            assert_eq!(e["Behavior"], "release");
            assert_eq!(e["NodeChecks"], serde_json::json!(["serfHealth"]));
            assert!(e.get("Checks").is_none());
            assert_eq!(r.index, e["CreateIndex"].as_u64());
            let r = api.get(&format!("/v1/session/node/{node}")).await;
            assert_eq!(r.json().as_array().map(Vec::len), Some(1));
            let r = api.get("/v1/session/node/nobody").await;
            assert_eq!(r.json(), serde_json::json!([]));
            let r = api.put("/v1/session/create", br#"{"Node":"nobody"}"#).await;
            assert_eq!(
                (r.status, r.text()),
                (
                    500,
                    format!("{}Missing node registration", crate::http::RPC_PREFIX)
                )
            );
            let r = api
                .put("/v1/session/create", br#"{"NodeChecks":["nope"]}"#)
                .await;
            assert_eq!(
                (r.status, r.text()),
                (
                    500,
                    format!(
                        "{}Missing check 'nope' registration",
                        crate::http::RPC_PREFIX
                    )
                )
            );
            let r = api.put("/v1/session/create", b"[1]").await;
            assert_eq!(r.status, 400);
            let r = api.put("/v1/session/destroy/", b"").await;
            assert_eq!((r.status, r.text()), (400, "Missing session".into()));
            let r = api
                .call(Method::DELETE, &format!("/v1/session/destroy/{s}"), b"")
                .await;
            assert_eq!(
                (r.status, r.header("Allow")),
                (405, Some("OPTIONS,PUT".into()))
            );
            {
                // A short hold for a leader keeps this test quick; kv's tests time the hold.
                let mut st = api.sim().lock();
                st.config.rpc_hold_timeout = Duration::from_millis(10);
                st.cluster.leader = None;
            }
            let r = api.put("/v1/session/create", b"").await;
            assert_eq!((r.status, r.text()), (500, "No cluster leader".into()));
        })
        .await;
    }
}
