//! `/v1/txn`: several KV operations applied atomically in one round trip. The Dispatcher takes
//! a job's lock with one: the receipt must not exist, the lock is taken, and the lock's
//! LockIndex comes back with it (`port::ConsulAdapter::kv_acquire_unless`).
//!
//! Consul answers 200 with `Results` when every operation succeeded, and 409 with `Errors`
//! (each naming its operation's index) when any failed, in which case nothing was written.
//! Writes' results carry the entry without its value; `get` carries the value; a missing key
//! fails `get` (use `get-tree` to read what may not exist); `check-not-exists` and the deletes
//! add no result.

use awc::http::StatusCode;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{Call, Client, ConsulError, KvPair, MAX_LIST_BODY};

/// The most operations Consul takes in one transaction.
pub const MAX_TXN_OPS: usize = 64;

/// One KV operation of a transaction, by Consul's verb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvTxnOp {
    Set {
        key: String,
        value: Vec<u8>,
    },
    /// Set only if the key's ModifyIndex is `index` (0: only if absent).
    Cas {
        key: String,
        value: Vec<u8>,
        index: u64,
    },
    /// Take the key's lock for `session`, writing `value`.
    Lock {
        key: String,
        value: Vec<u8>,
        session: String,
    },
    Unlock {
        key: String,
        value: Vec<u8>,
        session: String,
    },
    /// The entry with its value; fails the transaction if the key does not exist.
    Get {
        key: String,
    },
    /// Every entry under the prefix; none is not a failure.
    GetTree {
        prefix: String,
    },
    CheckIndex {
        key: String,
        index: u64,
    },
    CheckSession {
        key: String,
        session: String,
    },
    /// Fails the transaction if the key exists.
    CheckNotExists {
        key: String,
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

/// One failed operation of a rolled-back transaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnError {
    /// The failed operation's position in the request.
    pub op_index: usize,
    /// Consul's reason, e.g. `key "k" exists`.
    pub what: String,
}

/// How a transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Applied: one result per operation that yields one, in order.
    Committed(Vec<KvPair>),
    /// Nothing was applied; every failed operation is listed.
    RolledBack(Vec<TxnError>),
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireKv<'a> {
    verb: &'static str,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
}

#[derive(Serialize)]
struct WireOp<'a> {
    #[serde(rename = "KV")]
    kv: WireKv<'a>,
}

impl KvTxnOp {
    fn wire(&self) -> WireOp<'_> {
        let b64 = |v: &[u8]| Some(base64::engine::general_purpose::STANDARD.encode(v));
        let kv = |verb, key| WireKv {
            verb,
            key,
            value: None,
            index: None,
            session: None,
        };
        let kv = match self {
            KvTxnOp::Set { key, value } => WireKv {
                value: b64(value),
                ..kv("set", key)
            },
            KvTxnOp::Cas { key, value, index } => WireKv {
                value: b64(value),
                index: Some(*index),
                ..kv("cas", key)
            },
            KvTxnOp::Lock {
                key,
                value,
                session,
            } => WireKv {
                value: b64(value),
                session: Some(session),
                ..kv("lock", key)
            },
            KvTxnOp::Unlock {
                key,
                value,
                session,
            } => WireKv {
                value: b64(value),
                session: Some(session),
                ..kv("unlock", key)
            },
            KvTxnOp::Get { key } => kv("get", key),
            KvTxnOp::GetTree { prefix } => kv("get-tree", prefix),
            KvTxnOp::CheckIndex { key, index } => WireKv {
                index: Some(*index),
                ..kv("check-index", key)
            },
            KvTxnOp::CheckSession { key, session } => WireKv {
                session: Some(session),
                ..kv("check-session", key)
            },
            KvTxnOp::CheckNotExists { key } => kv("check-not-exists", key),
            KvTxnOp::Delete { key } => kv("delete", key),
            KvTxnOp::DeleteCas { key, index } => WireKv {
                index: Some(*index),
                ..kv("delete-cas", key)
            },
            KvTxnOp::DeleteTree { prefix } => kv("delete-tree", prefix),
        };
        WireOp { kv }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireAnswer {
    #[serde(default)]
    results: Option<Vec<WireResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnError>>,
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(rename = "KV")]
    kv: Option<KvPair>,
}

impl Client {
    /// Applies `ops` as one transaction (`PUT /v1/txn`). At most [`MAX_TXN_OPS`].
    pub async fn txn(&self, ops: &[KvTxnOp]) -> Result<TxnOutcome, ConsulError> {
        if ops.len() > MAX_TXN_OPS {
            return Err(ConsulError::Config(format!(
                "a transaction takes at most {MAX_TXN_OPS} operations, not {}",
                ops.len()
            )));
        }
        let wire: Vec<WireOp<'_>> = ops.iter().map(KvTxnOp::wire).collect();
        // Results of get-tree grow with the keys read, like a recursive list.
        let call = Call::put("txn").limit(MAX_LIST_BODY);
        let answer = self.send_json(call, &wire).await?;
        match answer.status {
            StatusCode::OK => {
                let got: WireAnswer = answer.json()?;
                Ok(TxnOutcome::Committed(
                    got.results
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|r| r.kv)
                        .collect(),
                ))
            }
            StatusCode::CONFLICT => {
                let got: WireAnswer = answer.json()?;
                match got.errors {
                    Some(errors) if !errors.is_empty() => Ok(TxnOutcome::RolledBack(errors)),
                    _ => Err(ConsulError::Decode {
                        request: answer.request.clone(),
                        reason: "409 without the failed operations".into(),
                    }),
                }
            }
            _ => Err(answer.error()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn operations_go_out_as_consul_reads_them() {
        let ops = [
            KvTxnOp::CheckNotExists { key: "r/1".into() },
            KvTxnOp::Lock {
                key: "l".into(),
                value: b"me".to_vec(),
                session: "s-1".into(),
            },
            KvTxnOp::GetTree { prefix: "w".into() },
            KvTxnOp::Cas {
                key: "c".into(),
                value: Vec::new(),
                index: 0,
            },
        ];
        let wire: Vec<_> = ops.iter().map(KvTxnOp::wire).collect();
        assert_eq!(
            serde_json::to_value(&wire).unwrap(),
            serde_json::json!([
                {"KV": {"Verb": "check-not-exists", "Key": "r/1"}},
                {"KV": {"Verb": "lock", "Key": "l", "Value": "bWU=", "Session": "s-1"}},
                {"KV": {"Verb": "get-tree", "Key": "w"}},
                {"KV": {"Verb": "cas", "Key": "c", "Value": "", "Index": 0}},
            ])
        );
    }
}
