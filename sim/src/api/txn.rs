//! `PUT /v1/txn`: KV operations applied atomically, as Consul's transaction endpoint
//! (`agent/txn_endpoint.go`, `agent/consul/state/txn.go`) applies them. Checked against a
//! real 1.8.7 agent:
//!
//! - at most 64 operations (413 beyond), a body of at most 512 KiB, decoded as Go decodes it:
//!   field names in any case, unknown fields refused (400 "Failed to parse body: …");
//! - a transaction without a write verb is a read: every operation runs against the current
//!   state, and the answer carries `Index: 0`, `LastContact`, `KnownLeader` and an empty
//!   `ConsistencyLevel`, with the `X-Consul-KnownLeader`/`-LastContact` headers but no index;
//! - a write transaction needs the leader. A `lock` under lock-delay fails the pre-check and
//!   nothing is applied; otherwise it is one Raft entry (its index is used whether or not it
//!   commits) and every operation runs in order, each seeing the ones before it;
//! - 200 with `Results` when every operation passed (writes' entries without their value, `get`
//!   and `get-tree` with it, checks and deletes none); else 409 with every failed operation in
//!   `Errors` and nothing written.
//!
//! Only KV operations are simulated: a `Node`, `Service` or `Check` operation gets a 400 that
//! says so (Consul would run it against its catalog).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::go_json::go_kind;
use crate::http::{hold_for_leader, only, ApiError, Consistency, QueryOptions};
use crate::state::Sim;
use crate::store::kv::{DirEntry, KvStore};
use crate::watch::Change;

/// Consul's `txn_max_ops`... in 1.8 a constant: `maxTxnOps`.
pub const MAX_TXN_OPS: usize = 64;
/// Consul's default `limits.txn_max_req_len`.
pub const MAX_TXN_BODY: usize = 512 * 1024;

/// The verbs that make a transaction a write.
const WRITE_VERBS: [&str; 7] = [
    "set",
    "delete",
    "delete-cas",
    "delete-tree",
    "cas",
    "lock",
    "unlock",
];

/// One decoded KV operation (`api.KVTxnOp`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnKv {
    pub verb: String,
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    pub index: u64,
    pub session: String,
}

/// A failed operation as Consul reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnError {
    pub op_index: usize,
    pub what: String,
}

#[derive(Serialize)]
struct Result1<'a> {
    #[serde(rename = "KV")]
    kv: &'a DirEntry,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/txn", web::route().to(txn));
}

async fn txn(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let opts = QueryOptions::from_request(&req)?;
    if body.len() > MAX_TXN_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body({} bytes) too large, max size: {MAX_TXN_BODY} bytes. See \
                 https://developer.hashicorp.com/docs/agent/config/config-files#txn_max_req_len.",
                body.len()
            ),
        ));
    }
    let ops = decode(&body)
        .map_err(|why| ApiError::bad_request(format!("Failed to parse body: {why}")))?;
    if ops.len() > MAX_TXN_OPS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                ops.len()
            ),
        ));
    }
    let writes = ops
        .iter()
        .flatten()
        .any(|op| WRITE_VERBS.contains(&op.verb.as_str()));
    if writes {
        write(&sim, &opts, &ops).await
    } else {
        read(&sim, &opts, &ops).await
    }
}

/// The read path (`Txn.Read`): no Raft entry; consistent unless `?stale`.
async fn read(
    sim: &Sim,
    opts: &QueryOptions,
    ops: &[Option<TxnKv>],
) -> Result<HttpResponse, ApiError> {
    if opts.consistency != Consistency::Stale {
        hold_for_leader(sim, opts.dc.as_deref()).await;
    }
    let mut st = sim.lock();
    opts.check_dc(&st)?;
    let known_leader = st.cluster.has_leader();
    if !known_leader && opts.consistency != Consistency::Stale {
        return Err(ApiError::no_leader());
    }
    let last_contact = match opts.consistency {
        Consistency::Stale => st.cluster.last_contact().as_millis() as u64,
        _ => 0,
    };
    // No write verb reaches `apply` here (that is what made this a read), so the operations
    // run on the table itself: nothing to roll back.
    let (results, errors) = run(&mut st.kv, &|_| true, 0, ops);
    let mut body = answer(&results, &errors);
    body.insert("Index".into(), Value::from(0));
    body.insert("LastContact".into(), Value::from(last_contact));
    body.insert("KnownLeader".into(), Value::from(known_leader));
    body.insert("ConsistencyLevel".into(), Value::from(""));
    let mut b = status_of(&errors);
    b.insert_header(("X-Consul-KnownLeader", known_leader.to_string()));
    b.insert_header(("X-Consul-LastContact", last_contact.to_string()));
    Ok(b.json(Value::Object(body)))
}

