//! The simulated Auto Scaling group's control API under `/sim/group` (the group itself is
//! `cluster::group`). Like the rest of `/sim`, JSON in and out, errors as `{"error": ...}`.
//!
//! - `POST /sim/group` `{"name"?, "min"?, "max"?, "desired"?, "image"?, "zones"?, "placement"?:
//!   {"<server>": "<zone>"}, "hooks"?: [{"name", "transition": "launching"|"terminating",
//!   "heartbeat_timeout_ms"?, "default_result"?: "CONTINUE"|"ABANDON"}], "suspended"?: [...]}`
//!   → 201 `Group`: a group over every server whose machine is not terminated, in service,
//!   their zones from `placement` else round robin over `zones` (default three). `desired`
//!   defaults to their count, `min` to it, `max` to it + 1, `image` to the newest server's. A
//!   group made again replaces the old one.
//! - `GET /sim/group` → `Group` (404 without one): `{"name", "min", "max", "desired", "image",
//!   "zones", "suspended", "hooks", "members": [{"name", "zone", "lifecycle": "Pending:Wait"|
//!   "InService"|"Terminating:Wait", "protected", "image", "cause", "pending_hooks"}],
//!   "refresh": {"min_healthy_percentage", "max_healthy_percentage", "status"}|null}`.
//! - `PUT /sim/group` `{"desired"?, "min"?, "max"?, "image"?, "suspended"?, "protected"?:
//!   ["<server>", ...]}` → `Group`: UpdateAutoScalingGroup and kin. `image` must be registered;
//!   `suspended` replaces the suspended processes; `protected` sets scale-in protection on those
//!   members (and off on the others).
//! - `POST /sim/group/refresh` `{"min_healthy_percentage"? (90), "max_healthy_percentage"?
//!   (100), "warmup_ms"? (0)}` → `Group`: StartInstanceRefresh. Above 100 the maximum launches
//!   before it terminates.
//! - `POST /sim/group/lifecycle` `{"instance", "hook", "result": "CONTINUE"|"ABANDON"}` →
//!   `Group`: CompleteLifecycleAction; 404 when the instance waits on no such hook.
//! - `POST /sim/group/heartbeat` `{"instance", "hook"}` → `Group`:
//!   RecordLifecycleActionHeartbeat; 404 likewise.
//! - `POST /sim/group/unhealthy` `{"instance"}` → `Group`: SetInstanceHealth Unhealthy; the
//!   group terminates it through its hooks and launches a replacement.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::cluster::group::{
    Group, Hook, HookResult, Lifecycle, Member, Refresh, Transition, PROCESSES,
};
use crate::cluster::scaling as group;
use crate::cluster::Machine;
use crate::control::ControlError;
use crate::state::{Sim, State};

/// The longest a hook may wait for a heartbeat, as AWS allows (two hours).
const MAX_HEARTBEAT: Duration = Duration::from_secs(7200);
/// More members than any server group has.
const MAX_SIZE: usize = 64;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/sim/group", web::post().to(create))
        .route("/sim/group", web::get().to(get))
        .route("/sim/group", web::put().to(update))
        .route("/sim/group/refresh", web::post().to(refresh))
        .route("/sim/group/lifecycle", web::post().to(lifecycle))
        .route("/sim/group/heartbeat", web::post().to(heartbeat))
        .route("/sim/group/unhealthy", web::post().to(unhealthy));
}

#[derive(Serialize)]
struct HookView {
    name: String,
    transition: &'static str,
    heartbeat_timeout_ms: u64,
    default_result: &'static str,
}

#[derive(Serialize)]
struct MemberView {
    name: String,
    zone: String,
    lifecycle: &'static str,
    protected: bool,
    image: String,
    cause: String,
    pending_hooks: Vec<String>,
}

#[derive(Serialize)]
struct RefreshView {
    min_healthy_percentage: u32,
    max_healthy_percentage: u32,
    status: &'static str,
}

#[derive(Serialize)]
struct GroupView {
    name: String,
    min: usize,
    max: usize,
    desired: usize,
    image: String,
    zones: Vec<String>,
    suspended: Vec<String>,
    hooks: Vec<HookView>,
    members: Vec<MemberView>,
    refresh: Option<RefreshView>,
}

