//! The simulator's control API under `/sim/...`: add machines, inject faults, tune the clocks and
//! read the invariants. Not part of Consul's API; the tests, the simulated cloud and the demo use it.
//!
//! Every route speaks JSON. Errors are `{"error": "<why>"}` with 400 (bad body, unknown image),
//! 404 (unknown server) or 409 (the server is not in a state the action applies to; an image ID
//! or a launch token already used differently).
//!
//! - `GET  /sim/images` → `[Image]`, registration order. `Image` is `{"id", "name", "created"
//!   (RFC 3339 UTC with milliseconds, EC2's CreationDate format), "broken", "boot_failure"}`. The configured
//!   image is registered at start, created one day before it.
//! - `POST /sim/images` `{"id": "...", "name"?: "...", "created"?: "<RFC 3339 UTC>", "broken"?:
//!   bool}` → 201 `Image` (name defaults to the id, created to now, broken to false); 409 if the
//!   id exists. A server launched from a broken image boots, joins serf and enters Raft as a
//!   non-voter, but autopilot never sees it healthy (its log never catches up), so it is never
//!   promoted and the cluster stays unhealthy while it is a peer. `"boot_failure": "<reason>"`
//!   makes an image that does not boot (a bad AMI): each server launched from it is terminated
//!   with that reason when its boot would end, before it joins anything.
//! - `GET  /sim/servers` → `[Server]`, launch order, terminated machines included. `Server` is
//!   `{"name", "id", "address", "image", "machine": booting|running|stopped|killed|terminated,
//!   "serf": none|alive|left|failed, "cut", "in_raft", "voter", "leader", "healthy",
//!   "token": string|null, "launched_at": unix ms, "reason": string|null}`; `reason` says why a
//!   terminated machine was terminated, in EC2's StateReason words.
//! - `GET  /sim/servers/{name}` → `Server`.
//! - `POST /sim/servers` `{"image": "...", "name"?: "...", "token"?: "..."}` → 201 `Server`: a new
//!   machine that boots for `boot_delay`, then joins serf; the leader adds it to Raft as a
//!   non-voter and autopilot promotes it after `stabilization` if healthy. The name defaults to
//!   the next free `consul-server-N`. The image must be registered (else 400). With a `token`
//!   some server was already launched with (in any state, terminated too), nothing is launched:
//!   200 with that server, as EC2's ClientToken does; 409 if that launch named another image.
//! - `POST /sim/servers/{name}/terminate` → `Server`: the machine is terminated. A running agent
//!   first leaves gracefully, as with `leave_on_terminate` (serf left, out of Raft; a leader steps
//!   down and an election follows); a killed one stays a failed peer until autopilot prunes it.
//!   The server stays listed with machine `terminated` (so its token still finds it) and counts
//!   nowhere else. Terminating it again answers 200 and changes nothing, as EC2 does. A
//!   terminated server accepts no other action (409).
//! - `POST /sim/servers/{name}/fail` → `Server`: the machine fails on its own (an instance dying
//!   at boot or later): its agent dies without leaving (a failed peer if it had joined) and the
//!   machine is terminated with reason `Server.InternalError: Internal error on launch`.
//! - `POST /sim/servers/{name}/leave` → `Server`: graceful leave (serf left, out of Raft; a leader
//!   steps down first and an election follows). No tolerance is lost beyond the server itself.
//! - `POST /sim/servers/{name}/kill` → `Server`: the process dies; the others see it serf-failed
//!   after `failure_detection`, autopilot prunes it at its next interval (10 s simulated) when
//!   that is safe.
//! - `POST /sim/servers/{name}/restart` → `Server`: a killed or left server's process starts
//!   again and rejoins (still a peer: keeps its vote; pruned: back as a non-voter).
//! - `POST /sim/servers/{name}/cut` / `heal` → `Server`: partition it from the others / end that.
//! - `GET  /sim/config` and `PUT /sim/config` `{"boot_delay_ms"?, "stabilization_ms"?,
//!   "election_ms"?, "failure_detection_ms"?, "time_scale"?, "consul_version"?,
//!   "transfer_fault"?, "leave_on_terminate"?}` → the current values. Timers already running keep their old delay.
//!   `consul_version` ("1.8.7") makes the agents that version where the project branches on
//!   it: before 1.15 `operator/raft/transfer-leader`, before 1.9 `operator/autopilot/state`,
//!   answer a bare 404 as Go's mux does. `transfer_fault` plays Consul's transfer-leader bugs:
//!   `"noop"` answers success and moves nothing, `"elsewhere"` moves leadership to another
//!   voter than the one named, `"none"` (the default) behaves. `leave_on_terminate` (default
//!   true) false makes `terminate` kill a running agent instead of letting it leave, as on a
//!   server image without Consul's `leave_on_terminate`: it stays a failed peer.
//! - `GET  /sim/invariants` → `{"quorum_lost_count", "quorum_lost", "max_voters_missing",
//!   "voters_missing", "leader_changes", "leaderless_periods", "leaderless_ms",
//!   "min_failure_tolerance", "leader_retired", "max_servers", "min_voters", "checks", "leader",
//!   "voters", "failure_tolerance", "healthy"}`, evaluated on every membership or Raft change.
//!   `leader_retired` counts terminate, leave and kill calls above on the server leading at the
//!   time (a rollout moves leadership first, so a correct one keeps it 0); `max_servers` is the
//!   most machines not terminated at once; `min_voters` the fewest voters in the Raft
//!   configuration.
//! - `POST /sim/invariants/reset` → the zeroed invariants (the current state is the new baseline).
//! - `GET  /sim/timeline` → `[{"at" (unix ms), "server", "image", "event"}]`, oldest first: each
//!   server's `launched`, `started` (its process runs), `joined` (Raft, as a non-voter), `voter`,
//!   `leader`, `follower` (stopped leading), `left` (out of Raft), `killed` and `terminated`,
//!   logged as they happen (the newest 10,000 are kept). The bootstrap servers' lives start at
//!   the simulator's start.
//! - `GET  /sim/stats` → `{"requests", "parked"}`: the Consul API (`/v1/...`) requests received
//!   since start (the control API's are not counted), and the blocking queries parked now.
//!   `parked` may include queries whose client has gone away and that are not swept yet (they
//!   are swept at the next write that touches them, or when the list has doubled).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cluster::{self, Machine, Server};
use crate::images::{self, Image, ImageView};
use crate::state::{Sim, State};

