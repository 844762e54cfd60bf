//! Consul's key/value store: `KvStore` (entries, tombstones, lock-delays) and the `/v1/kv/...`
//! endpoint over it.
//!
//! rehydrator's lock and the demo's clients read and write here over HTTP; sessions
//! (`api::session`) release or delete the keys they held when they are invalidated. The
//! semantics follow Consul's state store (`agent/consul/state/kvs.go`) and HTTP handler
//! (`agent/kvs_endpoint.go`), including their quirks: an unchanged write keeps its ModifyIndex,
//! a plain PUT keeps the lock holder but resets LockIndex, a CAS delete of a missing key is true.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde::Serialize;
use tokio::time::Instant;

use crate::http::{blocking, hold_for_leader, ApiError, Fresh, Params, QueryOptions, Read};
use crate::state::{Sim, State};
use crate::watch::{Change, Topic};

/// Consul's default `kv_max_value_size`.
pub const MAX_VALUE_SIZE: usize = 512 * 1024;

/// One key as Consul stores it (`structs.DirEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    /// The session holding the key's lock.
    pub session: Option<String>,
    /// How many times the lock was acquired.
    pub lock_index: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

impl DirEntry {
    /// Consul skips a write that changes none of these, keeping the old ModifyIndex.
    fn same_content(&self, other: &DirEntry) -> bool {
        self.lock_index == other.lock_index
            && self.flags == other.flags
            && self.value == other.value
            && self.session == other.session
    }
}

/// The entry as Consul's JSON shows it: Value base64 (null when empty, as Consul's msgpack
/// round trip makes it), Session omitted when unlocked.
impl Serialize for DirEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Wire<'a> {
            lock_index: u64,
            key: &'a str,
            flags: u64,
            value: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            session: Option<&'a str>,
            create_index: u64,
            modify_index: u64,
        }
        Wire {
            lock_index: self.lock_index,
            key: &self.key,
            flags: self.flags,
            value: (!self.value.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&self.value)),
            session: self.session.as_deref(),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
        .serialize(s)
    }
}

/// Runs a conditional write on `key`. It changed something only if the entry's ModifyIndex
/// moved: Consul skips a write that leaves the entry as it was, and wakes no reader for it.
fn guarded(
    kv: &mut KvStore,
    key: String,
    write: impl FnOnce(&mut KvStore, &str) -> bool,
) -> (bool, Vec<String>) {
    let before = kv.get(&key).1.map(|e| e.modify_index);
    let ok = write(kv, &key);
    let changed = ok && kv.get(&key).1.map(|e| e.modify_index) != before;
    (ok, if changed { vec![key] } else { vec![] })
}

/// The KV table, its graveyard and the leader's lock-delay map. `Clone` so a transaction can
/// run on a copy and be dropped whole when one of its operations fails.
#[derive(Debug, Default, Clone)]
pub struct KvStore {
    entries: BTreeMap<String, DirEntry>,
    /// Deleted keys (or deleted prefixes, for a tree delete) and the index that deleted them,
    /// so a list's index never slides back below a delete it should have seen.
    tombstones: BTreeMap<String, u64>,
    /// The highest index of any write to the entries or the graveyard (`kvsMaxIndex`).
    table_index: u64,
    /// Keys nobody may acquire until the instant passes (wall clock, already time-scaled).
    lock_delays: HashMap<String, Instant>,
}

impl KvStore {
    /// A single key and the index a read of it answers at: the entry's ModifyIndex, else the
    /// table's.
    pub fn get(&self, key: &str) -> (u64, Option<&DirEntry>) {
        match self.entries.get(key) {
            Some(e) => (e.modify_index, Some(e)),
            None => (self.table_index.max(1), None),
        }
    }

