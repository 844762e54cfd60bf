//! Consul's `/v1/agent/...` endpoints for the agent that serves the HTTP API: a client agent
//! (node `SimConfig.agent_node`), never a server, whose serf view is the whole cluster's.
//!
//! Who talks to it: clients asking who they talk to (`self`), the serf member list (`members`,
//! which the rollout may use to see servers fail or leave), and operators (`leave`,
//! `force-leave`). Nothing here blocks or needs a leader.
//!
//! Routes:
//! - GET /v1/agent/self → `{Config, Coord, Member, Meta, Stats}`
//! - GET /v1/agent/members (?wan) → serf members: Status 1 alive, 3 left, 4 failed
//! - PUT /v1/agent/leave → the agent leaves gracefully: serf `left`, its node is deregistered by
//!   the leader and its sessions are invalidated. A real agent then shuts down; the simulator
//!   keeps serving HTTP (its node simply stays out of the cluster).
//! - PUT /v1/agent/force-leave/{node} (?prune) → a failed member becomes `left` (a server then
//!   leaves Raft and the catalog); `?prune` also drops it from the member list. An alive member
//!   refutes the intent, an unknown name is a no-op, as in serf.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::json;

use crate::cluster::{self, SerfStatus, Server, RAFT_PORT, SERF_LAN_PORT};
use crate::http::{only, ApiError, Params};
use crate::state::{Sim, State};

/// Registers the `/v1/agent` routes; each takes every method so a wrong one gets a 405.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/agent/self", web::route().to(agent_self))
        .route("/v1/agent/members", web::route().to(members))
        .route("/v1/agent/leave", web::route().to(leave))
        .route(
            "/v1/agent/force-leave/{node:.*}",
            web::route().to(force_leave),
        );
}

/// `serf.Member` as `/v1/agent/members` sends it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct MemberJson {
    name: String,
    addr: String,
    port: u16,
    tags: BTreeMap<&'static str, String>,
    status: u8,
    protocol_min: u8,
    protocol_max: u8,
    protocol_cur: u8,
    delegate_min: u8,
    delegate_max: u8,
    delegate_cur: u8,
}

fn member(
    name: &str,
    addr: &str,
    port: u16,
    tags: BTreeMap<&'static str, String>,
    status: SerfStatus,
) -> MemberJson {
    MemberJson {
        name: name.to_owned(),
        addr: addr.to_owned(),
        port,
        tags,
        status: status.code(),
        protocol_min: 1,
        protocol_max: 5,
        protocol_cur: 2,
        delegate_min: 2,
        delegate_max: 5,
        delegate_cur: 4,
    }
}

/// The serf tags a Consul agent gossips.
fn common_tags(dc: &str, id: &str, role: &str, version: &str) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("build", format!("{version}:sim")),
        ("dc", dc.to_owned()),
        ("ft_fs", "1".to_owned()),
        ("ft_si", "1".to_owned()),
        ("id", id.to_owned()),
        ("role", role.to_owned()),
        ("segment", String::new()),
        ("vsn", "2".to_owned()),
        ("vsn_max", "3".to_owned()),
        ("vsn_min", "2".to_owned()),
    ])
}

fn server_member(s: &Server, dc: &str, wan: bool, version: &str) -> MemberJson {
    let mut tags = common_tags(dc, &s.id, "consul", version);
    tags.insert("port", RAFT_PORT.to_string());
    tags.insert("raft_vsn", "3".to_owned());
    tags.insert("wan_join_port", "8302".to_owned());
    tags.insert("acls", "0".to_owned());
    let (name, port) = if wan {
        (format!("{}.{dc}", s.name), 8302)
    } else {
        (s.name.clone(), SERF_LAN_PORT)
    };
    member(&name, &s.ip, port, tags, s.serf)
}

fn agent_member(st: &State) -> MemberJson {
    let a = &st.cluster.agent;
    let tags = common_tags(
        &st.config.datacenter,
        &a.id,
        "node",
        &st.config.consul_version,
    );
    member(&a.name, &a.ip, SERF_LAN_PORT, tags, a.serf)
}

/// GET /v1/agent/self — the agent's configuration and its own serf member.
async fn agent_self(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "GET")?;
    let st = sim.lock();
    let a = &st.cluster.agent;
    let known_servers = st
        .cluster
        .servers
        .iter()
        .filter(|s| s.serf == SerfStatus::Alive)
        .count()
        .to_string();
    Ok(HttpResponse::Ok().json(json!({
        "Config": {
            "Datacenter": st.config.datacenter,
            "PrimaryDatacenter": st.config.datacenter,
            "NodeName": a.name,
            "NodeID": a.id,
            "Revision": "sim",
            "Server": false,
            "Version": st.config.consul_version,
            "BuildDate": "2024-01-01T00:00:00Z",
        },
        "Coord": {"Vec": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
        "Member": agent_member(&st),
        "Meta": {"consul-network-segment": "", "consul-version": st.config.consul_version},
        "Stats": {
            "agent": {"check_monitors": "0", "check_ttls": "0", "checks": "0", "services": "0"},
            "consul": {"known_servers": known_servers, "server": "false"},
        },
    })))
}

/// GET /v1/agent/members — the LAN members (servers and this agent); `?wan` the WAN pool, which
/// a client agent does not join (`null`).
async fn members(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "GET")?;
    let params = Params::from_request(&req);
    let st = sim.lock();
    if params.has("wan") {
        return Ok(HttpResponse::Ok().json(serde_json::Value::Null));
    }
    let dc = st.config.datacenter.as_str();
    let mut list: Vec<MemberJson> = st
        .cluster
        .servers
        .iter()
        .filter(|s| s.is_member())
        .map(|s| server_member(s, dc, false, &st.config.consul_version))
        .collect();
    list.push(agent_member(&st));
    Ok(HttpResponse::Ok().json(list))
}

/// PUT /v1/agent/leave — the agent leaves the cluster gracefully (see the module notes).
async fn leave(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let mut st = sim.lock();
    cluster::agent_leave(&sim, &mut st);
    Ok(HttpResponse::Ok().finish())
}

/// PUT /v1/agent/force-leave/{node}(?prune) — see the module notes.
async fn force_leave(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let params = Params::from_request(&req);
    let node = path.into_inner();
    let mut st = sim.lock();
    cluster::force_leave(&sim, &mut st, &node, params.has("prune"));
    Ok(HttpResponse::Ok().finish())
}