/// Registers the `/sim` routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/sim/images", web::get().to(list_images))
        .route("/sim/images", web::post().to(add_image))
        .route("/sim/servers", web::get().to(list_servers))
        .route("/sim/servers", web::post().to(add_server))
        .route("/sim/servers/{name}", web::get().to(get_server))
        .route(
            "/sim/servers/{name}/{action}",
            web::post().to(server_action),
        )
        .route("/sim/config", web::get().to(get_config))
        .route("/sim/config", web::put().to(put_config))
        .route("/sim/invariants", web::get().to(invariants))
        .route("/sim/invariants/reset", web::post().to(reset_invariants))
        .route("/sim/stats", web::get().to(stats))
        .route("/sim/timeline", web::get().to(timeline));
}

/// A control API error: a status and a reason, sent as `{"error": ...}`.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ControlError {
    status: StatusCode,
    message: String,
}

impl ControlError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn unknown(name: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("no server named {name:?}"))
    }
}

impl ResponseError for ControlError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({"error": self.message}))
    }
}

/// One server as the control API shows it.
#[derive(Debug, Serialize)]
pub struct ServerView {
    pub name: String,
    pub id: String,
    pub address: String,
    pub image: String,
    pub machine: Machine,
    pub serf: &'static str,
    pub cut: bool,
    pub in_raft: bool,
    pub voter: bool,
    pub leader: bool,
    pub healthy: bool,
    pub token: Option<String>,
    /// Unix milliseconds.
    pub launched_at: u64,
    /// Why a terminated machine was terminated (EC2's StateReason); null otherwise.
    pub reason: Option<String>,
}

fn view(st: &State, s: &Server) -> ServerView {
    ServerView {
        name: s.name.clone(),
        id: s.id.clone(),
        address: s.address(),
        image: s.image.clone(),
        machine: s.machine,
        serf: s.serf.as_str(),
        cut: s.cut,
        in_raft: s.in_raft,
        voter: s.voter,
        leader: st.cluster.leader.as_deref() == Some(s.name.as_str()),
        healthy: s.healthy(),
        token: s.token.clone(),
        launched_at: s
            .launched_at
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        reason: s
            .reason
            .clone()
            .filter(|_| s.machine == Machine::Terminated),
    }
}

fn view_of(st: &State, name: &str) -> Result<ServerView, ControlError> {
    st.cluster
        .server(name)
        .map(|s| view(st, s))
        .ok_or_else(|| ControlError::unknown(name))
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| ControlError::bad(format!("bad body: {e}")))
}