    /// Every entry under `prefix`, and the index of the list: the highest ModifyIndex among
    /// them and the tombstones under the prefix, else the table's.
    pub fn list(&self, prefix: &str) -> (u64, Vec<&DirEntry>) {
        let entries: Vec<&DirEntry> = self.under(prefix).collect();
        let mut index = entries.iter().map(|e| e.modify_index).max().unwrap_or(0);
        if prefix.is_empty() {
            index = self.table_index;
        } else {
            let graves = self
                .tombstones
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, i)| *i)
                .max()
                .unwrap_or(0);
            index = index.max(graves);
        }
        if index == 0 {
            index = self.table_index;
        }
        (index.max(1), entries)
    }

    /// The keys under `prefix`, cut after the first `separator` past the prefix and
    /// de-duplicated (`?keys&separator=/`), with the list's index.
    pub fn keys(&self, prefix: &str, separator: &str) -> (u64, Vec<String>) {
        let (index, entries) = self.list(prefix);
        let mut keys: Vec<String> = Vec::new();
        for e in entries {
            let key = match e.key[prefix.len()..].find(separator) {
                Some(at) if !separator.is_empty() => {
                    e.key[..prefix.len() + at + separator.len()].to_owned()
                }
                _ => e.key.clone(),
            };
            // Entries come sorted, so a folder's keys are adjacent.
            if keys.last() != Some(&key) {
                keys.push(key);
            }
        }
        (index, keys)
    }

    fn under(&self, prefix: &str) -> impl Iterator<Item = &DirEntry> + '_ {
        let prefix = prefix.to_owned();
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, e)| e)
    }

    /// The keys whose lock `session` holds.
    pub fn held_by(&self, session: &str) -> Vec<String> {
        self.entries
            .values()
            .filter(|e| e.session.as_deref() == Some(session))
            .map(|e| e.key.clone())
            .collect()
    }

    /// Writes `entry` at `idx` unless it changes nothing; true when it was written.
    fn put(&mut self, idx: u64, mut entry: DirEntry) -> bool {
        match self.entries.get(&entry.key) {
            Some(old) if old.same_content(&entry) => return false,
            Some(old) => entry.create_index = old.create_index,
            None => entry.create_index = idx,
        }
        entry.modify_index = idx;
        self.table_index = self.table_index.max(idx);
        self.entries.insert(entry.key.clone(), entry);
        true
    }

    /// A plain PUT: the value and flags change, the lock holder stays, LockIndex goes to 0
    /// (Consul's set carries the request's zero LockIndex).
    pub fn set(&mut self, idx: u64, key: &str, value: Vec<u8>, flags: u64) -> bool {
        let session = self.entries.get(key).and_then(|e| e.session.clone());
        self.put(idx, new_entry(key, value, flags, session, 0))
    }

    /// `?cas=N`: 0 writes only if the key is absent, N only if its ModifyIndex is N.
    /// Returns whether the check passed (an unchanged write still passes).
    pub fn cas(&mut self, idx: u64, key: &str, value: Vec<u8>, flags: u64, cas: u64) -> bool {
        let ok = match self.entries.get(key) {
            None => cas == 0,
            Some(e) => cas != 0 && e.modify_index == cas,
        };
        if ok {
            self.set(idx, key, value, flags);
        }
        ok
    }

    /// `?acquire=<session>`, the session already known to exist and the key not under
    /// lock-delay. A new holder bumps LockIndex; the holder re-acquiring only updates the value.
    pub fn lock(&mut self, idx: u64, key: &str, value: Vec<u8>, flags: u64, session: &str) -> bool {
        let lock_index = match self.entries.get(key) {
            Some(e) if e.session.as_deref() == Some(session) => e.lock_index,
            Some(e) if e.session.is_some() => return false,
            Some(e) => e.lock_index + 1,
            None => 1,
        };
        self.put(
            idx,
            new_entry(key, value, flags, Some(session.to_owned()), lock_index),
        );
        true
    }

    /// `?release=<session>`: only the holder may release; the request's value and flags are
    /// written with it, as Consul does.
    pub fn unlock(
        &mut self,
        idx: u64,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
    ) -> bool {
        let lock_index = match self.entries.get(key) {
            Some(e) if e.session.as_deref() == Some(session) => e.lock_index,
            _ => return false,
        };
        self.put(idx, new_entry(key, value, flags, None, lock_index));
        true
    }

    /// Clears a lock because its session was invalidated, keeping value and LockIndex.
    pub fn release(&mut self, idx: u64, key: &str) -> bool {
        match self.entries.get(key) {
            Some(e) => {
                let mut e = e.clone();
                e.session = None;
                self.put(idx, e)
            }
            None => false,
        }
    }

    /// Deletes one key, leaving a tombstone; true when something was deleted.
    pub fn delete(&mut self, idx: u64, key: &str) -> bool {
        if self.entries.remove(key).is_none() {
            return false;
        }
        self.tombstones.insert(key.to_owned(), idx);
        self.table_index = self.table_index.max(idx);
        true
    }

    /// `DELETE ?cas=N`: deletes only if the ModifyIndex is N. A missing key counts as
    /// deleted (true), as in Consul.
    pub fn delete_cas(&mut self, idx: u64, key: &str, cas: u64) -> bool {
        match self.entries.get(key) {
            None => true,
            Some(e) if e.modify_index != cas => false,
            Some(_) => self.delete(idx, key),
        }
    }

    /// `DELETE ?recurse`: removes every key under `prefix`, with one tombstone for the prefix
    /// (none for the whole store). Returns the deleted keys.
    pub fn delete_tree(&mut self, idx: u64, prefix: &str) -> Vec<String> {
        let doomed: Vec<String> = self.under(prefix).map(|e| e.key.clone()).collect();
        if doomed.is_empty() {
            return doomed;
        }
        for k in &doomed {
            self.entries.remove(k);
        }
        if !prefix.is_empty() {
            self.tombstones.insert(prefix.to_owned(), idx);
        }
        self.table_index = self.table_index.max(idx);
        doomed
    }

    /// Blocks acquisitions of `key` until `until`.
    pub fn set_lock_delay(&mut self, key: &str, until: Instant) {
        self.lock_delays.insert(key.to_owned(), until);
    }

    /// Whether `key` is still under a lock-delay at `now`. Expired entries are dropped.
    pub fn lock_delayed(&mut self, key: &str, now: Instant) -> bool {
        match self.lock_delays.get(key) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.lock_delays.remove(key);
                false
            }
            None => false,
        }
    }

    /// The table index (KV entries and tombstones), for tests and invariants.
    pub fn table_index(&self) -> u64 {
        self.table_index
    }
}

fn new_entry(
    key: &str,
    value: Vec<u8>,
    flags: u64,
    session: Option<String>,
    lock_index: u64,
) -> DirEntry {
    DirEntry {
        key: key.to_owned(),
        value,
        flags,
        session,
        lock_index,
        create_index: 0,
        modify_index: 0,
    }
}