fn transition_name(t: Transition) -> &'static str {
    match t {
        Transition::Launching => "launching",
        Transition::Terminating => "terminating",
    }
}

fn result_name(r: HookResult) -> &'static str {
    match r {
        HookResult::Continue => "CONTINUE",
        HookResult::Abandon => "ABANDON",
    }
}

fn view(st: &State, g: &Group) -> GroupView {
    GroupView {
        name: g.name.clone(),
        min: g.min,
        max: g.max,
        desired: g.desired,
        image: g.image.clone(),
        zones: g.zones.clone(),
        suspended: g.suspended.iter().cloned().collect(),
        hooks: g
            .hooks
            .iter()
            .map(|h| HookView {
                name: h.name.clone(),
                transition: transition_name(h.transition),
                heartbeat_timeout_ms: h.heartbeat_timeout.as_millis() as u64,
                default_result: result_name(h.default_result),
            })
            .collect(),
        members: g
            .members
            .iter()
            .map(|m| MemberView {
                name: m.name.clone(),
                zone: m.zone.clone(),
                lifecycle: m.lifecycle.as_str(),
                protected: m.protected,
                image: st
                    .cluster
                    .server(&m.name)
                    .map(|s| s.image.clone())
                    .unwrap_or_default(),
                cause: m.cause.clone(),
                pending_hooks: m.pending_hooks.iter().cloned().collect(),
            })
            .collect(),
        refresh: g.refresh.as_ref().map(|r| RefreshView {
            min_healthy_percentage: r.min_healthy,
            max_healthy_percentage: r.max_healthy,
            status: r.status,
        }),
    }
}

fn answer(st: &State, status: StatusCode) -> Result<HttpResponse, ControlError> {
    let g = st.cluster.group.as_ref().ok_or_else(no_group)?;
    Ok(HttpResponse::build(status).json(view(st, g)))
}

