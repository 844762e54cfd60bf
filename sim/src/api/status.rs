//! Consul's `/v1/status/...` endpoints: the Raft leader's address and the Raft peers' addresses.
//!
//! Who talks to it: clients checking that the cluster has a leader, and the tests' "still
//! serving" probe. Like Consul, these are answered from the serving server's own Raft view:
//! no leader is needed, no blocking, no X-Consul-* headers.
//!
//! Routes (GET only): /v1/status/leader → `"ip:8300"` or `""`; /v1/status/peers → the
//! addresses of every server in the Raft configuration, voters and non-voters alike (Consul's
//! `Status.Peers` lists the configuration without looking at suffrage).

use actix_web::{web, HttpRequest, HttpResponse};

use crate::http::{ApiError, ReadRequest};
use crate::state::Sim;

/// Registers the `/v1/status` routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/status/leader", web::route().to(leader))
        .route("/v1/status/peers", web::route().to(peers));
}

/// GET /v1/status/leader — the leader's Raft address as a JSON string, `""` without one.
async fn leader(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let ReadRequest { opts, .. } = ReadRequest::get(&req)?;
    let st = sim.lock();
    opts.check_dc(&st)?;
    let addr = st
        .cluster
        .leader_server()
        .map(|s| s.address())
        .unwrap_or_default();
    Ok(HttpResponse::Ok().json(addr))
}

/// GET /v1/status/peers — the Raft addresses of every peer in the configuration. A server
/// autopilot has not yet promoted is listed too: clients that count peers must not read this
/// as the voter count.
async fn peers(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let ReadRequest { opts, .. } = ReadRequest::get(&req)?;
    let st = sim.lock();
    opts.check_dc(&st)?;
    let list: Vec<String> = st.cluster.raft_servers().map(|s| s.address()).collect();
    Ok(HttpResponse::Ok().json(list))
}

#[cfg(test)]
mod tests {
    use crate::testkit::{bounded, Api};

    #[actix_rt::test]
    async fn every_consul_endpoint_answers_with_the_default_acl_policy() {
        bounded(async {
            let api = Api::start(1.0);
            let header = |r: &crate::testkit::Resp| r.header("X-Consul-Default-ACL-Policy");
            for path in ["/v1/status/leader", "/v1/kv/missing", "/v1/session/list"] {
                let r = api.get(path).await;
                assert_eq!(header(&r).as_deref(), Some("allow"), "{path}: {}", r.status);
            }
            let r = api
                .call(actix_web::http::Method::POST, "/v1/kv/k", b"")
                .await;
            assert_eq!((r.status, header(&r).as_deref()), (405, Some("allow")));
            let r = api.put("/v1/session/create", b"[").await;
            assert_eq!((r.status, header(&r).as_deref()), (400, Some("allow")));
            // Paths Consul does not route fall to its unwrapped index handler.
            let r = api.get("/v1/no/such/endpoint").await;
            assert_eq!((r.status, header(&r)), (404, None));
        })
        .await;
    }

    #[actix_rt::test]
    async fn peers_lists_non_voters_too() {
        bounded(async {
            let api = Api::start(1.0);
            let demoted = {
                let mut st = api.sim().lock();
                let s = st
                    .cluster
                    .servers
                    .last_mut()
                    .unwrap_or_else(|| panic!("the simulator booted no servers"));
                s.voter = false;
                s.address()
            };
            let r = api.get("/v1/status/peers").await;
            assert_eq!(r.status, 200, "{}", r.text());
            let peers = r.json();
            let peers = peers.as_array().cloned().unwrap_or_default();
            assert_eq!(peers.len(), 3, "{peers:?}");
            assert!(
                peers.iter().any(|p| p == demoted.as_str()),
                "the non-voter {demoted} is missing from {peers:?}"
            );
        })
        .await;
    }
}