/// A KV write as Consul's `KVS.Apply` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    Set {
        key: String,
        value: Vec<u8>,
        flags: u64,
    },
    Cas {
        key: String,
        value: Vec<u8>,
        flags: u64,
        index: u64,
    },
    Lock {
        key: String,
        value: Vec<u8>,
        flags: u64,
        session: String,
    },
    Unlock {
        key: String,
        value: Vec<u8>,
        flags: u64,
        session: String,
    },
    Delete {
        key: String,
    },
    DeleteCas {
        key: String,
        index: u64,
    },
    DeleteTree {
        prefix: String,
    },
}

/// Applies a KV write on the leader: the result Consul's PUT/DELETE answers (`true`/`false`)
/// or its error. Wakes the readers of every key the write changed.
pub fn apply(st: &mut State, op: KvOp) -> Result<bool, ApiError> {
    if !st.cluster.has_leader() {
        return Err(ApiError::no_leader());
    }
    // Lock-delay is enforced before the Raft apply, on the leader's clock; a rejected
    // acquisition writes nothing.
    if let KvOp::Lock { key, .. } = &op {
        if st.kv.lock_delayed(key, Instant::now()) {
            tracing::warn!(%key, "Rejecting lock of key due to lock-delay.");
            return Ok(false);
        }
    }
    match &op {
        KvOp::Lock { session, .. } | KvOp::Unlock { session, .. } if session.is_empty() => {
            return Err(ApiError::rpc("missing session"));
        }
        KvOp::Lock { session, .. } if !st.sessions.contains(session) => {
            return Err(ApiError::rpc(format!("invalid session {session:?}")));
        }
        _ => {}
    }
    let idx = st.next_index();
    let kv = &mut st.kv;
    let (result, changed): (bool, Vec<String>) = match op {
        KvOp::Set { key, value, flags } => {
            let w = kv.set(idx, &key, value, flags);
            (true, if w { vec![key] } else { vec![] })
        }
        KvOp::Cas {
            key,
            value,
            flags,
            index,
        } => guarded(kv, key, |kv, key| kv.cas(idx, key, value, flags, index)),
        KvOp::Lock {
            key,
            value,
            flags,
            session,
        } => guarded(kv, key, |kv, key| kv.lock(idx, key, value, flags, &session)),
        KvOp::Unlock {
            key,
            value,
            flags,
            session,
        } => guarded(kv, key, |kv, key| {
            kv.unlock(idx, key, value, flags, &session)
        }),
        KvOp::Delete { key } => {
            let w = kv.delete(idx, &key);
            (true, if w { vec![key] } else { vec![] })
        }
        KvOp::DeleteCas { key, index } => {
            let existed = kv.get(&key).1.is_some();
            let ok = kv.delete_cas(idx, &key, index);
            (ok, if ok && existed { vec![key] } else { vec![] })
        }
        KvOp::DeleteTree { prefix } => (true, kv.delete_tree(idx, &prefix)),
    };
    if !changed.is_empty() {
        st.notify(Change {
            keys: changed,
            tables: Vec::new(),
        });
    }
    Ok(result)
}

/// Registers `/v1/kv/{key}` for every method; the handler answers 405 itself, as Consul does.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/kv/{key:.*}", web::route().to(kv_endpoint));
}

async fn kv_endpoint(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let params = Params::from_request(&req);
    let opts = QueryOptions::parse(&params)?;
    // Consul takes the key from the decoded path, so `%2F` is a slash like any other.
    let raw = req.path().strip_prefix("/v1/kv/").unwrap_or_default();
    let key = percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned();
    match *req.method() {
        Method::GET if params.has("keys") => get_keys(&sim, &opts, &params, key).await,
        Method::GET => get(&sim, &opts, &params, key).await,
        Method::PUT => put(&sim, &opts, &params, &req, key, body).await,
        Method::DELETE => delete(&sim, &opts, &params, key).await,
        ref m => Err(ApiError::method_not_allowed(
            m.as_str(),
            &["GET", "PUT", "DELETE"],
        )),
    }
}

async fn get(
    sim: &Sim,
    opts: &QueryOptions,
    params: &Params,
    key: String,
) -> Result<HttpResponse, ApiError> {
    let recurse = params.has("recurse");
    if !recurse && key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    let (meta, entries) = blocking(sim, opts, Fresh::Greater, |st| {
        if recurse {
            let (index, entries) = st.kv.list(&key);
            Ok(Read {
                index,
                value: entries.into_iter().cloned().collect::<Vec<_>>(),
                topics: vec![Topic::Prefix(key.clone())],
            })
        } else {
            let (index, entry) = st.kv.get(&key);
            Ok(Read {
                index,
                value: entry.cloned().into_iter().collect(),
                topics: vec![Topic::Key(key.clone())],
            })
        }
    })
    .await?;
    if entries.is_empty() {
        let mut b = HttpResponse::NotFound();
        meta.headers(&mut b);
        return Ok(b.finish());
    }
    if params.has("raw") && !recurse {
        let mut b = HttpResponse::Ok();
        meta.headers(&mut b);
        // Consul's guard against a stored value being served as a page.
        b.content_type("text/plain")
            .insert_header(("X-Content-Type-Options", "nosniff"))
            .insert_header(("Content-Security-Policy", "sandbox"));
        let value = entries
            .into_iter()
            .next()
            .map(|e| e.value)
            .unwrap_or_default();
        return Ok(b.body(value));
    }
    Ok(meta.json(&entries))
}

