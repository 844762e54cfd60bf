//! Consul's `/v1/operator/raft/...` and `/v1/operator/autopilot/...` endpoints over the cluster.
//!
//! Who talks to it: the rollout (is the new server a stable voter? is the cluster healthy? move
//! leadership away from the server about to retire) and operators.
//!
//! Routes:
//! - GET /v1/operator/raft/configuration (?stale) → `{Servers: [{ID, Node, Address, Leader,
//!   ProtocolVersion, Voter, LastIndex}], Index}`
//! - DELETE /v1/operator/raft/peer ?id= or ?address= → 200, empty body
//! - POST /v1/operator/raft/transfer-leader (?id=) → `{"Success": true}`
//! - GET /v1/operator/autopilot/configuration (?stale); PUT with a configuration body (?cas=) →
//!   `true`/`false`
//! - GET /v1/operator/autopilot/health → 200 when healthy, 429 (same body) when not
//! - GET /v1/operator/autopilot/state (?stale)
//!
//! None of these block and, as in Consul, none set X-Consul-* headers. Leader-bound requests
//! without a leader wait up to rpc_hold_timeout for one, then get 500 "No cluster leader";
//! `?stale` reads answer from the local view.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use crate::cluster::{self, AutopilotConfig, Server, TransferError};
use crate::config::TransferFault;
use crate::duration;
use crate::http::{
    hold_for_leader, hold_read, only, ApiError, Consistency, Params, QueryOptions, ReadRequest,
};
use crate::state::{Sim, State};

/// Registers the `/v1/operator` routes; each takes every method so a wrong one gets a 405.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/v1/operator/raft/configuration",
        web::route().to(raft_configuration),
    )
    .route("/v1/operator/raft/peer", web::route().to(raft_peer))
    .route(
        "/v1/operator/raft/transfer-leader",
        web::route().to(transfer_leader),
    )
    .route(
        "/v1/operator/autopilot/configuration",
        web::route().to(autopilot_configuration),
    )
    .route(
        "/v1/operator/autopilot/health",
        web::route().to(autopilot_health),
    )
    .route(
        "/v1/operator/autopilot/state",
        web::route().to(autopilot_state),
    );
}

/// Holds a write for the leader (`?dc` naming another datacenter is not held).
async fn hold_write(sim: &Sim, params: &Params) {
    hold_for_leader(sim, params.get("dc").filter(|d| !d.is_empty())).await;
}

/// A read the leader answers unless `?stale`; checks the datacenter too.
fn read_preconditions(st: &State, opts: &QueryOptions) -> Result<(), ApiError> {
    opts.check_dc(st)?;
    if !st.cluster.has_leader() && opts.consistency != Consistency::Stale {
        return Err(ApiError::no_leader());
    }
    Ok(())
}

/// A write: forwarded to the leader.
fn write_preconditions(st: &State, params: &Params) -> Result<(), ApiError> {
    match params.get("dc").filter(|d| !d.is_empty()) {
        Some(dc) if dc != st.config.datacenter => Err(ApiError::internal("No path to datacenter")),
        _ if !st.cluster.has_leader() => Err(ApiError::no_leader()),
        _ => Ok(()),
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    match serde_json::to_vec(body) {
        Ok(bytes) => HttpResponse::build(status)
            .content_type("application/json")
            .body(bytes),
        Err(e) => actix_web::ResponseError::error_response(&ApiError::internal(e.to_string())),
    }
}

// ---- raft ----------------------------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RaftServerJson {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    leader: bool,
    protocol_version: &'static str,
    voter: bool,
    last_index: u64,
}

/// GET /v1/operator/raft/configuration — the Raft peers (voters and non-voters).
async fn raft_configuration(
    sim: web::Data<Sim>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let ReadRequest { opts, .. } = ReadRequest::get(&req)?;
    hold_read(&sim, &opts).await;
    let st = sim.lock();
    read_preconditions(&st, &opts)?;
    let c = &st.cluster;
    let servers: Vec<RaftServerJson> = c
        .raft_servers()
        .map(|s| RaftServerJson {
            id: s.id.clone(),
            // A peer serf no longer knows shows as "(unknown)" in Consul.
            node: if s.is_member() {
                s.name.clone()
            } else {
                "(unknown)".into()
            },
            address: s.address(),
            leader: c.leader.as_deref() == Some(s.name.as_str()),
            protocol_version: "3",
            voter: s.voter,
            last_index: c.server_last_index(s, st.index),
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"Servers": servers, "Index": c.config_index}),
    ))
}

