//! TODO(helper B1): /v1/session endpoints.

use actix_web::web;

pub fn configure(_cfg: &mut web::ServiceConfig) {}

#[derive(Default)]
pub struct Sessions {}

/// Invalidates the sessions bound to `node` — all of them when `check_id` is None (the node was
/// deregistered or failed), else those that list `check_id` among their checks — applying each
/// session's Behavior and lock-delay. Called by the cluster/catalog when a check goes critical.
/// (Interface used by the catalog; B1 implements.)
pub fn invalidate_for_node(
    _sim: &crate::state::Sim,
    _st: &mut crate::state::State,
    _node: &str,
    _check_id: Option<&str>,
) {
}