/// The write path (`Txn.Apply`): the pre-check on the leader, then one Raft entry.
async fn write(
    sim: &Sim,
    opts: &QueryOptions,
    ops: &[Option<TxnKv>],
) -> Result<HttpResponse, ApiError> {
    hold_for_leader(sim, opts.dc.as_deref()).await;
    let mut st = sim.lock();
    opts.check_dc(&st)?;
    if !st.cluster.has_leader() {
        return Err(ApiError::no_leader());
    }
    let now = tokio::time::Instant::now();
    let delayed: Vec<TxnError> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| Some((i, op.as_ref()?)))
        .filter(|(_, op)| op.verb == "lock" && st.kv.lock_delayed(&op.key, now))
        .map(|(i, op)| TxnError {
            op_index: i,
            what: format!("failed to lock key {:?} due to lock delay", op.key),
        })
        .collect();
    if !delayed.is_empty() {
        return Ok(status_of(&delayed).json(Value::Object(answer(&[], &delayed))));
    }
    let idx = st.next_index();
    // On a copy, dropped whole if any operation fails (O(keys); fine at the simulator's sizes).
    let mut kv = st.kv.clone();
    let sessions = &st.sessions;
    let (results, errors) = run(&mut kv, &|id| sessions.contains(id), idx, ops);
    if errors.is_empty() {
        let changed = changed_keys(&st.kv, &kv, ops);
        st.kv = kv;
        if !changed.is_empty() {
            st.notify(Change {
                keys: changed,
                tables: Vec::new(),
            });
        }
    }
    Ok(status_of(&errors).json(Value::Object(answer(&results, &errors))))
}

fn status_of(errors: &[TxnError]) -> actix_web::HttpResponseBuilder {
    if errors.is_empty() {
        HttpResponse::Ok()
    } else {
        HttpResponse::Conflict()
    }
}

/// `{"Results": [...], "Errors": null}`, or `Results: null` with the errors.
fn answer(results: &[Value], errors: &[TxnError]) -> Map<String, Value> {
    let mut body = Map::new();
    if errors.is_empty() {
        body.insert("Results".into(), Value::Array(results.to_vec()));
        body.insert("Errors".into(), Value::Null);
    } else {
        body.insert("Results".into(), Value::Null);
        body.insert(
            "Errors".into(),
            serde_json::to_value(errors).unwrap_or(Value::Null),
        );
    }
    body
}

/// Runs `ops` in order on `kv` at Raft index `idx`: the results of all, or every error.
fn run(
    kv: &mut KvStore,
    session_exists: &dyn Fn(&str) -> bool,
    idx: u64,
    ops: &[Option<TxnKv>],
) -> (Vec<Value>, Vec<TxnError>) {
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        // `{}` or `{"KV": null}`: nothing to do, as in Consul.
        let Some(op) = op else { continue };
        match apply(kv, session_exists, idx, op) {
            Ok(entries) => results.extend(entries),
            Err(what) => errors.push(TxnError { op_index: i, what }),
        }
    }
    (results, errors)
}