/// DELETE /v1/operator/raft/peer?id=|?address= — removes a peer from the configuration.
async fn raft_peer(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "DELETE")?;
    let params = Params::from_request(&req);
    let (id, address) = (params.get("id"), params.get("address"));
    if id.is_some() != address.is_some() {
        hold_write(&sim, &params).await;
    }
    let mut st = sim.lock();
    match (id, address) {
        (None, None) => {
            return Err(ApiError::bad_request(
                "Must specify either ?id with the server's ID or ?address with IP:port of peer to remove",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "Must specify only one of ?id or ?address",
            ))
        }
        _ => {}
    }
    write_preconditions(&st, &params)?;
    let target = match (id, address) {
        (Some(id), _) => st
            .cluster
            .raft_servers()
            .find(|s| s.id == id)
            .map(|s| s.id.clone())
            .ok_or_else(|| {
                ApiError::internal(format!("id {id:?} was not found in the Raft configuration"))
            })?,
        (_, Some(addr)) => st
            .cluster
            .raft_servers()
            .find(|s| s.address() == addr)
            .map(|s| s.id.clone())
            .ok_or_else(|| {
                ApiError::internal(format!(
                    "address {addr:?} was not found in the Raft configuration"
                ))
            })?,
        _ => {
            return Err(ApiError::bad_request(
                "Must specify only one of ?id or ?address",
            ))
        }
    };
    cluster::remove_peer(&sim, &mut st, &target);
    Ok(HttpResponse::Ok().finish())
}

/// POST /v1/operator/raft/transfer-leader(?id=) — moves leadership (Consul 1.15+).
async fn transfer_leader(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if !sim.lock().config.consul_at_least(1, 15) {
        // Before 1.15 the route does not exist: Go's mux answers a bare 404.
        return Ok(HttpResponse::NotFound().finish());
    }
    only(&req, "POST")?;
    let params = Params::from_request(&req);
    hold_write(&sim, &params).await;
    let mut st = sim.lock();
    write_preconditions(&st, &params)?;
    let id = params.get("id");
    let moved = match st.config.transfer_fault {
        // Consul's bug: success reported, nothing moved.
        TransferFault::Noop if st.cluster.has_leader() => Ok(()),
        TransferFault::Elsewhere => {
            let other = id.and_then(|named| cluster::another_voter(&st, named));
            cluster::transfer_leader(&sim, &mut st, other.as_deref().or(id))
        }
        _ => cluster::transfer_leader(&sim, &mut st, id),
    };
    match moved {
        Ok(()) => Ok(json_response(StatusCode::OK, &json!({"Success": true}))),
        Err(TransferError::NoLeader) => Err(ApiError::no_leader()),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

// ---- autopilot -----------------------------------------------------------------------------

/// `api.AutopilotConfiguration` as Consul sends it (durations as Go strings).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AutopilotConfigJson {
    cleanup_dead_servers: bool,
    last_contact_threshold: String,
    max_trailing_logs: u64,
    min_quorum: u64,
    server_stabilization_time: String,
    redundancy_zone_tag: String,
    disable_upgrade_migration: bool,
    upgrade_version_tag: String,
    create_index: u64,
    modify_index: u64,
}

impl From<&AutopilotConfig> for AutopilotConfigJson {
    fn from(c: &AutopilotConfig) -> Self {
        Self {
            cleanup_dead_servers: c.cleanup_dead_servers,
            last_contact_threshold: duration::format(c.last_contact_threshold),
            max_trailing_logs: c.max_trailing_logs,
            min_quorum: c.min_quorum,
            server_stabilization_time: duration::format(c.server_stabilization_time),
            redundancy_zone_tag: c.redundancy_zone_tag.clone(),
            disable_upgrade_migration: c.disable_upgrade_migration,
            upgrade_version_tag: c.upgrade_version_tag.clone(),
            create_index: c.create_index,
            modify_index: c.modify_index,
        }
    }
}

/// A `ReadableDuration`: a Go duration string, or a number of nanoseconds.
fn readable_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match Value::deserialize(d)? {
        // A nil *ReadableDuration reads as zero.
        Value::Null => Ok(Duration::ZERO),
        Value::String(s) => duration::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("time: invalid duration {s:?}"))),
        Value::Number(n) => n
            .as_f64()
            .filter(|v| *v >= 0.0)
            .map(|v| Duration::from_nanos(v as u64))
            .ok_or_else(|| serde::de::Error::custom("invalid duration")),
        other => Err(serde::de::Error::custom(format!(
            "invalid duration {other}"
        ))),
    }
}

