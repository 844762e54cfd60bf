//! Catalog writes as the leader applies them: one Raft index when something changed, the
//! blocking queries woken, and the sessions a removed node or a critical check invalidates.
//! Called by the catalog endpoints and by the cluster's member reconcile.

use crate::http::ApiError;
use crate::state::{Sim, State};
use crate::store::catalog::{Registration, Written};
use crate::watch::{Change, Topic};

/// Notifies watchers of a catalog write and kills the sessions it invalidated.
pub fn after_write(sim: &Sim, st: &mut State, w: Written) {
    let mut change = Change::default();
    if w.catalog {
        change = change.and(Topic::Catalog);
    }
    if w.checks {
        change = change.and(Topic::Checks);
    }
    if !change.tables.is_empty() {
        st.notify(change);
    }
    for node in &w.deleted_nodes {
        crate::fsm::session::invalidate_for_node(sim, st, node, None);
    }
    for (node, check) in w.deleted_checks.iter().chain(w.critical.iter()) {
        crate::fsm::session::invalidate_for_node(sim, st, node, Some(check));
    }
}

/// Registers at a fresh index, then notifies and invalidates.
pub fn apply_register(sim: &Sim, st: &mut State, reg: Registration) -> Result<(), ApiError> {
    let idx = st.index + 1;
    let w = st.catalog.register(idx, reg).map_err(ApiError::internal)?;
    if w.catalog || w.checks {
        st.next_index();
    }
    after_write(sim, st, w);
    Ok(())
}

/// Deregisters at a fresh index, then notifies and invalidates.
pub fn apply_deregister(
    sim: &Sim,
    st: &mut State,
    node: &str,
    service_id: Option<&str>,
    check_id: Option<&str>,
) {
    let idx = st.index + 1;
    let w = st.catalog.deregister(idx, node, service_id, check_id);
    if w.catalog || w.checks {
        st.next_index();
    }
    after_write(sim, st, w);
}

/// Updates one check at a fresh index, then notifies and invalidates.
pub fn apply_check(
    sim: &Sim,
    st: &mut State,
    node: &str,
    check_id: &str,
    status: &str,
    output: &str,
) {
    let idx = st.index + 1;
    let w = st.catalog.set_check(idx, node, check_id, status, output);
    if w.checks {
        st.next_index();
    }
    after_write(sim, st, w);
}