/// GET /sim/images — every registered image, registration order.
async fn list_images(sim: web::Data<Sim>) -> HttpResponse {
    let st = sim.lock();
    let list: Vec<ImageView> = st.cluster.images.iter().map(ImageView::from).collect();
    HttpResponse::Ok().json(list)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewImage {
    id: String,
    name: Option<String>,
    created: Option<String>,
    #[serde(default)]
    broken: bool,
    boot_failure: Option<String>,
}

/// POST /sim/images `{"id", "name"?, "created"?, "broken"?, "boot_failure"?}` — registers an
/// image.
async fn add_image(sim: web::Data<Sim>, body: web::Bytes) -> Result<HttpResponse, ControlError> {
    let b: NewImage = decode(&body)?;
    if b.id.trim().is_empty() {
        return Err(ControlError::bad("id must not be empty"));
    }
    let created = match b.created.as_deref() {
        Some(c) => images::parse_created(c).map_err(ControlError::bad)?,
        None => std::time::SystemTime::now(),
    };
    let image = Image {
        name: b.name.unwrap_or_else(|| b.id.clone()),
        id: b.id,
        created,
        broken: b.broken,
        boot_failure: b.boot_failure.filter(|r| !r.trim().is_empty()),
    };
    let mut st = sim.lock();
    let added = st
        .cluster
        .images
        .register(image)
        .map_err(|e| ControlError::new(StatusCode::CONFLICT, e.to_string()))?;
    tracing::info!(
        image = %added.id,
        broken = added.broken,
        "Simulated cloud registered an image.",
    );
    Ok(HttpResponse::Created().json(ImageView::from(added)))
}

/// GET /sim/servers — every server, launch order.
async fn list_servers(sim: web::Data<Sim>) -> HttpResponse {
    let st = sim.lock();
    let list: Vec<ServerView> = st.cluster.servers.iter().map(|s| view(&st, s)).collect();
    HttpResponse::Ok().json(list)
}

/// GET /sim/servers/{name}.
async fn get_server(
    sim: web::Data<Sim>,
    name: web::Path<String>,
) -> Result<HttpResponse, ControlError> {
    let st = sim.lock();
    Ok(HttpResponse::Ok().json(view_of(&st, &name)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewServer {
    image: String,
    name: Option<String>,
    token: Option<String>,
}

/// POST /sim/servers `{"image", "name"?, "token"?}` — launches a machine that boots into a
/// server, unless `token` launched one already.
async fn add_server(sim: web::Data<Sim>, body: web::Bytes) -> Result<HttpResponse, ControlError> {
    let b: NewServer = decode(&body)?;
    if b.image.trim().is_empty() {
        return Err(ControlError::bad("image must not be empty"));
    }
    if b.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        // An empty token would silently turn off the idempotency its caller relies on.
        return Err(ControlError::bad("token must not be empty"));
    }
    let mut st = sim.lock();
    if let Some(token) = b.token.as_deref() {
        if let Some(s) = st.cluster.by_token(token) {
            if s.image != b.image {
                // EC2's IdempotentParameterMismatch: the same token for a different launch.
                return Err(ControlError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "token {token:?} launched {} on image {:?}, not {:?}",
                        s.name, s.image, b.image
                    ),
                ));
            }
            return Ok(HttpResponse::Ok().json(view(&st, s)));
        }
    }
    if st.cluster.images.get(&b.image).is_none() {
        return Err(ControlError::bad(format!(
            "unknown image {:?}: register it with POST /sim/images",
            b.image
        )));
    }
    let name = match b.name.filter(|n| !n.trim().is_empty()) {
        Some(n) if st.cluster.server(&n).is_some() || n == st.cluster.agent.name => {
            return Err(ControlError::bad(format!(
                "a node named {n:?} already exists"
            )))
        }
        Some(n) => n,
        None => st.cluster.next_name(),
    };
    cluster::add_server(&sim, &mut st, name.clone(), b.image, b.token);
    Ok(HttpResponse::Created().json(view_of(&st, &name)?))
}

/// POST /sim/servers/{name}/{terminate|fail|leave|kill|restart|cut|heal}.
async fn server_action(
    sim: web::Data<Sim>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ControlError> {
    let (name, action) = path.into_inner();
    let mut st = sim.lock();
    let machine = st
        .cluster
        .server(&name)
        .map(|s| s.machine)
        .ok_or_else(|| ControlError::unknown(&name))?;
    let was_leader = st.cluster.leader.as_deref() == Some(name.as_str());
    let done = match action.as_str() {
        // A terminated machine is gone: only terminating it again makes sense (and is a no-op).
        "terminate" => cluster::terminate(&sim, &mut st, &name),
        "fail" | "leave" | "kill" | "restart" | "cut" | "heal"
            if machine == Machine::Terminated =>
        {
            false
        }
        "fail" => cluster::fail(&sim, &mut st, &name),
        "leave" => cluster::leave(&sim, &mut st, &name),
        "kill" => cluster::kill(&sim, &mut st, &name),
        "restart" => cluster::restart(&sim, &mut st, &name),
        "cut" => cluster::cut(&sim, &mut st, &name),
        "heal" => cluster::heal(&sim, &mut st, &name),
        other => {
            return Err(ControlError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown action {other:?}: terminate, fail, leave, kill, restart, cut or heal"
                ),
            ))
        }
    };
    if !done {
        let m = serde_json::to_value(machine).unwrap_or_default();
        return Err(ControlError::new(
            StatusCode::CONFLICT,
            format!(
                "cannot {action} {name}: its machine is {}",
                m.as_str().unwrap_or("?")
            ),
        ));
    }
    if was_leader && matches!(action.as_str(), "terminate" | "fail" | "leave" | "kill") {
        st.cluster.invariants.leader_retired += 1;
    }
    Ok(HttpResponse::Ok().json(view_of(&st, &name)?))
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    boot_delay_ms: Option<u64>,
    stabilization_ms: Option<u64>,
    election_ms: Option<u64>,
    failure_detection_ms: Option<u64>,
    time_scale: Option<f64>,
    consul_version: Option<String>,
    transfer_fault: Option<crate::config::TransferFault>,
    leave_on_terminate: Option<bool>,
}