/// One operation (`txnKVS`): its results as JSON, or Consul's reason it failed.
fn apply(
    kv: &mut KvStore,
    session_exists: &dyn Fn(&str) -> bool,
    idx: u64,
    op: &TxnKv,
) -> Result<Vec<Value>, String> {
    let key = op.key.as_str();
    if key.is_empty() && op.verb != "delete-tree" {
        return Err("Must provide key".into());
    }
    // What a write leaves: the entry without its value.
    let written = |kv: &KvStore| -> Vec<Value> {
        kv.get(key)
            .1
            .map(|e| {
                let mut e = e.clone();
                e.value.clear();
                vec![entry_json(&e)]
            })
            .unwrap_or_default()
    };
    match op.verb.as_str() {
        "set" => {
            kv.set(idx, key, op.value.clone(), op.flags);
            Ok(written(kv))
        }
        "cas" => {
            if !kv.cas(idx, key, op.value.clone(), op.flags, op.index) {
                return Err(format!("failed to set key {key:?}, index is stale"));
            }
            Ok(written(kv))
        }
        "lock" | "unlock" if op.session.is_empty() => Err("missing session".into()),
        "lock" => {
            if !session_exists(&op.session) {
                return Err(format!("invalid session {:?}", op.session));
            }
            if !kv.lock(idx, key, op.value.clone(), op.flags, &op.session) {
                return Err(format!("failed to lock key {key:?}, lock is already held"));
            }
            Ok(written(kv))
        }
        "unlock" => {
            if !kv.unlock(idx, key, op.value.clone(), op.flags, &op.session) {
                return Err(format!(
                    "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                ));
            }
            Ok(written(kv))
        }
        "get" => match kv.get(key).1 {
            Some(e) => Ok(vec![entry_json(e)]),
            None => Err(format!("key {key:?} doesn't exist")),
        },
        "get-tree" => Ok(kv.list(key).1.into_iter().map(entry_json).collect()),
        "check-index" => match kv.get(key).1 {
            None => Err(format!("failed to check index, key {key:?} doesn't exist")),
            Some(e) if e.modify_index != op.index => Err(format!(
                "failed index check for key {key:?}, current modify index {} != {}",
                e.modify_index, op.index
            )),
            Some(_) => Ok(written(kv)),
        },
        "check-session" => match kv.get(key).1 {
            None => Err(format!(
                "failed to check session, key {key:?} doesn't exist"
            )),
            Some(e) if e.session.as_deref().unwrap_or("") != op.session => Err(format!(
                "failed session check for key {key:?}, current session {:?} != {:?}",
                e.session.as_deref().unwrap_or(""),
                op.session
            )),
            Some(_) => Ok(written(kv)),
        },
        "check-not-exists" => match kv.get(key).1 {
            Some(_) => Err(format!("key {key:?} exists")),
            None => Ok(Vec::new()),
        },
        "delete" => {
            kv.delete(idx, key);
            Ok(Vec::new())
        }
        "delete-cas" => {
            if !kv.delete_cas(idx, key, op.index) {
                return Err(format!("failed to delete key {key:?}, index is stale"));
            }
            Ok(Vec::new())
        }
        "delete-tree" => {
            kv.delete_tree(idx, key);
            Ok(Vec::new())
        }
        verb => Err(format!("unknown KV verb {verb:?}")),
    }
}

fn entry_json(e: &DirEntry) -> Value {
    serde_json::to_value(Result1 { kv: e }).unwrap_or(Value::Null)
}

/// The keys `ops` wrote whose entry differs between the store before and after: created,
/// changed or gone. Only those are looked at (a write that leaves an entry as it was changes
/// nothing and wakes no one, as in Consul).
fn changed_keys(before: &KvStore, after: &KvStore, ops: &[Option<TxnKv>]) -> Vec<String> {
    let mut touched = std::collections::BTreeSet::new();
    for op in ops.iter().flatten() {
        match op.verb.as_str() {
            "delete-tree" => {
                touched.extend(before.list(&op.key).1.into_iter().map(|e| e.key.clone()))
            }
            verb if WRITE_VERBS.contains(&verb) => {
                touched.insert(op.key.clone());
            }
            _ => {}
        }
    }
    let index = |kv: &KvStore, key: &str| kv.get(key).1.map(|e| e.modify_index);
    touched
        .into_iter()
        .filter(|k| index(before, k) != index(after, k))
        .collect()
}

/// Decodes the body as Go's `encoding/json` decodes `api.TxnOps` with unknown fields
/// refused: an operation is `None` when it carries no KV operation (`{}`, `"KV": null`).
fn decode(body: &[u8]) -> Result<Vec<Option<TxnKv>>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("EOF".into());
    }
    let doc: Value = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Eof => "unexpected EOF".to_owned(),
        _ => crate::go_json::go_json_error(&e, body),
    })?;
    let Value::Array(items) = doc else {
        return Err(format!(
            "json: cannot unmarshal {} into Go value of type api.TxnOps",
            go_kind(&doc)
        ));
    };
    items.iter().map(decode_op).collect()
}

