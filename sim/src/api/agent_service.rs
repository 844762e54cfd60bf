//! The HTTP agent's own services and TTL checks: `/v1/agent/service/register`, `/deregister`,
//! and `/v1/agent/check/{pass,warn,fail,update}` (what a replica's liveness check uses).
//!
//! As in Consul, the agent keeps these on its node in the catalog, and a TTL check turns
//! `critical` ("TTL expired") when no update came within its TTL; the catalog write then
//! invalidates the sessions tied to it. A check critical for its
//! `DeregisterCriticalServiceAfter` (floor 1m) has its service removed, its checks with it.
//! Answers as Consul 1.8.7's agent gives them, asked while writing this: an unknown check's
//! update is a 500 `CheckID "x" does not have associated TTL`; deregistering an unknown service
//! is a 200; a bad status is a 400 `Invalid check status: 'x'`; registering a service again
//! keeps its existing checks' status and output (a critical one stays critical until passed).
//!
//! Not modelled: checks the agent would run itself (HTTP, TCP, script, gRPC, alias) are refused
//! with a 400 that says so, rather than accepted and left unrun; the agent's anti-entropy delay
//! (its writes reach the catalog at once here); persistence across an agent restart.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::duration;
use crate::fsm::catalog::{apply_check, apply_deregister, apply_register};
use crate::http::{decode_body, only, ApiError, Params};
use crate::state::{Sim, State};
use crate::store::catalog::{CheckEntry, Registration, ServiceEntry, Weights};

/// Consul raises a shorter `DeregisterCriticalServiceAfter` to this.
const REAP_FLOOR: Duration = Duration::from_secs(60);
/// What an expired TTL check says.
const TTL_EXPIRED: &str = "TTL expired";

/// Registers the routes; each takes every method so a wrong one gets Consul's 405.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/agent/service/register", web::route().to(register))
        .route(
            "/v1/agent/service/deregister/{id:.*}",
            web::route().to(deregister),
        )
        .route("/v1/agent/check/pass/{id:.*}", web::route().to(pass))
        .route("/v1/agent/check/warn/{id:.*}", web::route().to(warn))
        .route("/v1/agent/check/fail/{id:.*}", web::route().to(fail))
        .route("/v1/agent/check/update/{id:.*}", web::route().to(update));
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ServiceBody {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    tags: Option<Vec<String>>,
    address: String,
    meta: Option<BTreeMap<String, String>>,
    port: i64,
    check: Option<CheckBody>,
    checks: Option<Vec<CheckBody>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CheckBody {
    #[serde(rename = "CheckID")]
    check_id: String,
    name: String,
    notes: String,
    status: String,
    #[serde(rename = "TTL")]
    ttl: String,
    deregister_critical_service_after: String,
    /// Any other field: a check the agent would run (HTTP, TCP, Args, …).
    #[serde(flatten)]
    other: Map<String, Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct UpdateBody {
    status: String,
    output: String,
}

/// A check ready for the catalog and the agent's timers.
struct NewCheck {
    entry: CheckEntry,
    ttl: Duration,
    reap_after: Option<Duration>,
}

fn valid_status(status: &str) -> Result<(), ApiError> {
    if matches!(status, "passing" | "warning" | "critical") {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid check status: '{status}'"
        )))
    }
}

fn go_duration(field: &str, value: &str) -> Result<Option<Duration>, ApiError> {
    if value.is_empty() {
        return Ok(None);
    }
    duration::parse(value)
        .map(Some)
        .ok_or_else(|| ApiError::bad_request(format!("Invalid {field}: {value:?}")))
}