async fn get_keys(
    sim: &Sim,
    opts: &QueryOptions,
    params: &Params,
    prefix: String,
) -> Result<HttpResponse, ApiError> {
    // Consul still honours its historic misspelling; the right spelling wins.
    let sep = params
        .get("separator")
        .or_else(|| params.get("seperator"))
        .unwrap_or_default()
        .to_owned();
    let (meta, keys) = blocking(sim, opts, Fresh::Greater, |st| {
        let (index, keys) = st.kv.keys(&prefix, &sep);
        Ok(Read {
            index,
            value: keys,
            topics: vec![Topic::Prefix(prefix.clone())],
        })
    })
    .await?;
    // The root answers an empty list; any other prefix with no keys is a 404.
    if keys.is_empty() && !prefix.is_empty() {
        let mut b = HttpResponse::NotFound();
        meta.headers(&mut b);
        return Ok(b.finish());
    }
    Ok(meta.json(&keys))
}

async fn put(
    sim: &Sim,
    opts: &QueryOptions,
    params: &Params,
    req: &HttpRequest,
    key: String,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    conflicting_flags(params, &["cas", "acquire", "release"])?;
    let flags = match params.get("flags") {
        Some(f) => parse_uint(f)?,
        None => 0,
    };
    let cas = params.get("cas").map(parse_uint).transpose()?;
    // Consul checks the declared length before reading the body.
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|l| *l > MAX_VALUE_SIZE as u64) {
        return Err(too_large(len));
    }
    let value = match body.to_bytes_limited(MAX_VALUE_SIZE).await {
        Ok(Ok(bytes)) => bytes.to_vec(),
        Ok(Err(e)) => return Err(ApiError::internal(e.to_string())),
        Err(_) => return Err(too_large(MAX_VALUE_SIZE as u64 + 1)),
    };
    let op = if let Some(session) = params.get("release") {
        KvOp::Unlock {
            key,
            value,
            flags,
            session: session.to_owned(),
        }
    } else if let Some(session) = params.get("acquire") {
        KvOp::Lock {
            key,
            value,
            flags,
            session: session.to_owned(),
        }
    } else if let Some(index) = cas {
        KvOp::Cas {
            key,
            value,
            flags,
            index,
        }
    } else {
        KvOp::Set { key, value, flags }
    };
    hold_for_leader(sim, opts.dc.as_deref()).await;
    let mut st = sim.lock();
    opts.check_dc(&st)?;
    let ok = apply(&mut st, op)?;
    Ok(json_bool(ok))
}

async fn delete(
    sim: &Sim,
    opts: &QueryOptions,
    params: &Params,
    key: String,
) -> Result<HttpResponse, ApiError> {
    conflicting_flags(params, &["recurse", "cas"])?;
    let op = if params.has("recurse") {
        KvOp::DeleteTree { prefix: key }
    } else if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    } else if let Some(cas) = params.get("cas") {
        KvOp::DeleteCas {
            key,
            index: parse_uint(cas)?,
        }
    } else {
        KvOp::Delete { key }
    };
    hold_for_leader(sim, opts.dc.as_deref()).await;
    let mut st = sim.lock();
    opts.check_dc(&st)?;
    let ok = apply(&mut st, op)?;
    Ok(json_bool(ok))
}

fn json_bool(b: bool) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(if b { "true" } else { "false" })
}

fn too_large(len: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "Request body({len} bytes) too large, max size: {MAX_VALUE_SIZE} bytes. See \
             https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
        ),
    )
}

/// Consul answers a pair of flags that cannot be combined with 400 and the query re-encoded.
fn conflicting_flags(params: &Params, flags: &[&str]) -> Result<(), ApiError> {
    if flags.iter().filter(|f| params.has(f)).count() > 1 {
        return Err(ApiError::bad_request(format!(
            "Conflicting flags: {}\n",
            params.encode()
        )));
    }
    Ok(())
}

/// Go's `strconv.ParseUint(s, 10, 64)`; Consul returns its error as a 500.
fn parse_uint(s: &str) -> Result<u64, ApiError> {
    let err = |why: &str| ApiError::internal(format!("strconv.ParseUint: parsing {s:?}: {why}"));
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("invalid syntax"));
    }
    s.parse::<u64>().map_err(|_| err("value out of range"))
}

