//! `/v1/snapshot`: GET saves the datacenter's state through the leader, as Consul's does. The
//! archive is not Consul's (a gzipped tar of Raft's FSM in msgpack): it is a JSON document of
//! the KV store, `application/octet-stream`, which no real agent would restore. It serves what
//! the simulator is for, a rollout's snapshot step; restore (PUT) is refused, saying so.
//!
//! As real Consul 1.8.7 answered it: 200 with `X-Consul-Index` and `X-Consul-KnownLeader`;
//! POST gets a 405; without a leader the request waits `rpc_hold_timeout` for one, then 500.

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use serde_json::json;

use crate::http::{hold_for_leader, ApiError};
use crate::state::Sim;

/// Registers the route; every method reaches it so a wrong one gets Consul's 405.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/snapshot", web::route().to(snapshot));
}

async fn snapshot(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    match req.method().as_str() {
        "GET" => {}
        "PUT" => {
            return Err(ApiError::bad_request(
                "the simulator does not restore snapshots (its archive is not Consul's)",
            ))
        }
        other => return Err(ApiError::method_not_allowed(other, &["GET", "PUT"])),
    }
    hold_for_leader(&sim, None).await;
    let st = sim.lock();
    if !st.cluster.has_leader() {
        return Err(ApiError::no_leader());
    }
    let (_, entries) = st.kv.list("");
    let kv: Vec<_> = entries
        .iter()
        .map(|e| {
            json!({
                "Key": e.key,
                "Flags": e.flags,
                "Value": base64::engine::general_purpose::STANDARD.encode(&e.value),
            })
        })
        .collect();
    let body = json!({
        "Simulator": "rehydrator-sim snapshot: not Consul's archive format",
        "Index": st.index,
        "Datacenter": st.config.datacenter,
        "KV": kv,
    });
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("X-Consul-Index", st.index.to_string()))
        .insert_header(("X-Consul-KnownLeader", "true"))
        .insert_header(("X-Consul-LastContact", "0"))
        .body(body.to_string()))
}