fn decode_op(item: &Value) -> Result<Option<TxnKv>, String> {
    let Value::Object(fields) = item else {
        if item.is_null() {
            return Ok(None);
        }
        return Err(format!(
            "json: cannot unmarshal {} into Go value of type api.TxnOp",
            go_kind(item)
        ));
    };
    let mut kv = None;
    for (name, value) in fields {
        match name.to_ascii_lowercase().as_str() {
            "kv" => kv = decode_kv(value)?,
            "node" | "service" | "check" => {
                return Err(format!(
                    "the simulator's /v1/txn takes KV operations only, not {name:?}"
                ))
            }
            _ => return Err(format!("json: unknown field {name:?}")),
        }
    }
    Ok(kv)
}

fn decode_kv(value: &Value) -> Result<Option<TxnKv>, String> {
    let fields = match value {
        Value::Null => return Ok(None),
        Value::Object(fields) => fields,
        other => {
            return Err(format!(
                "json: cannot unmarshal {} into Go struct field TxnOp.KV of type api.KVTxnOp",
                go_kind(other)
            ))
        }
    };
    let mut op = TxnKv::default();
    for (name, v) in fields {
        let field = name.to_ascii_lowercase();
        let type_error = |go_type: &str| {
            format!(
                "json: cannot unmarshal {} into Go struct field KVTxnOp.KV.{} of type {go_type}",
                go_kind(v),
                pascal(&field)
            )
        };
        let text = |v: &Value| match v {
            Value::Null => Ok(String::new()),
            Value::String(s) => Ok(s.clone()),
            _ => Err(type_error("string")),
        };
        let number = |v: &Value| match v {
            Value::Null => Ok(0),
            Value::Number(n) => n.as_u64().ok_or_else(|| type_error("uint64")),
            _ => Err(type_error("uint64")),
        };
        match field.as_str() {
            "verb" => op.verb = text(v)?,
            "key" => op.key = text(v)?,
            "session" => op.session = text(v)?,
            "flags" => op.flags = number(v)?,
            "index" => op.index = number(v)?,
            "value" => {
                op.value = match v {
                    Value::Null => Vec::new(),
                    Value::String(s) => base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|e| match e {
                            base64::DecodeError::InvalidByte(at, _)
                            | base64::DecodeError::InvalidLastSymbol(at, _) => {
                                format!("illegal base64 data at input byte {at}")
                            }
                            _ => format!("illegal base64 data at input byte {}", s.len()),
                        })?,
                    _ => return Err(type_error("[]uint8")),
                }
            }
            _ => return Err(format!("json: unknown field {name:?}")),
        }
    }
    Ok(Some(op))
}