/// The checks of a registration, with Consul's defaults: ID `service:<id>` (`:<n>` from the
/// second on), name `Service '<name>' check`, status `critical`.
fn checks_of(
    node: &str,
    service: &ServiceEntry,
    body: Vec<CheckBody>,
) -> Result<Vec<NewCheck>, ApiError> {
    let many = body.len() > 1;
    let mut out = Vec::new();
    for (n, c) in body.into_iter().enumerate() {
        if let Some(kind) = c.other.keys().find(|k| !k.eq_ignore_ascii_case("Type")) {
            return Err(ApiError::bad_request(format!(
                "the simulator's agent runs TTL checks only (this check has {kind})"
            )));
        }
        let Some(ttl) = go_duration("TTL", &c.ttl)? else {
            return Err(ApiError::bad_request(
                "the simulator's agent runs TTL checks only (this check has no TTL)",
            ));
        };
        let status = if c.status.is_empty() {
            "critical".to_owned()
        } else {
            c.status
        };
        valid_status(&status)?;
        let reap_after = go_duration(
            "DeregisterCriticalServiceAfter",
            &c.deregister_critical_service_after,
        )?
        .map(|d| d.max(REAP_FLOOR));
        let check_id = match (c.check_id.is_empty(), many) {
            (false, _) => c.check_id,
            (true, false) => format!("service:{}", service.id),
            (true, true) => format!("service:{}:{}", service.id, n + 1),
        };
        let name = if c.name.is_empty() {
            format!("Service '{}' check", service.service)
        } else {
            c.name
        };
        out.push(NewCheck {
            entry: CheckEntry {
                node: node.to_owned(),
                check_id,
                name,
                status,
                notes: c.notes,
                output: String::new(),
                service_id: service.id.clone(),
                service_name: service.service.clone(),
                service_tags: service.tags.clone(),
                kind: "ttl".into(),
                definition: Map::new(),
                create_index: 0,
                modify_index: 0,
            },
            ttl,
            reap_after,
        });
    }
    Ok(out)
}

/// PUT /v1/agent/service/register — a service on the agent's node with its TTL checks,
/// replacing one of the same ID.
async fn register(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let b: ServiceBody = decode_body(&body)?;
    if b.name.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    let mut st = sim.lock();
    let node = st.cluster.agent.name.clone();
    let service = ServiceEntry {
        kind: String::new(),
        id: if b.id.is_empty() {
            b.name.clone()
        } else {
            b.id
        },
        service: b.name,
        tags: b.tags.unwrap_or_default(),
        address: b.address,
        tagged_addresses: None,
        meta: b.meta.unwrap_or_default(),
        port: b.port,
        weights: Weights::default(),
        enable_tag_override: false,
        create_index: 0,
        modify_index: 0,
    };
    let mut checks = checks_of(
        &node,
        &service,
        b.check
            .into_iter()
            .chain(b.checks.unwrap_or_default())
            .collect(),
    )?;
    // A check registered again keeps the status (and output) it had: a critical TTL check
    // stays critical until it is passed, whatever `Status` the registration says.
    for c in &mut checks {
        if let Some(n) = st.catalog.node(&node) {
            if let Some(old) = n.checks.get(&c.entry.check_id) {
                c.entry.status = old.status.clone();
                c.entry.output = old.output.clone();
            }
        }
    }
    // A registration replaces the service's checks: those it no longer has go (and the
    // sessions tied to them); those it keeps are updated in place, their sessions kept.
    let sid = service.id.clone();
    let kept: Vec<&str> = checks.iter().map(|c| c.entry.check_id.as_str()).collect();
    let dropped: Vec<String> = st
        .catalog
        .node(&node)
        .map(|n| {
            n.checks
                .values()
                .filter(|c| c.service_id == sid && !kept.contains(&c.check_id.as_str()))
                .map(|c| c.check_id.clone())
                .collect()
        })
        .unwrap_or_default();
    for check in dropped {
        apply_deregister(&sim, &mut st, &node, None, Some(&check));
    }
    st.ttl_checks.remove_service(&sid);
    let registration = Registration {
        node: node.clone(),
        address: st.cluster.agent.ip.clone(),
        skip_node_update: true,
        service: Some(service),
        checks: checks.iter().map(|c| c.entry.clone()).collect(),
        ..Registration::default()
    };
    apply_register(&sim, &mut st, registration)?;
    for c in checks {
        let id = &c.entry.check_id;
        let generation = st.ttl_checks.insert(id, &sid, c.ttl, c.reap_after);
        arm(
            &sim,
            &st,
            id,
            generation,
            c.ttl,
            c.entry.status == "critical",
        );
    }
    Ok(HttpResponse::Ok().finish())
}