/// The PUT body. Consul decodes it into a zero `api.AutopilotConfiguration` and writes that
/// whole: an absent field is false, 0 or "0s", not the default (`consul operator autopilot
/// set-config` reads the configuration first for this reason).
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct AutopilotConfigBody {
    cleanup_dead_servers: bool,
    #[serde(deserialize_with = "readable_duration")]
    last_contact_threshold: Duration,
    max_trailing_logs: u64,
    min_quorum: u64,
    #[serde(deserialize_with = "readable_duration")]
    server_stabilization_time: Duration,
    redundancy_zone_tag: String,
    disable_upgrade_migration: bool,
    upgrade_version_tag: String,
}

/// GET|PUT /v1/operator/autopilot/configuration.
async fn autopilot_configuration(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    match *req.method() {
        Method::GET => {
            let opts = QueryOptions::from_request(&req)?;
            hold_read(&sim, &opts).await;
            let st = sim.lock();
            read_preconditions(&st, &opts)?;
            Ok(json_response(
                StatusCode::OK,
                &AutopilotConfigJson::from(&st.cluster.autopilot),
            ))
        }
        Method::PUT => {
            let params = Params::from_request(&req);
            // Consul before 1.11 returned these as BadRequestError, whose text is prefixed
            // "Bad request: " (real 1.8.7 answers so; 1.10 still did); later ones as
            // HTTPError with the bare reason. 1.11 as the switch is an estimate.
            let prefix = if sim.lock().config.consul_at_least(1, 11) {
                ""
            } else {
                "Bad request: "
            };
            let b: AutopilotConfigBody = serde_json::from_slice(&body).map_err(|e| {
                ApiError::bad_request(format!("{prefix}Error parsing autopilot config: {e}"))
            })?;
            let cas = match params.get("cas") {
                None => None,
                Some(v) => Some(v.parse::<u64>().map_err(|e| {
                    ApiError::bad_request(format!("{prefix}Error parsing cas value: {e}"))
                })?),
            };
            hold_write(&sim, &params).await;
            let mut st = sim.lock();
            write_preconditions(&st, &params)?;
            if cas.is_some_and(|c| c != st.cluster.autopilot.modify_index) {
                return Ok(json_response(StatusCode::OK, &false));
            }
            let idx = st.next_index();
            let ap = &mut st.cluster.autopilot;
            ap.cleanup_dead_servers = b.cleanup_dead_servers;
            ap.last_contact_threshold = b.last_contact_threshold;
            ap.max_trailing_logs = b.max_trailing_logs;
            ap.min_quorum = b.min_quorum;
            ap.server_stabilization_time = b.server_stabilization_time;
            ap.redundancy_zone_tag = b.redundancy_zone_tag;
            ap.disable_upgrade_migration = b.disable_upgrade_migration;
            ap.upgrade_version_tag = b.upgrade_version_tag;
            ap.modify_index = idx;
            cluster::reconcile(&sim, &mut st);
            Ok(json_response(StatusCode::OK, &true))
        }
        _ => Err(ApiError::method_not_allowed(
            req.method().as_str(),
            &["GET", "PUT"],
        )),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServerHealthJson {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    address: String,
    serf_status: &'static str,
    version: String,
    leader: bool,
    last_contact: String,
    last_term: u64,
    last_index: u64,
    healthy: bool,
    voter: bool,
    stable_since: String,
}

/// GET /v1/operator/autopilot/health — 429 with the same body when anything is unhealthy.
async fn autopilot_health(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let ReadRequest { opts, .. } = ReadRequest::get(&req)?;
    // Consul forces this one to the leader, ?stale or not: it is held and answered there.
    hold_for_leader(&sim, opts.dc.as_deref()).await;
    let st = sim.lock();
    opts.check_dc(&st)?;
    if !st.cluster.has_leader() {
        return Err(ApiError::no_leader());
    }
    let c = &st.cluster;
    let servers: Vec<ServerHealthJson> = c
        .raft_servers()
        .map(|s| ServerHealthJson {
            id: s.id.clone(),
            name: s.name.clone(),
            address: s.address(),
            serf_status: s.serf.as_str(),
            version: st.config.consul_version.clone(),
            leader: c.leader.as_deref() == Some(s.name.as_str()),
            // Real 1.8.7 answers "-1ns" (no contact) for a failed server.
            last_contact: if s.serf == cluster::SerfStatus::Failed {
                "-1ns".to_owned()
            } else {
                duration::format(c.server_last_contact(s))
            },
            last_term: s.last_term,
            last_index: c.server_last_index(s, st.index),
            healthy: s.healthy(),
            voter: s.voter,
            stable_since: cluster::rfc3339(s.stable_since_wall, true),
        })
        .collect();
    let healthy = c.healthy();
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    Ok(json_response(
        status,
        &json!({
            "Healthy": healthy,
            "FailureTolerance": c.failure_tolerance(),
            "Servers": servers,
        }),
    ))
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AutopilotServerJson {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    address: String,
    node_status: &'static str,
    version: String,
    last_contact: String,
    last_term: u64,
    last_index: u64,
    healthy: bool,
    stable_since: String,
    read_replica: bool,
    status: &'static str,
    meta: Option<BTreeMap<String, String>>,
    node_type: &'static str,
}

/// GET /v1/operator/autopilot/state — autopilot's full view (Consul 1.9+).
async fn autopilot_state(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if !sim.lock().config.consul_at_least(1, 9) {
        return Ok(HttpResponse::NotFound().finish());
    }
    let ReadRequest { opts, .. } = ReadRequest::get(&req)?;
    hold_read(&sim, &opts).await;
    let st = sim.lock();
    opts.check_dc(&st)?;
    if !st.cluster.has_leader() {
        // Only the leader runs autopilot; a follower answering ?stale has no state.
        return Err(if opts.consistency == Consistency::Stale {
            ApiError::internal("Failed to get autopilot state: no state found")
        } else {
            ApiError::no_leader()
        });
    }
    let c = &st.cluster;
    let is_leader = |s: &Server| c.leader.as_deref() == Some(s.name.as_str());
    let servers: BTreeMap<String, AutopilotServerJson> = c
        .raft_servers()
        .map(|s| {
            let status = if is_leader(s) {
                "leader"
            } else if s.voter {
                "voter"
            } else {
                "non-voter"
            };
            let json = AutopilotServerJson {
                id: s.id.clone(),
                name: s.name.clone(),
                address: s.address(),
                node_status: s.serf.as_str(),
                version: st.config.consul_version.clone(),
                last_contact: duration::format(c.server_last_contact(s)),
                last_term: s.last_term,
                last_index: c.server_last_index(s, st.index),
                healthy: s.healthy(),
                stable_since: cluster::rfc3339(s.stable_since_wall, false),
                read_replica: false,
                status,
                meta: st.catalog.node(&s.name).map(|n| n.meta.clone()),
                node_type: "voter",
            };
            (s.id.clone(), json)
        })
        .collect();
    // Autopilot sorts voters: the leader, then healthy ones, longest stable first.
    let mut voters: Vec<&Server> = c.raft_servers().filter(|s| s.voter).collect();
    voters.sort_by(|a, b| {
        is_leader(b)
            .cmp(&is_leader(a))
            .then(b.healthy().cmp(&a.healthy()))
            .then(a.stable_since.cmp(&b.stable_since))
    });
    let ft = c.failure_tolerance();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "Healthy": c.healthy(),
            "FailureTolerance": ft,
            // Consul CE reports the two as equal (no redundancy zones to be optimistic about).
            "OptimisticFailureTolerance": ft,
            "Servers": servers,
            "Leader": c.leader_server().map(|s| s.id.clone()).unwrap_or_default(),
            "Voters": voters.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        }),
    ))
}

#[cfg(test)]
mod http_tests {
    use crate::testkit::{bounded, Api};

    #[actix_rt::test]
    async fn an_autopilot_put_zeroes_the_fields_it_leaves_out() {
        bounded(async {
            let api = Api::start(1.0);
            let r = api
                .put(
                    "/v1/operator/autopilot/configuration",
                    br#"{"CleanupDeadServers": true}"#,
                )
                .await;
            assert_eq!((r.status, r.text()), (200, "true".into()));
            let c = api.get("/v1/operator/autopilot/configuration").await.json();
            // Consul decodes the body into a zero api.AutopilotConfiguration, not into
            // NewAutopilotConfiguration()'s defaults: what is absent is written as zero.
            assert_eq!(c["CleanupDeadServers"], true, "{c}");
            assert_eq!(c["LastContactThreshold"], "0s", "{c}");
            assert_eq!(c["MaxTrailingLogs"], 0, "{c}");
            assert_eq!(c["ServerStabilizationTime"], "0s", "{c}");
        })
        .await;
    }
}