/// The field's name as Go's error spells it.
fn pascal(field: &str) -> &'static str {
    match field {
        "verb" => "Verb",
        "key" => "Key",
        "session" => "Session",
        "flags" => "Flags",
        "index" => "Index",
        _ => "Value",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_decode_as_go_decodes_them() {
        let ops = decode(br#"[{"kv":{"verb":"get","KEY":"a"}}, {}, {"KV": null}]"#).unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].as_ref().unwrap().key, "a");
        assert!(ops[1].is_none() && ops[2].is_none());
        for (body, says) in [
            (&b""[..], "EOF"),
            (b"[{", "unexpected EOF"),
            (
                b"{}",
                "cannot unmarshal object into Go value of type api.TxnOps",
            ),
            (
                b"[\"x\"]",
                "cannot unmarshal string into Go value of type api.TxnOp",
            ),
            (br#"[{"Foo":{}}]"#, "json: unknown field \"Foo\""),
            (br#"[{"KV":{"Frob":1}}]"#, "json: unknown field \"Frob\""),
            (
                br#"[{"KV":{"Value":3}}]"#,
                "cannot unmarshal number into Go struct field KVTxnOp.KV.Value of type []uint8",
            ),
            (
                br#"[{"KV":{"Value":"!!"}}]"#,
                "illegal base64 data at input byte 0",
            ),
        ] {
            let e = decode(body).unwrap_err();
            assert!(e.contains(says), "{body:?}: {e}");
        }
    }

    fn op(verb: &str, key: &str) -> Option<TxnKv> {
        Some(TxnKv {
            verb: verb.into(),
            key: key.into(),
            ..TxnKv::default()
        })
    }

    #[test]
    fn every_failed_operation_is_reported_and_later_ones_see_earlier_ones() {
        let mut kv = KvStore::default();
        let ops = [
            Some(TxnKv {
                value: b"v".to_vec(),
                ..op("set", "c").unwrap()
            }),
            op("get", "c"),
            op("check-not-exists", "c"),
            op("get", "nope"),
            op("frob", "c"),
            op("delete", ""),
        ];
        let (_, errors) = run(&mut kv, &|_| true, 5, &ops);
        let what: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.op_index, e.what.as_str()))
            .collect();
        assert_eq!(
            what,
            [
                (2, "key \"c\" exists"),
                (3, "key \"nope\" doesn't exist"),
                (4, "unknown KV verb \"frob\""),
                (5, "Must provide key"),
            ]
        );
    }

    #[test]
    fn a_lock_result_carries_lock_index_and_session_but_no_value() {
        let mut kv = KvStore::default();
        let lock = Some(TxnKv {
            value: b"holder".to_vec(),
            session: "s-1".into(),
            ..op("lock", "l").unwrap()
        });
        let (results, errors) = run(&mut kv, &|s| s == "s-1", 7, &[lock.clone(), op("get", "l")]);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(results[0]["KV"]["LockIndex"], 1);
        assert_eq!(results[0]["KV"]["Session"], "s-1");
        assert_eq!(results[0]["KV"]["Value"], Value::Null);
        assert_eq!(results[1]["KV"]["Value"], "aG9sZGVy");
        let other = Some(TxnKv {
            session: "s-2".into(),
            ..lock.clone().unwrap()
        });
        let (_, errors) = run(&mut kv, &|_| true, 8, &[other]);
        assert_eq!(
            errors[0].what,
            "failed to lock key \"l\", lock is already held"
        );
        let (_, errors) = run(&mut kv, &|_| false, 9, &[lock]);
        assert_eq!(errors[0].what, "invalid session \"s-1\"");
    }
}

#[cfg(test)]
mod http_tests {
    use crate::testkit::{bounded, Api};

    /// A transaction wakes the readers of the keys it changed and no others; a delete-tree
    /// wakes the readers of every key it removed.
    #[actix_rt::test]
    async fn a_transaction_wakes_only_the_readers_of_what_it_changed() {
        bounded(async {
            let api = Api::start(1.0);
            assert_eq!(api.put("/v1/kv/t/a", b"1").await.text(), "true");
            assert_eq!(api.put("/v1/kv/u/x", b"1").await.text(), "true");
            let idx = api.get("/v1/kv/t/a").await.index.unwrap_or(0);
            let uri = format!("/v1/kv/t/a?index={idx}&wait=10s");
            let mut read = Box::pin(api.get(&uri));
            api.until_parked(&mut read, 1).await;
            // Another key, and the same value again for `t/a`: nothing it reads changed.
            let r = api
                .put(
                    "/v1/txn",
                    br#"[{"KV":{"Verb":"set","Key":"t/b","Value":"Mg=="}},
                         {"KV":{"Verb":"set","Key":"t/a","Value":"MQ=="}}]"#,
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(api.sim().lock().waiters.len(), 1, "t/a's reader was woken");
            let r = api
                .put("/v1/txn", br#"[{"KV":{"Verb":"delete-tree","Key":"t/"}}]"#)
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            let got = read.await;
            assert_eq!(got.status, 404, "woken by the delete-tree: t/a is gone");
        })
        .await;
    }
}