/// How long a lock-delay of `delay` (simulated) lasts on the wall clock, capped as Consul caps
/// it at 60s.
pub fn lock_delay_until(st: &State, delay: Duration) -> Instant {
    Instant::now()
        + st.config
            .scaled(delay.min(crate::api::session::MAX_LOCK_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn set_get_and_unchanged_write_keeps_modify_index() {
        let mut kv = KvStore::default();
        assert_eq!(kv.get("a").0, 1, "an empty store answers index 1, never 0");
        assert!(kv.set(5, "a", val("x"), 0));
        let (idx, e) = kv.get("a");
        assert_eq!(idx, 5);
        assert_eq!(e.map(|e| (e.create_index, e.modify_index)), Some((5, 5)));
        assert!(
            !kv.set(6, "a", val("x"), 0),
            "same value is a no-op in Consul"
        );
        assert_eq!(kv.get("a").0, 5);
        assert!(kv.set(7, "a", val("y"), 3));
        let e = kv.get("a").1.cloned();
        assert_eq!(
            e.map(|e| (e.create_index, e.modify_index, e.flags)),
            Some((5, 7, 3))
        );
    }

    #[test]
    fn cas_zero_only_creates_and_cas_n_needs_the_modify_index() {
        let mut kv = KvStore::default();
        assert!(
            !kv.cas(2, "k", val("a"), 0, 9),
            "cas=N on a missing key fails"
        );
        assert!(kv.cas(3, "k", val("a"), 0, 0));
        assert!(
            !kv.cas(4, "k", val("b"), 0, 0),
            "cas=0 on an existing key fails"
        );
        assert!(!kv.cas(5, "k", val("b"), 0, 2));
        assert!(kv.cas(6, "k", val("b"), 0, 3));
        assert_eq!(kv.get("k").1.map(|e| e.value.clone()), Some(val("b")));
    }

    #[test]
    fn lock_contention_and_lock_index() {
        let mut kv = KvStore::default();
        assert!(kv.lock(2, "l", val("a"), 0, "s1"));
        assert_eq!(kv.get("l").1.map(|e| e.lock_index), Some(1));
        assert!(
            !kv.lock(3, "l", val("b"), 0, "s2"),
            "held by another session"
        );
        assert!(
            kv.lock(4, "l", val("a2"), 0, "s1"),
            "the holder may re-acquire"
        );
        let e = kv.get("l").1.cloned();
        assert_eq!(
            e.as_ref().map(|e| e.lock_index),
            Some(1),
            "re-acquire keeps LockIndex"
        );
        assert_eq!(e.map(|e| e.value), Some(val("a2")));
        assert!(
            !kv.unlock(5, "l", vec![], 0, "s2"),
            "only the holder releases"
        );
        assert!(kv.unlock(6, "l", val("a2"), 0, "s1"));
        assert_eq!(kv.get("l").1.and_then(|e| e.session.clone()), None);
        assert!(kv.lock(7, "l", val("c"), 0, "s2"));
        let e = kv.get("l").1.cloned();
        assert_eq!(
            e.as_ref().map(|e| e.lock_index),
            Some(2),
            "a new holder bumps LockIndex"
        );
        assert_eq!(e.and_then(|e| e.session), Some("s2".into()));
        assert_eq!(kv.held_by("s2"), vec!["l".to_string()]);
        assert!(!kv.unlock(8, "missing", vec![], 0, "s2"));
    }

    #[test]
    fn plain_put_keeps_the_holder_and_resets_lock_index() {
        let mut kv = KvStore::default();
        assert!(kv.lock(2, "l", val("a"), 0, "s1"));
        assert!(kv.set(3, "l", val("b"), 0));
        let e = kv.get("l").1.cloned();
        assert_eq!(
            e.as_ref().and_then(|e| e.session.clone()),
            Some("s1".into())
        );
        assert_eq!(e.map(|e| e.lock_index), Some(0));
    }

    #[test]
    fn release_keeps_value_and_lock_index() {
        let mut kv = KvStore::default();
        kv.lock(2, "l", val("v"), 0, "s1");
        assert!(kv.release(9, "l"));
        let e = kv.get("l").1.cloned();
        assert_eq!(
            e.map(|e| (e.session, e.lock_index, e.value, e.modify_index)),
            Some((None, 1, val("v"), 9))
        );
    }

    #[test]
    fn tombstones_keep_list_indexes_from_going_backwards() {
        let mut kv = KvStore::default();
        kv.set(2, "a/1", val("x"), 0);
        kv.set(3, "a/2", val("x"), 0);
        kv.set(4, "b/1", val("x"), 0);
        assert_eq!(kv.list("a/").0, 3);
        assert!(kv.delete(5, "a/2"));
        let (idx, entries) = kv.list("a/");
        assert_eq!(entries.len(), 1);
        assert_eq!(idx, 5, "the tombstone's index, not a/1's ModifyIndex");
        assert_eq!(kv.list("b/").0, 4, "other prefixes are unaffected");
        assert_eq!(kv.get("a/2").0, 5, "a missing key answers the table index");
        assert_eq!(kv.list("").0, 5, "the root answers the table index");
        assert_eq!(
            kv.list("zzz").0,
            5,
            "an empty prefix with no graves: table index"
        );
        assert!(!kv.delete(6, "a/2"), "deleting nothing writes nothing");
        assert_eq!(kv.table_index(), 5);
    }

    #[test]
    fn delete_tree_removes_the_prefix_and_leaves_one_tombstone() {
        let mut kv = KvStore::default();
        kv.set(2, "t/a", val("x"), 0);
        kv.set(3, "t/b/c", val("x"), 0);
        kv.set(4, "u", val("x"), 0);
        let gone = kv.delete_tree(5, "t/");
        assert_eq!(gone, vec!["t/a".to_string(), "t/b/c".to_string()]);
        assert!(kv.list("t/").1.is_empty());
        assert_eq!(kv.list("t/").0, 5);
        assert!(kv.get("u").1.is_some());
        assert!(kv.delete_tree(6, "nothing/").is_empty());
        assert_eq!(kv.table_index(), 5);
    }

    #[test]
    fn delete_cas() {
        let mut kv = KvStore::default();
        kv.set(2, "k", val("x"), 0);
        assert!(!kv.delete_cas(3, "k", 1));
        assert!(kv.delete_cas(4, "k", 2));
        assert!(kv.delete_cas(5, "k", 2), "a missing key counts as deleted");
    }

    #[test]
    fn keys_with_separator() {
        let mut kv = KvStore::default();
        for (i, k) in ["web/a", "web/b/1", "web/b/2", "web/c/x/y", "webz"]
            .iter()
            .enumerate()
        {
            kv.set(i as u64 + 2, k, val("x"), 0);
        }
        assert_eq!(kv.keys("web/", "/").1, vec!["web/a", "web/b/", "web/c/"]);
        assert_eq!(kv.keys("web", "/").1, vec!["web/", "webz"]);
        assert_eq!(kv.keys("web/", "").1.len(), 4);
    }

    #[test]
    fn lock_delay_expires() {
        let mut kv = KvStore::default();
        let now = Instant::now();
        kv.set_lock_delay("k", now + Duration::from_secs(1));
        assert!(kv.lock_delayed("k", now));
        assert!(!kv.lock_delayed("k", now + Duration::from_secs(2)));
        assert!(!kv.lock_delayed("k", now), "expired delays are dropped");
    }

    #[test]
    fn entry_json_matches_consul() {
        let mut kv = KvStore::default();
        kv.set(2, "a", vec![], 0);
        kv.lock(3, "b", val("hi"), 7, "s");
        let a = serde_json::to_value(kv.get("a").1).unwrap_or_default();
        assert_eq!(
            a,
            serde_json::json!({"LockIndex":0,"Key":"a","Flags":0,"Value":null,
                "CreateIndex":2,"ModifyIndex":2})
        );
        let b = serde_json::to_value(kv.get("b").1).unwrap_or_default();
        assert_eq!(b["Value"], "aGk=");
        assert_eq!(b["Session"], "s");
        assert_eq!(b["LockIndex"], 1);
        assert_eq!(b["Flags"], 7);
    }

    #[test]
    fn parse_uint_matches_go() {
        assert_eq!(parse_uint("42").ok(), Some(42));
        let e = parse_uint("abc").err().map(|e| (e.status, e.message));
        assert_eq!(
            e,
            Some((
                StatusCode::INTERNAL_SERVER_ERROR,
                "strconv.ParseUint: parsing \"abc\": invalid syntax".to_string()
            ))
        );
        assert!(parse_uint("+1").is_err());
        assert!(parse_uint("99999999999999999999").is_err());
    }
}

/// What the HTTP tests of the data-plane modules share: a simulator serving on a loopback
/// port, requests in one line, and a bound on every test.
#[cfg(test)]
pub(crate) mod testkit {
    use std::future::Future;
    use std::time::Duration;

    use actix_web::http::Method;

    use crate::config::SimConfig;
    use crate::server::RunningSim;
    use crate::state::Sim;

    /// How long any one of these tests may run.
    pub const LIMIT: Duration = Duration::from_secs(20);

    /// Runs `fut`, failing the test if it outlives `LIMIT`.
    pub async fn bounded<F: Future>(fut: F) -> F::Output {
        match tokio::time::timeout(LIMIT, fut).await {
            Ok(out) => out,
            Err(_) => panic!("test did not finish within {LIMIT:?}"),
        }
    }

    /// A simulator on 127.0.0.1:0 with its clocks sped up `time_scale` times, and a client.
    pub struct Api {
        pub running: RunningSim,
        client: awc::Client,
    }

    impl Api {
        pub fn start(time_scale: f64) -> Self {
            let config = SimConfig {
                time_scale,
                ..SimConfig::default()
            };
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            match crate::server::start(addr, config) {
                Ok(running) => Self {
                    running,
                    client: awc::Client::builder().timeout(LIMIT).finish(),
                },
                Err(e) => panic!("the simulator could not bind a loopback port: {e}"),
            }
        }

        pub fn sim(&self) -> &Sim {
            &self.running.sim
        }

        pub async fn call(&self, method: Method, path: &str, body: &[u8]) -> Resp {
            let url = format!("{}{path}", self.running.url());
            let mut resp = match self
                .client
                .request(method.clone(), &url)
                .send_body(body.to_vec())
                .await
            {
                Ok(r) => r,
                Err(e) => panic!("{method} {path}: {e}"),
            };
            let body = match resp.body().limit(4 * 1024 * 1024).await {
                Ok(b) => b.to_vec(),
                Err(e) => panic!("{method} {path}: reading the body: {e}"),
            };
            let headers = resp.headers().clone();
            let index = headers
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            Resp {
                status: resp.status().as_u16(),
                index,
                headers,
                body,
            }
        }

        pub async fn get(&self, path: &str) -> Resp {
            self.call(Method::GET, path, b"").await
        }

        pub async fn put(&self, path: &str, body: &[u8]) -> Resp {
            self.call(Method::PUT, path, body).await
        }

        /// Polls `fut` until the simulator has `n` parked blocking queries, so a test writes
        /// only once its reader is really waiting. Fails if `fut` finishes first.
        pub async fn until_parked<F: Future + Unpin>(&self, fut: &mut F, n: usize)
        where
            F::Output: std::fmt::Debug,
        {
            while self.sim().lock().waiters.len() < n {
                tokio::select! {
                    out = &mut *fut => panic!("the blocking read returned before parking: {out:?}"),
                    _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                }
            }
        }
    }

    /// A response, read whole.
    #[derive(Debug)]
    pub struct Resp {
        pub status: u16,
        pub index: Option<u64>,
        pub headers: awc::http::header::HeaderMap,
        pub body: Vec<u8>,
    }

    impl Resp {
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
        }
        pub fn header(&self, name: &str) -> Option<String> {
            self.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }
    }
}

#[cfg(test)]
mod http_tests {
    use super::testkit::{bounded, Api};
    use super::*;

    #[actix_rt::test]
    async fn put_get_keys_raw_and_404_over_http() {
        bounded(async {
            let api = Api::start(1.0);
            let r = api.get("/v1/kv/app/a").await;
            assert_eq!(r.status, 404);
            assert!(r.body.is_empty(), "Consul's 404 has no body");
            assert!(
                r.index.is_some_and(|i| i >= 1),
                "404 still carries X-Consul-Index"
            );
            let r = api.put("/v1/kv/app/a?flags=42", b"hello").await;
            assert_eq!((r.status, r.text()), (200, "true".into()));
            api.put("/v1/kv/app/b/c", b"").await;
            let r = api.get("/v1/kv/app/a").await;
            let e = &r.json()[0];
            assert_eq!(e["Value"], "aGVsbG8=");
            assert_eq!(e["Flags"], 42);
            assert!(e.get("Session").is_none(), "Session is omitempty");
            assert_eq!(r.index, e["ModifyIndex"].as_u64());
            let r = api.get("/v1/kv/app/a?raw").await;
            assert_eq!(r.body, b"hello");
            assert_eq!(r.header("Content-Type").as_deref(), Some("text/plain"));
            let r = api.get("/v1/kv/app/?recurse").await;
            assert_eq!(r.json().as_array().map(Vec::len), Some(2));
            assert_eq!(r.json()[1]["Value"], serde_json::Value::Null);
            let r = api.get("/v1/kv/app/?keys&separator=/").await;
            assert_eq!(r.json(), serde_json::json!(["app/a", "app/b/"]));
            let r = api.get("/v1/kv/nothing/?keys").await;
            assert_eq!(r.status, 404);
            let r = api.get("/v1/kv/?keys").await;
            assert_eq!(
                (r.status, r.json().as_array().map(Vec::len)),
                (200, Some(2))
            );
        })
        .await;
    }

    #[actix_rt::test]
    async fn kv_reads_carry_setmeta_headers_but_no_effective_consistency() {
        bounded(async {
            let api = Api::start(1.0);
            api.put("/v1/kv/h", b"v").await;
            for path in [
                "/v1/kv/h",
                "/v1/kv/h?stale",
                "/v1/kv/missing",
                "/v1/kv/?keys",
            ] {
                let r = api.get(path).await;
                assert_eq!(
                    r.header("X-Consul-Query-Backend").as_deref(),
                    Some("blocking-query"),
                    "{path}"
                );
                assert_eq!(r.header("X-Consul-KnownLeader").as_deref(), Some("true"));
                // Consul's KV handlers never fill in QueryMeta.ConsistencyLevel, and
                // setConsistency writes nothing for an empty one.
                assert_eq!(r.header("X-Consul-Effective-Consistency"), None, "{path}");
            }
        })
        .await;
    }

    #[actix_rt::test]
    async fn bad_requests_answer_as_consul_does() {
        bounded(async {
            let api = Api::start(1.0);
            let r = api.put("/v1/kv/", b"x").await;
            assert_eq!((r.status, r.text()), (400, "Missing key name".into()));
            let r = api.get("/v1/kv/").await;
            assert_eq!(r.status, 400);
            let r = api.put("/v1/kv/k?cas=0&acquire=s", b"x").await;
            assert_eq!(
                (r.status, r.text()),
                (400, "Conflicting flags: acquire=s&cas=0\n".into())
            );
            let r = api.put("/v1/kv/k?cas=abc", b"x").await;
            assert_eq!(
                (r.status, r.text()),
                (
                    500,
                    "strconv.ParseUint: parsing \"abc\": invalid syntax".into()
                )
            );
            let r = api.put("/v1/kv/k?flags=-1", b"x").await;
            assert_eq!(r.status, 500);
            let r = api
                .call(Method::DELETE, "/v1/kv/k?recurse&cas=1", b"")
                .await;
            assert_eq!(r.status, 400);
            let big = vec![b'x'; MAX_VALUE_SIZE + 1];
            let r = api.put("/v1/kv/big", &big).await;
            assert_eq!(r.status, 413);
            assert!(r
                .text()
                .starts_with("Request body(524289 bytes) too large, max size: 524288"));
            let r = api.call(Method::POST, "/v1/kv/k", b"x").await;
            assert_eq!(r.status, 405);
            assert_eq!(r.header("Allow").as_deref(), Some("OPTIONS,GET,PUT,DELETE"));
            let r = api.put("/v1/kv/k?dc=elsewhere", b"x").await;
            assert_eq!((r.status, r.text()), (500, "No path to datacenter".into()));
        })
        .await;
    }

    #[actix_rt::test]
    async fn writes_need_a_leader_and_stale_reads_do_not() {
        bounded(async {
            // 100x: the 7s hold for a leader is 70ms of wall time.
            let api = Api::start(100.0);
            api.put("/v1/kv/k", b"v").await;
            api.sim().lock().cluster.leader = None;
            let started = tokio::time::Instant::now();
            let r = api.put("/v1/kv/k", b"w").await;
            assert_eq!((r.status, r.text()), (500, "No cluster leader".into()));
            assert!(
                started.elapsed() >= Duration::from_millis(70),
                "gave up before rpc_hold_timeout: {:?}",
                started.elapsed()
            );
            let r = api.get("/v1/kv/k").await;
            assert_eq!(r.status, 500);
            let started = tokio::time::Instant::now();
            let r = api.get("/v1/kv/k?stale").await;
            assert_eq!(r.status, 200);
            assert!(
                started.elapsed() < Duration::from_millis(70),
                "a stale read waited for a leader"
            );
        })
        .await;
    }

    #[actix_rt::test]
    async fn a_request_during_an_election_waits_for_the_new_leader() {
        bounded(async {
            let api = Api::start(1.0);
            let leader = api.sim().lock().cluster.leader.take();
            let mut write = Box::pin(api.put("/v1/kv/k", b"v"));
            let mut read = Box::pin(api.get("/v1/kv/other"));
            // Consul holds a leader-bound request up to rpc_hold_timeout (7s) for a leader.
            api.until_parked(&mut write, 1).await;
            api.until_parked(&mut read, 2).await;
            {
                let mut st = api.sim().lock();
                st.cluster.leader = leader;
                st.notify(Change::table(Topic::Raft));
            }
            let (w, r) = tokio::join!(write, read);
            assert_eq!((w.status, w.text()), (200, "true".into()));
            assert_eq!(r.status, 404, "the read ran once the leader was back");
        })
        .await;
    }

    #[actix_rt::test]
    async fn cas_and_delete_over_http() {
        bounded(async {
            let api = Api::start(1.0);
            let r = api.put("/v1/kv/c?cas=0", b"1").await;
            assert_eq!(r.text(), "true");
            let r = api.put("/v1/kv/c?cas=0", b"2").await;
            assert_eq!(r.text(), "false");
            let idx = api.get("/v1/kv/c").await.index.unwrap_or(0);
            let r = api.put(&format!("/v1/kv/c?cas={}", idx + 100), b"2").await;
            assert_eq!(r.text(), "false");
            let r = api.put(&format!("/v1/kv/c?cas={idx}"), b"2").await;
            assert_eq!(r.text(), "true");
            let r = api
                .call(Method::DELETE, &format!("/v1/kv/c?cas={idx}"), b"")
                .await;
            assert_eq!(r.text(), "false", "stale ModifyIndex");
            api.put("/v1/kv/t/1", b"x").await;
            api.put("/v1/kv/t/2", b"x").await;
            let r = api.call(Method::DELETE, "/v1/kv/t/?recurse", b"").await;
            assert_eq!(r.text(), "true");
            let r = api.get("/v1/kv/t/?recurse").await;
            assert_eq!(r.status, 404);
            let tree_index = r.index.unwrap_or(0);
            assert_eq!(
                tree_index,
                api.sim().lock().kv.table_index(),
                "the tombstone's index"
            );
            assert_eq!(api.get("/v1/kv/c").await.status, 200);
        })
        .await;
    }

    #[actix_rt::test]
    async fn blocking_get_wakes_only_for_the_key_it_read() {
        bounded(async {
            let api = Api::start(1.0);
            api.put("/v1/kv/a", b"1").await;
            let idx = api.get("/v1/kv/a").await.index.unwrap_or(0);
            let uri = format!("/v1/kv/a?index={idx}&wait=10s");
            let mut read = Box::pin(api.get(&uri));
            api.until_parked(&mut read, 1).await;
            // Another key moves the table index but must not wake the reader of `a`.
            let wrote = apply(
                &mut api.sim().lock(),
                KvOp::Set {
                    key: "b".into(),
                    value: b"2".to_vec(),
                    flags: 0,
                },
            );
            assert_eq!(wrote.ok(), Some(true));
            assert_eq!(
                api.sim().lock().waiters.len(),
                1,
                "a write to b woke the reader of a"
            );
            let (r, w) = tokio::join!(read, api.put("/v1/kv/a", b"3"));
            assert_eq!(w.text(), "true");
            assert_eq!(r.status, 200);
            assert_eq!(r.json()[0]["Value"], "Mw==");
            assert!(r.index > Some(idx));
        })
        .await;
    }

    #[actix_rt::test]
    async fn blocking_list_wakes_on_a_delete_under_its_prefix() {
        bounded(async {
            let api = Api::start(1.0);
            api.put("/v1/kv/p/1", b"1").await;
            api.put("/v1/kv/p/2", b"2").await;
            let idx = api.get("/v1/kv/p/?recurse").await.index.unwrap_or(0);
            let uri = format!("/v1/kv/p/?recurse&index={idx}");
            let mut read = Box::pin(api.get(&uri));
            api.until_parked(&mut read, 1).await;
            let (r, _) = tokio::join!(read, api.call(Method::DELETE, "/v1/kv/p/1", b""));
            assert_eq!(r.json().as_array().map(Vec::len), Some(1));
            assert!(
                r.index > Some(idx),
                "the tombstone keeps the index moving forward"
            );
        })
        .await;
    }
}