/// Starts check `id`'s timers for `generation`: expiry after `ttl`, and, when it is critical
/// already, the reaping of its service.
fn arm(sim: &Sim, st: &State, id: &str, generation: u64, ttl: Duration, critical: bool) {
    if critical {
        arm_reap(sim, st, id, generation);
        return;
    }
    let id = id.to_owned();
    sim.after_in(st, ttl, move |sim, st| {
        if st.ttl_checks.current(&id, generation).is_none() {
            return; // updated (or removed) since
        }
        let node = st.cluster.agent.name.clone();
        apply_check(sim, st, &node, &id, "critical", TTL_EXPIRED);
        arm_reap(sim, st, &id, generation);
    });
}

/// Removes check `id`'s service once it has stayed critical for its reap time.
fn arm_reap(sim: &Sim, st: &State, id: &str, generation: u64) {
    let Some(reap_after) = st
        .ttl_checks
        .current(id, generation)
        .and_then(|c| c.reap_after)
    else {
        return;
    };
    let id = id.to_owned();
    sim.after_in(st, reap_after, move |sim, st| {
        let Some(check) = st.ttl_checks.current(&id, generation).cloned() else {
            return;
        };
        let node = st.cluster.agent.name.clone();
        apply_deregister(sim, st, &node, Some(&check.service_id), None);
        st.ttl_checks.remove_service(&check.service_id);
    });
}

/// PUT /v1/agent/service/deregister/{id} — removes the service and its checks; an unknown ID
/// is no error.
async fn deregister(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let id = path.into_inner();
    let mut st = sim.lock();
    let node = st.cluster.agent.name.clone();
    apply_deregister(&sim, &mut st, &node, Some(&id), None);
    st.ttl_checks.remove_service(&id);
    Ok(HttpResponse::Ok().finish())
}

/// Sets TTL check `id` to `status` with `output`, restarting its TTL.
fn set_status(sim: &Sim, id: &str, status: &str, output: &str) -> Result<HttpResponse, ApiError> {
    valid_status(status)?;
    let mut st = sim.lock();
    let Some((generation, check)) = st.ttl_checks.touch(id) else {
        return Err(ApiError::internal(format!(
            "CheckID {id:?} does not have associated TTL"
        )));
    };
    let node = st.cluster.agent.name.clone();
    apply_check(sim, &mut st, &node, id, status, output);
    arm(sim, &st, id, generation, check.ttl, status == "critical");
    Ok(HttpResponse::Ok().finish())
}

fn note(req: &HttpRequest) -> String {
    Params::from_request(req)
        .get("note")
        .unwrap_or_default()
        .to_owned()
}

/// PUT /v1/agent/check/pass/{id}(?note=)
async fn pass(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    set_status(&sim, &path.into_inner(), "passing", &note(&req))
}

/// PUT /v1/agent/check/warn/{id}(?note=)
async fn warn(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    set_status(&sim, &path.into_inner(), "warning", &note(&req))
}

/// PUT /v1/agent/check/fail/{id}(?note=)
async fn fail(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    set_status(&sim, &path.into_inner(), "critical", &note(&req))
}

/// PUT /v1/agent/check/update/{id} — `{Status, Output}`.
async fn update(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let b: UpdateBody = decode_body(&body)?;
    set_status(&sim, &path.into_inner(), &b.status, &b.output)
}
