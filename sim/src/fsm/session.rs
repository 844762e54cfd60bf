//! Session writes as Consul's servers apply them (`agent/consul/session_endpoint.go`,
//! `session_ttl.go`, the state store's `deleteSessionTxn`): create with the server's checks,
//! renew, destroy, and invalidation, which releases or deletes the session's keys under their
//! lock-delay and wakes what read them. TTL timers fire at TTL × 2 through `Sim::after_in`; the
//! cluster calls `invalidate_for_node` when a node fails or one of its checks goes critical.

use crate::fsm::kv::lock_delay_until;
use crate::http::ApiError;
use crate::state::{Sim, State};
use crate::store::session::{Behavior, CreateRequest, Session, TTL_MAX, TTL_MIN, TTL_MULTIPLIER};
use crate::watch::{Change, Topic};

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
    let doomed: Vec<String> = st.sessions.bound_to(node, check_id);
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
    let until = session.lock_delay().map(|d| lock_delay_until(st, d));
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
    let ids = st.sessions.ids();
    for id in ids {
        arm_timer(sim, st, &id);
    }
}
