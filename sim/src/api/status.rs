//! Consul's `/v1/status/...` endpoints: the Raft leader's address and the voters' addresses.
//!
//! Who talks to it: clients checking that the cluster has a leader, and the tests' "still
//! serving" probe. Like Consul, these are answered from the serving server's own Raft view:
//! no leader is needed, no blocking, no X-Consul-* headers.
//!
//! Routes (GET only): /v1/status/leader → `"ip:8300"` or `""`; /v1/status/peers → voters'
//! addresses.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::http::{only, ApiError, QueryOptions};
use crate::state::Sim;

/// Registers the `/v1/status` routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/status/leader", web::route().to(leader))
        .route("/v1/status/peers", web::route().to(peers));
}

/// GET /v1/status/leader — the leader's Raft address as a JSON string, `""` without one.
async fn leader(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "GET")?;
    let opts = QueryOptions::from_request(&req)?;
    let st = sim.lock();
    opts.check_dc(&st)?;
    let addr = st
        .cluster
        .leader_server()
        .map(|s| s.address())
        .unwrap_or_default();
    Ok(HttpResponse::Ok().json(addr))
}

/// GET /v1/status/peers — the Raft addresses of the voters.
async fn peers(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "GET")?;
    let opts = QueryOptions::from_request(&req)?;
    let st = sim.lock();
    opts.check_dc(&st)?;
    let list: Vec<String> = st
        .cluster
        .raft_servers()
        .filter(|s| s.voter)
        .map(|s| s.address())
        .collect();
    Ok(HttpResponse::Ok().json(list))
}