fn config_view(st: &State) -> ConfigBody {
    let ms = |d: Duration| Some(d.as_millis() as u64);
    ConfigBody {
        boot_delay_ms: ms(st.config.boot_delay),
        stabilization_ms: ms(st.cluster.autopilot.server_stabilization_time),
        election_ms: ms(st.config.election),
        failure_detection_ms: ms(st.config.failure_detection),
        time_scale: Some(st.config.time_scale),
        consul_version: Some(st.config.consul_version.clone()),
        transfer_fault: Some(st.config.transfer_fault),
        leave_on_terminate: Some(st.config.leave_on_terminate),
    }
}

/// GET /sim/config — the simulated time constants.
async fn get_config(sim: web::Data<Sim>) -> HttpResponse {
    HttpResponse::Ok().json(config_view(&sim.lock()))
}

/// PUT /sim/config — changes any of the time constants; answers the current values.
async fn put_config(sim: web::Data<Sim>, body: web::Bytes) -> Result<HttpResponse, ControlError> {
    let b: ConfigBody = decode(&body)?;
    if let Some(t) = b.time_scale {
        if !(t.is_finite() && t > 0.0) {
            return Err(ControlError::bad("time_scale must be a positive number"));
        }
    }
    if let Some(v) = &b.consul_version {
        if crate::config::version_parts(v).is_none() {
            return Err(ControlError::bad(format!(
                "consul_version {v:?} is not a version like \"1.8.7\""
            )));
        }
    }
    let mut st = sim.lock();
    if let Some(v) = b.consul_version {
        st.config.consul_version = v;
    }
    if let Some(f) = b.transfer_fault {
        st.config.transfer_fault = f;
    }
    if let Some(v) = b.leave_on_terminate {
        st.config.leave_on_terminate = v;
    }
    if let Some(v) = b.boot_delay_ms {
        st.config.boot_delay = Duration::from_millis(v);
    }
    if let Some(v) = b.stabilization_ms {
        cluster::set_stabilization(&mut st, Duration::from_millis(v));
    }
    if let Some(v) = b.election_ms {
        st.config.election = Duration::from_millis(v);
    }
    if let Some(v) = b.failure_detection_ms {
        st.config.failure_detection = Duration::from_millis(v);
    }
    if let Some(t) = b.time_scale {
        st.config.time_scale = t;
    }
    Ok(HttpResponse::Ok().json(config_view(&st)))
}

fn invariants_json(st: &State) -> serde_json::Value {
    let inv = st.cluster.invariants_now(st.config.time_scale);
    let mut v = serde_json::to_value(inv).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("leader".into(), json!(st.cluster.leader));
        o.insert("voters".into(), json!(cluster::voters(&st.cluster.servers)));
        o.insert(
            "failure_tolerance".into(),
            json!(st.cluster.failure_tolerance()),
        );
        o.insert("healthy".into(), json!(st.cluster.healthy()));
    }
    v
}

/// GET /sim/invariants — the counters and the current cluster summary.
async fn invariants(sim: web::Data<Sim>) -> HttpResponse {
    HttpResponse::Ok().json(invariants_json(&sim.lock()))
}

/// POST /sim/invariants/reset — zeroes the counters.
async fn reset_invariants(sim: web::Data<Sim>) -> HttpResponse {
    let mut st = sim.lock();
    st.cluster.reset_invariants();
    HttpResponse::Ok().json(invariants_json(&st))
}

/// GET /sim/stats — what clients cost the simulator: Consul API requests received, and
/// blocking queries parked (including closed ones not yet swept; see `Waiters::len`).
async fn stats(sim: web::Data<Sim>) -> HttpResponse {
    let parked = sim.lock().waiters.len();
    HttpResponse::Ok().json(json!({"requests": sim.requests(), "parked": parked}))
}

/// GET /sim/timeline — every server's dated events, oldest first.
async fn timeline(sim: web::Data<Sim>) -> HttpResponse {
    HttpResponse::Ok().json(sim.lock().cluster.timeline.events())
}
