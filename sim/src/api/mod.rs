//! Consul's HTTP API (`/v1/...`), one module per endpoint group as Consul's docs group them.

use actix_web::web;

pub mod acl;
pub mod agent;
pub mod agent_service;
pub mod catalog;
pub mod event;
pub mod health;
pub mod kv;
pub mod operator;
pub mod session;
pub mod shapes;
pub mod snapshot;
pub mod status;
pub mod txn;

/// Registers every `/v1` route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    kv::configure(cfg);
    session::configure(cfg);
    event::configure(cfg);
    catalog::configure(cfg);
    health::configure(cfg);
    agent::configure(cfg);
    agent_service::configure(cfg);
    status::configure(cfg);
    operator::configure(cfg);
    txn::configure(cfg);
    snapshot::configure(cfg);
    acl::configure(cfg);
}