fn no_group() -> ControlError {
    ControlError::new(
        StatusCode::NOT_FOUND,
        "no group: make one with POST /sim/group",
    )
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| ControlError::bad(format!("bad body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewHook {
    name: String,
    transition: String,
    heartbeat_timeout_ms: Option<u64>,
    default_result: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: Option<String>,
    min: Option<usize>,
    max: Option<usize>,
    desired: Option<usize>,
    image: Option<String>,
    zones: Option<Vec<String>>,
    #[serde(default)]
    placement: BTreeMap<String, String>,
    #[serde(default)]
    hooks: Vec<NewHook>,
    #[serde(default)]
    suspended: Vec<String>,
}

fn processes(names: Vec<String>) -> Result<BTreeSet<String>, ControlError> {
    for n in &names {
        if !PROCESSES.contains(&n.as_str()) {
            return Err(ControlError::bad(format!(
                "unknown process {n:?} (one of {PROCESSES:?})"
            )));
        }
    }
    Ok(names.into_iter().collect())
}

fn hook(h: NewHook) -> Result<Hook, ControlError> {
    let transition = match h.transition.as_str() {
        "launching" => Transition::Launching,
        "terminating" => Transition::Terminating,
        other => {
            return Err(ControlError::bad(format!(
                "hook {:?}: transition {other:?} is not \"launching\" or \"terminating\"",
                h.name
            )))
        }
    };
    let default_result = match h.default_result.as_deref().unwrap_or("ABANDON") {
        "CONTINUE" => HookResult::Continue,
        "ABANDON" => HookResult::Abandon,
        other => {
            return Err(ControlError::bad(format!(
                "hook {:?}: default_result {other:?} is not CONTINUE or ABANDON",
                h.name
            )))
        }
    };
    // AWS's default heartbeat timeout is an hour.
    let timeout = Duration::from_millis(h.heartbeat_timeout_ms.unwrap_or(3_600_000));
    if h.name.trim().is_empty() || timeout.is_zero() || timeout > MAX_HEARTBEAT {
        return Err(ControlError::bad(format!(
            "hook {:?}: a name and a heartbeat timeout of 1 ms to 2 h are needed",
            h.name
        )));
    }
    Ok(Hook {
        name: h.name,
        transition,
        heartbeat_timeout: timeout,
        default_result,
    })
}

fn check_sizes(min: usize, desired: usize, max: usize) -> Result<(), ControlError> {
    if min > desired || desired > max || max > MAX_SIZE {
        return Err(ControlError::bad(format!(
            "min {min} <= desired {desired} <= max {max} <= {MAX_SIZE} does not hold"
        )));
    }
    Ok(())
}

/// POST /sim/group — a group over the live servers.
async fn create(sim: web::Data<Sim>, body: web::Bytes) -> Result<HttpResponse, ControlError> {
    let b: NewGroup = decode(&body)?;
    let hooks = b
        .hooks
        .into_iter()
        .map(hook)
        .collect::<Result<Vec<_>, _>>()?;
    let suspended = processes(b.suspended)?;
    let zones = b
        .zones
        .unwrap_or_else(|| vec!["zone-a".into(), "zone-b".into(), "zone-c".into()]);
    if zones.is_empty() || zones.iter().any(|z| z.trim().is_empty()) {
        return Err(ControlError::bad("zones must name at least one zone"));
    }
    let mut st = sim.lock();
    let live: Vec<(String, String)> = st
        .cluster
        .servers
        .iter()
        .filter(|s| s.machine != Machine::Terminated)
        .map(|s| (s.name.clone(), s.image.clone()))
        .collect();
    for (server, zone) in &b.placement {
        if !live.iter().any(|(n, _)| n == server) || !zones.contains(zone) {
            return Err(ControlError::bad(format!(
                "placement {server:?} -> {zone:?}: not a live server, or not one of the zones"
            )));
        }
    }
    let image = match b.image {
        Some(i) if st.cluster.images.get(&i).is_none() => {
            return Err(ControlError::bad(format!("unknown image {i:?}")))
        }
        Some(i) => i,
        None => live
            .last()
            .map(|(_, i)| i.clone())
            .unwrap_or_else(|| st.config.image.clone()),
    };
    let desired = b.desired.unwrap_or(live.len());
    let min = b.min.unwrap_or(desired);
    let max = b.max.unwrap_or(desired + 1);
    check_sizes(min, desired, max)?;
    let members = live
        .iter()
        .enumerate()
        .map(|(i, (name, _))| Member {
            name: name.clone(),
            zone: b
                .placement
                .get(name)
                .cloned()
                .unwrap_or_else(|| zones[i % zones.len()].clone()),
            lifecycle: Lifecycle::InService,
            protected: false,
            pending_hooks: BTreeSet::new(),
            wait_until: None,
            in_service_at: Some(std::time::Instant::now()),
            cause: "adopted when the group was made".into(),
        })
        .collect();
    let epoch = st.cluster.group.as_ref().map_or(0, |g| g.epoch);
    st.cluster.group = Some(Group {
        name: b.name.unwrap_or_else(|| "consul-servers".into()),
        min,
        max,
        desired,
        image,
        zones,
        hooks,
        suspended,
        members,
        refresh: None,
        extra: 0,
        epoch,
    });
    group::start_ticking(&sim, &mut st);
    answer(&st, StatusCode::CREATED)
}

async fn get(sim: web::Data<Sim>) -> Result<HttpResponse, ControlError> {
    let st = sim.lock();
    answer(&st, StatusCode::OK)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    desired: Option<usize>,
    min: Option<usize>,
    max: Option<usize>,
    image: Option<String>,
    suspended: Option<Vec<String>>,
    protected: Option<Vec<String>>,
}

/// PUT /sim/group — sizes, image, suspended processes, protection.
async fn update(sim: web::Data<Sim>, body: web::Bytes) -> Result<HttpResponse, ControlError> {
    let b: Update = decode(&body)?;
    let suspended = b.suspended.map(processes).transpose()?;
    let mut st = sim.lock();
    if let Some(i) = &b.image {
        if st.cluster.images.get(i).is_none() {
            return Err(ControlError::bad(format!("unknown image {i:?}")));
        }
    }
    let g = st.cluster.group.as_mut().ok_or_else(no_group)?;
    let (min, desired, max) = (
        b.min.unwrap_or(g.min),
        b.desired.unwrap_or(g.desired),
        b.max.unwrap_or(g.max),
    );
    check_sizes(min, desired, max)?;
    (g.min, g.desired, g.max) = (min, desired, max);
    if let Some(i) = b.image {
        g.image = i;
    }
    if let Some(s) = suspended {
        g.suspended = s;
    }
    if let Some(p) = b.protected {
        for m in &mut g.members {
            m.protected = p.contains(&m.name);
        }
    }
    group::step(&sim, &mut st);
    answer(&st, StatusCode::OK)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRefresh {
    min_healthy_percentage: Option<u32>,
    max_healthy_percentage: Option<u32>,
    warmup_ms: Option<u64>,
}

/// POST /sim/group/refresh — an instance refresh onto the group's image.
async fn refresh(sim: web::Data<Sim>, body: web::Bytes) -> Result<HttpResponse, ControlError> {
    let b: NewRefresh = decode(&body)?;
    let min = b.min_healthy_percentage.unwrap_or(90);
    let max = b.max_healthy_percentage.unwrap_or(100);
    // AWS's bounds: 0..=100 and 100..=200, and not both 100.
    if min > 100 || !(100..=200).contains(&max) || (min == 100 && max == 100) {
        return Err(ControlError::bad(format!(
            "min_healthy_percentage {min} (0-100) and max_healthy_percentage {max} (100-200), \
             not both 100"
        )));
    }
    let mut st = sim.lock();
    let g = st.cluster.group.as_mut().ok_or_else(no_group)?;
    g.refresh = Some(Refresh {
        min_healthy: min,
        max_healthy: max,
        warmup: Duration::from_millis(b.warmup_ms.unwrap_or(0)),
        status: "InProgress",
    });
    group::step(&sim, &mut st);
    answer(&st, StatusCode::OK)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    instance: String,
    hook: Option<String>,
    result: Option<String>,
}

/// POST /sim/group/lifecycle — CompleteLifecycleAction.
async fn lifecycle(sim: web::Data<Sim>, body: web::Bytes) -> Result<HttpResponse, ControlError> {
    let b: Action = decode(&body)?;
    let hook = b
        .hook
        .ok_or_else(|| ControlError::bad("hook is required"))?;
    let result = match b.result.as_deref() {
        Some("CONTINUE") => HookResult::Continue,
        Some("ABANDON") => HookResult::Abandon,
        other => {
            return Err(ControlError::bad(format!(
                "result {other:?} is not CONTINUE or ABANDON"
            )))
        }
    };
    let mut st = sim.lock();
    if !group::complete(&sim, &mut st, &b.instance, &hook, result) {
        return Err(no_wait(&b.instance, &hook));
    }
    answer(&st, StatusCode::OK)
}

fn no_wait(instance: &str, hook: &str) -> ControlError {
    ControlError::new(
        StatusCode::NOT_FOUND,
        format!("no lifecycle action for instance {instance:?} on hook {hook:?}"),
    )
}

/// POST /sim/group/heartbeat — RecordLifecycleActionHeartbeat.
async fn heartbeat(sim: web::Data<Sim>, body: web::Bytes) -> Result<HttpResponse, ControlError> {
    let b: Action = decode(&body)?;
    let hook = b
        .hook
        .ok_or_else(|| ControlError::bad("hook is required"))?;
    let mut st = sim.lock();
    if !group::heartbeat(&mut st, &b.instance, &hook) {
        return Err(no_wait(&b.instance, &hook));
    }
    answer(&st, StatusCode::OK)
}

/// POST /sim/group/unhealthy — SetInstanceHealth Unhealthy.
async fn unhealthy(sim: web::Data<Sim>, body: web::Bytes) -> Result<HttpResponse, ControlError> {
    let b: Action = decode(&body)?;
    let mut st = sim.lock();
    if st.cluster.group.is_none() {
        return Err(no_group());
    }
    if !group::set_unhealthy(&sim, &mut st, &b.instance) {
        return Err(ControlError::new(
            StatusCode::NOT_FOUND,
            format!("{:?} is not an in-service member", b.instance),
        ));
    }
    answer(&st, StatusCode::OK)
}
