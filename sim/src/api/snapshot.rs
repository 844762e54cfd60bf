//! `/v1/snapshot`: GET saves the datacenter's state through the leader, as Consul's does; PUT
//! restores a saved one. The archive is not Consul's (a gzipped tar of Raft's FSM in msgpack):
//! it is a JSON document of the KV store, `application/octet-stream`, which no real agent
//! would restore, and the simulator restores only its own. A restore replaces the whole KV
//! store with the archive's, as Consul's replaces its state; the archive keeps no sessions, so
//! a lock comes back free.
//!
//! As real Consul 1.8.7 answered it: a save is 200 with `X-Consul-Index` and
//! `X-Consul-KnownLeader`; a restore is 200 with an empty body, and an archive it cannot read
//! is 500 "failed to decompress snapshot: …"; POST gets a 405; without a leader the request
//! waits `rpc_hold_timeout` for one, then 500.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use crate::http::{hold_for_leader, ApiError};
use crate::state::Sim;
use crate::watch::Change;

/// Registers the route; every method reaches it so a wrong one gets Consul's 405.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/snapshot", web::route().to(snapshot));
}

/// What a saved archive says of its KV store.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Archive {
    simulator: String,
    #[serde(rename = "KV")]
    kv: Vec<ArchivedEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchivedEntry {
    key: String,
    #[serde(default)]
    flags: u64,
    value: String,
}

const MARK: &str = "rehydrator-sim snapshot: not Consul's archive format";

/// The archive's entries, decoded; why not, in the words Consul's 500 uses.
fn read_archive(body: &[u8]) -> Result<Vec<(String, u64, Vec<u8>)>, ApiError> {
    let refuse = |why: String| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to decompress snapshot: {why}"),
        )
    };
    let archive: Archive = serde_json::from_slice(body).map_err(|e| {
        refuse(format!(
            "not an archive the simulator saved (it restores only its own): {e}"
        ))
    })?;
    if archive.simulator != MARK {
        return Err(refuse("not an archive the simulator saved".into()));
    }
    archive
        .kv
        .into_iter()
        .map(|e| {
            let value = base64::engine::general_purpose::STANDARD
                .decode(&e.value)
                .map_err(|err| refuse(format!("key {:?}: {err}", e.key)))?;
            Ok((e.key, e.flags, value))
        })
        .collect()
}

async fn snapshot(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    match req.method().as_str() {
        "GET" => {}
        "PUT" => return restore(&sim, &body).await,
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
        "Simulator": MARK,
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

/// Replaces the KV store with the archive's, at one index, waking the readers of every key
/// that went or came.
async fn restore(sim: &Sim, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let entries = read_archive(body)?;
    hold_for_leader(sim, None).await;
    let mut st = sim.lock();
    if !st.cluster.has_leader() {
        return Err(ApiError::no_leader());
    }
    let idx = st.next_index();
    let mut changed = st.kv.delete_tree(idx, "");
    for (key, flags, value) in entries {
        st.kv.set(idx, &key, value, flags);
        changed.push(key);
    }
    changed.sort();
    changed.dedup();
    st.notify(Change {
        keys: changed,
        tables: Vec::new(),
    });
    Ok(HttpResponse::Ok().finish())
}
