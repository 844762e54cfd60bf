//! TODO(helper B2): /v1/catalog endpoints.

use actix_web::web;

pub fn configure(_cfg: &mut web::ServiceConfig) {}

#[derive(Default)]
pub struct Catalog {}

impl Catalog {
    /// Whether `node` is registered. (Interface used by sessions; B2 implements.)
    pub fn node_exists(&self, _node: &str) -> bool {
        true
    }

    /// The status ("passing", "warning", "critical") of check `check_id` on `node`, if it exists.
    /// (Interface used by sessions; B2 implements.)
    pub fn check_status(&self, _node: &str, _check_id: &str) -> Option<String> {
        Some("passing".into())
    }
}
