//! KV writes as the leader applies them (`KVS.Apply` and its FSM step): the lock-delay and
//! session checks, one Raft index, the table's rules (`store::kv`), and the blocking queries
//! woken for the keys that changed.

use std::time::Duration;

use tokio::time::Instant;

use crate::http::ApiError;
use crate::state::State;
use crate::store::kv::{KvOp, KvStore};
use crate::store::session::MAX_LOCK_DELAY;
use crate::watch::Change;

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

/// How long a lock-delay of `delay` (simulated) lasts on the wall clock, capped as Consul caps
/// it at 60s.
pub fn lock_delay_until(st: &State, delay: Duration) -> Instant {
    Instant::now() + st.config.scaled(delay.min(MAX_LOCK_DELAY))
}
