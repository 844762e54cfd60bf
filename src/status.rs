//! The cluster's status as one model, [`StatusReport`], shared by `rehydrator status`, the
//! status endpoint's `/v1/status` and the demo: the servers (image, age, voter, leader,
//! health), autopilot's verdict, the newest image, the rollout record and its progress, who
//! holds the cluster's locks, the last receipts and the pause key.
//!
//! [`gather`] reads it all from Consul (and the cloud, when one is configured) in one pass;
//! everything after the reads (joining machines with Raft peers, ordering, progress, the
//! human rendering) is plain functions tested without a cluster.
//!
//! The JSON field names are snake_case and stable: scripts and the dashboard read them. Add
//! fields, never rename them.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use futures_util::future::{join_all, try_join, try_join5};
use rehydrator_actors::plan::{self, Rollout, RolloutState, Snapshot};
use rehydrator_actors::ports::{
    CloudPort, ClusterHealth, ConsulPort, Image, Machine, MachineState, PortError,
};
use rehydrator_actors::receipt::{now_ms, Keys, Receipt};
use serde::{Deserialize, Serialize};

use crate::consul::port::ConsulAdapter;
use crate::consul::{Client, ConsulError, KvPair, QueryOptions, WatchPolicy};

/// How many receipts a report carries unless told otherwise.
pub const DEFAULT_RECEIPTS: usize = 10;

/// Everything an operator asks "what is rehydrator doing?" about, at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// `cluster.name`: the KV prefix `rehydrator/<cluster>/`.
    pub cluster: String,
    /// The Consul agent asked (its address; never the token).
    pub consul: String,
    /// When the report was taken, Unix milliseconds.
    pub generated_at: u64,
    /// Autopilot's verdict (`/v1/operator/autopilot/health`).
    pub healthy: bool,
    /// How many servers could fail without losing quorum.
    pub failure_tolerance: u32,
    /// The node name of the Raft leader, if there is one.
    pub leader: Option<String>,
    /// The newest image the cloud offers; `None` without a cloud.
    pub newest_image: Option<ImageInfo>,
    /// Where `servers` came from: `cloud` (machines joined with Raft peers) or `catalog`
    /// (the servers' catalog nodes, image from their `image` node meta).
    pub source: ServerSource,
    /// The servers, oldest first.
    pub servers: Vec<ServerStatus>,
    /// The rollout record at `rehydrator/<cluster>/rollout` (in progress, or the last one).
    pub rollout: Option<Rollout>,
    /// Why the record that is there does not decode: the replicas take no step until
    /// `rehydrator repair` rebuilds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_error: Option<String>,
    /// How far the rollout in the record has come.
    pub progress: Option<Progress>,
    /// Every lock key under `rehydrator/<cluster>/locks/`, held or not.
    pub locks: Vec<LockStatus>,
    /// The newest receipts across all actions, newest first.
    pub receipts: Vec<Receipt>,
    /// Whether the pause key `rehydrator/<cluster>/pause` is set.
    pub paused: bool,
    /// Who paused and why, when the key says so.
    pub pause: Option<PauseInfo>,
    /// What could not be read or decoded but did not stop the report (a lock's session gone,
    /// an undecodable receipt).
    pub warnings: Vec<String>,
}

/// A machine image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// What a launch names (an AMI ID; the simulator's image label).
    pub id: String,
    pub name: String,
    /// RFC 3339.
    pub created: String,
}

impl From<Image> for ImageInfo {
    fn from(i: Image) -> Self {
        Self {
            id: i.id,
            name: i.name,
            created: i.created,
        }
    }
}

/// Where the server list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerSource {
    Cloud,
    Catalog,
}

/// One Consul server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The Consul node name.
    pub node: String,
    /// The machine's ID in the cloud (an instance ID); `None` without a cloud, or for a Raft
    /// peer no machine accounts for.
    pub machine: Option<String>,
    /// The image it runs, when known.
    pub image: Option<String>,
    /// When its machine was launched, Unix milliseconds (cloud only).
    pub launched_at: Option<u64>,
    /// Seconds since launch, at `generated_at` (cloud only).
    pub age_secs: Option<u64>,
    /// `pending`, `running`, `stopping` (cloud only).
    pub machine_state: Option<String>,
    /// Whether it is in Raft at all (autopilot knows it).
    pub in_raft: bool,
    pub voter: bool,
    pub leader: bool,
    /// Autopilot's health for this server.
    pub healthy: bool,
    /// `alive`, `failed`, `left`, ... (empty when not in Raft).
    pub serf_status: String,
    /// Whether its image differs from the newest image (or, without a cloud, from the active
    /// rollout's target); `None` when there is nothing to compare with.
    pub outdated: Option<bool>,
}

/// How far a rollout has come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub target_image: String,
    /// `active`, `completed` or `stopped`.
    pub state: String,
    /// Servers on the target image.
    pub on_target: usize,
    /// Servers in all.
    pub total: usize,
    /// Launched machines that have not failed.
    pub launches: usize,
    /// Launched machines that died, were terminated or never started before they joined.
    #[serde(default)]
    pub failed_launches: usize,
    pub retirements: usize,
    /// Why the rollout waits (from the record), or why it stopped.
    pub waiting: Option<String>,
}

/// One lock key and its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockStatus {
    /// The lock's name (`step`), the last segment of its key.
    pub name: String,
    pub key: String,
    /// The holding session's ID, if held.
    pub session: Option<String>,
    /// The session's Name (`rehydrator <cluster> <replica>`).
    pub session_name: Option<String>,
    /// The node the session lives on.
    pub node: Option<String>,
    /// The holding replica (from the lock's value, else the session name).
    pub replica: Option<String>,
    /// The job it runs: the action and its trigger (from the lock's value).
    pub action: Option<String>,
    pub trigger_id: Option<String>,
    /// How many times the lock was taken: the fencing token.
    pub lock_index: u64,
}

/// What `rehydrator pause` writes to the pause key: who and why. Any value (or none) pauses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseInfo {
    pub by: Option<String>,
    pub reason: Option<String>,
    /// Unix milliseconds.
    pub at: Option<u64>,
}

/// What a report is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `cluster.name`.
    pub cluster: String,
    /// `cluster.service`: the catalog service the servers register (without a cloud).
    pub service: String,
    /// How many receipts to carry.
    pub receipts: usize,
}

impl Scope {
    /// The cluster `cluster`, its servers registering `consul`, the last 10 receipts.
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            service: "consul".into(),
            receipts: DEFAULT_RECEIPTS,
        }
    }

    /// The scope `run` works in.
    pub fn from_settings(settings: &rehydrator_config::Settings) -> Self {
        Self {
            cluster: settings.cluster.name.clone(),
            service: settings.cluster.service.clone(),
            receipts: DEFAULT_RECEIPTS,
        }
    }
}

/// Why a report could not be taken. The message carries the cause (no `source()` chain), so
/// `{e}` alone says everything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// A read Consul must answer failed (unreachable, no leader, refused).
    #[error("reading {what}: {error}")]
    Consul {
        what: &'static str,
        error: ConsulError,
    },
    /// The same, through the actors' port.
    #[error("reading {what}: {error}")]
    Port {
        what: &'static str,
        error: PortError,
    },
    /// The cloud did not answer.
    #[error("asking the cloud for {what}: {error}")]
    Cloud {
        what: &'static str,
        error: PortError,
    },
}

impl StatusError {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StatusError::Consul { error, .. } => error.kind(),
            StatusError::Port { error, .. } => error.label(),
            StatusError::Cloud { .. } => "cloud",
        }
    }
}

/// The servers as their source lists them, before the join.
enum Servers {
    Cloud(Vec<Machine>, Option<Image>),
    /// Node name and its `image` node meta.
    Catalog(Vec<(String, Option<String>)>),
}

fn consul(what: &'static str) -> impl FnOnce(ConsulError) -> StatusError {
    move |error| StatusError::Consul { what, error }
}

/// Reads the cluster's status from Consul and, when given, the cloud. `consul` is the client
/// `run` builds (clone it: it is cheap); `cloud` is its `Ports::cloud`.
// No `err`: the caller reports a failure (the CLI prints it, the endpoint answers 503).
#[tracing::instrument(skip_all, fields(cluster = %scope.cluster, cloud = cloud.is_some()))]
pub async fn gather(
    consul_client: &Client,
    cloud: Option<&dyn CloudPort>,
    scope: &Scope,
) -> Result<StatusReport, StatusError> {
    let keys = Keys::new(&scope.cluster);
    let opts = QueryOptions::default();
    let mut warnings = Vec::new();

    // The reads do not depend on one another: in flight together, a report costs the slowest
    // of them (a cloud API call, typically) rather than their sum.
    let adapter = ConsulAdapter::new(consul_client.clone(), WatchPolicy::default());
    let health = async {
        adapter
            .autopilot_health()
            .await
            .map_err(|error| StatusError::Port {
                what: "autopilot health",
                error,
            })
    };
    let (rollout_key, pause_key) = (keys.rollout(), keys.pause());
    let rollout_entry = async {
        let got = consul_client.kv_get(&rollout_key, &opts).await;
        got.map(|i| i.value).map_err(consul("the rollout record"))
    };
    let pause_entry = async {
        let got = consul_client.kv_get(&pause_key, &opts).await;
        got.map(|i| i.value).map_err(consul("the pause key"))
    };
    let (locks_prefix, receipts_prefix) = (
        format!("rehydrator/{}/locks/", scope.cluster),
        format!("rehydrator/{}/receipts/", scope.cluster),
    );
    let lists = async {
        try_join(
            async {
                let got = consul_client.kv_list(&locks_prefix, &opts).await;
                got.map(|i| i.value).map_err(consul("the locks"))
            },
            async {
                let got = consul_client.kv_list(&receipts_prefix, &opts).await;
                got.map(|i| i.value).map_err(consul("the receipts"))
            },
        )
        .await
    };
    let servers_read = async {
        match cloud {
            Some(cloud) => {
                let machines = async {
                    cloud.machines().await.map_err(|error| StatusError::Cloud {
                        what: "the machines",
                        error,
                    })
                };
                let newest = async {
                    cloud
                        .newest_image()
                        .await
                        .map_err(|error| StatusError::Cloud {
                            what: "the newest image",
                            error,
                        })
                };
                let (machines, newest) = try_join(machines, newest).await?;
                Ok(Servers::Cloud(machines, newest))
            }
            None => {
                let got = consul_client
                    .catalog_service(&scope.service, None, &opts)
                    .await;
                let nodes = got
                    .map(|i| i.value)
                    .map_err(consul("the servers' catalog service"))?;
                Ok(Servers::Catalog(
                    nodes
                        .into_iter()
                        .map(|n| (n.node, n.node_meta.get("image").cloned()))
                        .collect(),
                ))
            }
        }
    };
    let (health, rollout_entry, pause_entry, (lock_entries, receipt_entries), servers_read) =
        try_join5(health, rollout_entry, pause_entry, lists, servers_read).await?;

    let mut rollout_error = None;
    let rollout = rollout_entry.and_then(|e| match serde_json::from_slice::<Rollout>(&e.value) {
        Ok(r) => Some(r),
        Err(err) => {
            let why = format!("the rollout record at {} does not decode: {err}", e.key);
            warnings.push(why.clone());
            rollout_error = Some(why);
            None
        }
    });
    let pause = pause_entry.map(|e| parse_pause(&e.value));

    let now = now_ms();
    let (source, servers, newest_image) = match servers_read {
        Servers::Cloud(machines, newest) => {
            let reference = newest.as_ref().map(|i| i.id.clone());
            let servers = join_cloud(machines, &health, reference.as_deref(), now);
            (ServerSource::Cloud, servers, newest.map(ImageInfo::from))
        }
        Servers::Catalog(images) => {
            let reference = rollout
                .as_ref()
                .filter(|r| r.is_active())
                .map(|r| r.target_image.clone());
            let servers = join_catalog(&images, &health, reference.as_deref());
            (ServerSource::Catalog, servers, None)
        }
    };

    // Each held lock's session, for its Name and Node; a session gone since the list is a
    // warning, not a failure.
    let sessions = join_all(lock_entries.iter().map(|entry| async {
        let Some(id) = &entry.session else {
            return Ok(None);
        };
        consul_client
            .session_info(id, &opts)
            .await
            .map(|found| found.value)
            .map_err(|e| format!("session {id} of lock {}: {e}", entry.key))
    }))
    .await;
    let mut locks = Vec::new();
    for (entry, session) in lock_entries.iter().zip(sessions) {
        let session = session.unwrap_or_else(|warning| {
            warnings.push(warning);
            None
        });
        locks.push(lock_status(
            &scope.cluster,
            entry,
            session.as_ref().map(|s| (s.name.as_str(), s.node.as_str())),
        ));
    }

    let (receipts, undecodable) = latest_receipts(&receipt_entries, scope.receipts);
    if undecodable > 0 {
        warnings.push(format!("{undecodable} receipt(s) do not decode"));
    }

    let progress = rollout.as_ref().map(|r| progress(r, &servers));
    Ok(StatusReport {
        cluster: scope.cluster.clone(),
        consul: consul_client.address().to_owned(),
        generated_at: now,
        healthy: health.healthy,
        failure_tolerance: health.failure_tolerance,
        leader: health
            .servers
            .iter()
            .find(|p| p.leader)
            .map(|p| p.name.clone()),
        newest_image,
        source,
        servers,
        rollout,
        rollout_error,
        progress,
        locks,
        receipts,
        paused: pause.is_some(),
        pause,
        warnings,
    })
}

/// The servers from the cloud's machines, each joined with its Raft peer the way the rollout
/// joins them (`plan::servers`), plus any peer no machine accounts for. Oldest first.
pub fn join_cloud(
    machines: Vec<Machine>,
    health: &ClusterHealth,
    reference: Option<&str>,
    now: u64,
) -> Vec<ServerStatus> {
    let snapshot = Snapshot {
        machines,
        health: health.clone(),
        newest_image: None,
        rollout: None,
        paused: false,
        desired: 0,
        launch_attempts: 0,
        now_ms: now,
    };
    let paired = plan::servers(&snapshot);
    let mut out: Vec<ServerStatus> = paired
        .iter()
        .map(|sv| {
            let m = sv.machine;
            let mut s = peer_status(sv.node(), sv.peer);
            s.machine = Some(m.id.clone());
            s.image = Some(m.image.clone());
            s.launched_at = Some(m.launched_at);
            s.age_secs = Some(now.saturating_sub(m.launched_at) / 1000);
            s.machine_state = Some(machine_state(m.state).into());
            s.outdated = reference.map(|r| m.image != r);
            s
        })
        .collect();
    let unmatched = health.servers.iter().filter(|p| {
        !paired
            .iter()
            .any(|sv| sv.peer.is_some_and(|q| q.id == p.id))
    });
    out.extend(unmatched.map(|p| peer_status(p.name.clone(), Some(p))));
    sort_servers(&mut out);
    out
}

/// The servers from the catalog (node name, its `image` node meta), joined with Raft peers
/// by node name, plus any peer the catalog lacks.
pub fn join_catalog(
    nodes: &[(String, Option<String>)],
    health: &ClusterHealth,
    reference: Option<&str>,
) -> Vec<ServerStatus> {
    let mut out: Vec<ServerStatus> = nodes
        .iter()
        .map(|(node, image)| {
            let peer = health.servers.iter().find(|p| &p.name == node);
            let mut s = peer_status(node.clone(), peer);
            s.image = image.clone();
            s.outdated = match (image, reference) {
                (Some(i), Some(r)) => Some(i != r),
                _ => None,
            };
            s
        })
        .collect();
    let unlisted = health
        .servers
        .iter()
        .filter(|p| !nodes.iter().any(|(n, _)| n == &p.name));
    out.extend(unlisted.map(|p| peer_status(p.name.clone(), Some(p))));
    sort_servers(&mut out);
    out
}

fn peer_status(node: String, peer: Option<&rehydrator_actors::ports::PeerHealth>) -> ServerStatus {
    ServerStatus {
        node,
        machine: None,
        image: None,
        launched_at: None,
        age_secs: None,
        machine_state: None,
        in_raft: peer.is_some(),
        voter: peer.is_some_and(|p| p.voter),
        leader: peer.is_some_and(|p| p.leader),
        healthy: peer.is_some_and(|p| p.healthy),
        serf_status: peer.map(|p| p.serf_status.clone()).unwrap_or_default(),
        outdated: None,
    }
}

/// Oldest launch first (servers without a launch time last), then by node name.
fn sort_servers(servers: &mut [ServerStatus]) {
    servers.sort_by(|a, b| {
        let key = |s: &ServerStatus| s.launched_at.unwrap_or(u64::MAX);
        key(a).cmp(&key(b)).then_with(|| a.node.cmp(&b.node))
    });
}

fn machine_state(s: MachineState) -> &'static str {
    match s {
        MachineState::Pending => "pending",
        MachineState::Running => "running",
        MachineState::Stopping => "stopping",
        MachineState::Terminated => "terminated",
    }
}

/// The rollout's progress over the servers seen now.
pub fn progress(r: &Rollout, servers: &[ServerStatus]) -> Progress {
    let (state, waiting) = match &r.state {
        RolloutState::Active => ("active", r.waiting.clone()),
        RolloutState::Completed { .. } => ("completed", None),
        RolloutState::Stopped { reason, .. } => ("stopped", Some(reason.clone())),
    };
    Progress {
        target_image: r.target_image.clone(),
        state: state.into(),
        on_target: servers
            .iter()
            .filter(|s| s.image.as_deref() == Some(r.target_image.as_str()))
            .count(),
        total: servers.len(),
        launches: r.launches.len(),
        failed_launches: r.failed_launches.len(),
        retirements: r.retired(),
        waiting,
    }
}

/// What the pause key says: `rehydrator pause`'s JSON, or any text as the reason.
pub fn parse_pause(value: &[u8]) -> PauseInfo {
    if let Ok(info) = serde_json::from_slice::<PauseInfo>(value) {
        return info;
    }
    let text = String::from_utf8_lossy(value).trim().to_owned();
    PauseInfo {
        reason: Some(text).filter(|t| !t.is_empty()),
        ..PauseInfo::default()
    }
}

/// The holder the Dispatcher writes as the lock's value.
#[derive(Deserialize)]
struct Holder {
    replica: Option<String>,
    action: Option<String>,
    trigger_id: Option<String>,
}

/// One lock key: its holder from the value the Dispatcher wrote and the session's Name/Node.
pub fn lock_status(cluster: &str, entry: &KvPair, session: Option<(&str, &str)>) -> LockStatus {
    let held = entry.session.is_some();
    let holder = held
        .then(|| serde_json::from_slice::<Holder>(&entry.value).ok())
        .flatten();
    // The LockManager names sessions `rehydrator <cluster> <replica>`.
    let prefix = format!("rehydrator {cluster} ");
    let from_session = session.and_then(|(name, _)| name.strip_prefix(&prefix).map(str::to_owned));
    let (replica, action, trigger_id) = match holder {
        Some(h) => (h.replica.or(from_session), h.action, h.trigger_id),
        None => (from_session, None, None),
    };
    LockStatus {
        name: entry
            .key
            .rsplit('/')
            .next()
            .unwrap_or(&entry.key)
            .to_owned(),
        key: entry.key.clone(),
        session: entry.session.clone(),
        session_name: session.map(|(n, _)| n.to_owned()),
        node: session.map(|(_, n)| n.to_owned()),
        replica,
        action,
        trigger_id,
        lock_index: entry.lock_index,
    }
}

/// The newest `n` receipts (by finish time, then key) and how many did not decode.
pub fn latest_receipts(entries: &[KvPair], n: usize) -> (Vec<Receipt>, usize) {
    let mut undecodable = 0;
    let mut receipts: Vec<(&str, Receipt)> = entries
        .iter()
        .filter_map(|e| match Receipt::from_bytes(&e.value) {
            Some(r) => Some((e.key.as_str(), r)),
            None => {
                undecodable += 1;
                None
            }
        })
        .collect();
    receipts.sort_by(|(ka, a), (kb, b)| b.finished_at.cmp(&a.finished_at).then(ka.cmp(kb)));
    (
        receipts.into_iter().take(n).map(|(_, r)| r).collect(),
        undecodable,
    )
}

/// `1d 2h`, `3h 4m`, `5m 6s`, `7s`: the two largest units.
pub fn format_age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Unix milliseconds as RFC 3339 UTC to the second.
pub fn format_time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Left-aligned columns, two spaces apart, each as wide as its widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `text` with every control character but the line break written as an escape (`\u{1b}`):
/// what the table shows comes from Consul and the cloud (a pause reason, a receipt's error, a
/// lock's holder), and an operator's terminal must not obey escape sequences hidden in it.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The human view `rehydrator status` prints; see [`printable`] for what is escaped.
pub fn render(r: &StatusReport) -> String {
    printable(&render_raw(r))
}

fn render_raw(r: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "cluster {}  (Consul {})", r.cluster, r.consul);
    let _ = writeln!(
        out,
        "autopilot: {}, failure tolerance {}; leader: {}",
        if r.healthy { "healthy" } else { "UNHEALTHY" },
        r.failure_tolerance,
        r.leader.as_deref().unwrap_or("none"),
    );
    let _ = writeln!(
        out,
        "newest image: {}",
        match &r.newest_image {
            Some(i) => format!("{} ({}, created {})", i.id, i.name, i.created),
            None if r.source == ServerSource::Catalog => "unknown (no cloud configured)".into(),
            None => "none matches the filter".into(),
        }
    );
    let _ = match &r.pause {
        Some(p) => writeln!(out, "paused: YES{}", describe_pause(p)),
        None => writeln!(out, "paused: no"),
    };

    let _ = writeln!(out, "\nservers ({}):", r.servers.len());
    let mut rows = vec![[
        "NODE", "MACHINE", "IMAGE", "AGE", "VOTER", "LEADER", "HEALTH", "SERF",
    ]
    .map(String::from)
    .to_vec()];
    for s in &r.servers {
        let image = match (&s.image, s.outdated) {
            (Some(i), Some(true)) => format!("{i} (outdated)"),
            (Some(i), _) => i.clone(),
            (None, _) => "-".into(),
        };
        rows.push(vec![
            s.node.clone(),
            s.machine.clone().unwrap_or_else(|| "-".into()),
            image,
            s.age_secs.map_or_else(|| "-".into(), format_age),
            yes(s.voter).into(),
            yes(s.leader).into(),
            if !s.in_raft {
                "not in raft".into()
            } else if s.healthy {
                "healthy".into()
            } else {
                "unhealthy".into()
            },
            if s.serf_status.is_empty() {
                "-".into()
            } else {
                s.serf_status.clone()
            },
        ]);
    }
    for line in table(&rows).lines() {
        let _ = writeln!(out, "  {line}");
    }

    let _ = writeln!(out);
    match (&r.rollout, &r.progress) {
        (Some(ro), Some(p)) => {
            let _ = writeln!(
                out,
                "rollout {} to {}: {}, started {}",
                ro.id,
                ro.target_image,
                p.state,
                format_time(ro.started_at)
            );
            let failed = match p.failed_launches {
                0 => String::new(),
                n => format!(" ({n} failed)"),
            };
            let _ = writeln!(
                out,
                "  {}/{} servers on the target; {} launched{failed}, {} retired; baseline tolerance {}",
                p.on_target,
                p.total,
                p.launches + p.failed_launches,
                p.retirements,
                ro.baseline_tolerance
            );
            if let Some(f) = ro.failed_launches.last() {
                let _ = writeln!(
                    out,
                    "  last failed launch: {}: {}",
                    f.machine,
                    f.reason.as_deref().unwrap_or("no reason given")
                );
            }
            if let Some(w) = &p.waiting {
                let label = if p.state == "stopped" {
                    "stopped because"
                } else {
                    "waiting"
                };
                let _ = writeln!(out, "  {label}: {w}");
            }
            if let Some(s) = &ro.retiring {
                let _ = writeln!(out, "  retiring: {}", s.machine);
            }
            for m in &ro.leader_moves {
                let _ = writeln!(
                    out,
                    "  leadership: off {} by {} to {} ({} ms until the new leader)",
                    m.from,
                    m.path,
                    m.to.as_deref().unwrap_or("?"),
                    m.until_new_leader_ms
                );
            }
        }
        _ => match &r.rollout_error {
            Some(e) => {
                let _ = writeln!(
                    out,
                    "rollout: INVALID, no step is taken: {e}; `rehydrator repair` rebuilds it"
                );
            }
            None => {
                let _ = writeln!(out, "rollout: none recorded");
            }
        },
    }

    let held: Vec<&LockStatus> = r.locks.iter().filter(|l| l.session.is_some()).collect();
    if held.is_empty() {
        let _ = writeln!(out, "locks: none held");
    } else {
        let _ = writeln!(out, "locks:");
        for l in held {
            let job = match (&l.action, &l.trigger_id) {
                (Some(a), Some(t)) => format!(", running {a} for trigger {t}"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {}: held by {} (node {}){job}",
                l.name,
                l.replica.as_deref().unwrap_or("an unknown replica"),
                l.node.as_deref().unwrap_or("?"),
            );
        }
    }

    if r.receipts.is_empty() {
        let _ = writeln!(out, "receipts: none");
    } else {
        let _ = writeln!(out, "last receipts:");
        let rows: Vec<Vec<String>> = r
            .receipts
            .iter()
            .map(|rc| {
                let (label, detail) = outcome_parts(&rc.outcome);
                vec![
                    format_time(rc.finished_at),
                    rc.action.clone(),
                    rc.trigger_id.clone(),
                    rc.by.clone(),
                    format!("{label}: {detail}"),
                ]
            })
            .collect();
        for line in table(&rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    for w in &r.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

fn outcome_parts(o: &rehydrator_actors::receipt::Outcome) -> (&'static str, &str) {
    use rehydrator_actors::receipt::Outcome;
    let detail = match o {
        Outcome::Succeeded(d)
        | Outcome::Launched(d)
        | Outcome::Retired(d)
        | Outcome::NoOp(d)
        | Outcome::Failed(d) => d.as_str(),
    };
    (o.label(), detail)
}

fn describe_pause(p: &PauseInfo) -> String {
    let mut s = String::new();
    if let Some(by) = &p.by {
        let _ = write!(s, " by {by}");
    }
    if let Some(at) = p.at {
        let _ = write!(s, " at {}", format_time(at));
    }
    if let Some(reason) = &p.reason {
        let _ = write!(s, ": {reason}");
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rehydrator_actors::plan::StepRecord;
    use rehydrator_actors::ports::PeerHealth;
    use rehydrator_actors::receipt::Outcome;

    fn machine(id: &str, image: &str, launched_at: u64) -> Machine {
        Machine {
            id: format!("i-{id}"),
            image: image.into(),
            launched_at,
            state: MachineState::Running,
            address: Some(format!("10.0.0.{launched_at}")),
            node: Some(id.into()),
            token: None,
            reason: None,
        }
    }

    fn peer(name: &str, leader: bool, voter: bool) -> PeerHealth {
        PeerHealth {
            id: format!("raft-{name}"),
            name: name.into(),
            address: "10.9.9.9:8300".into(),
            serf_status: "alive".into(),
            leader,
            voter,
            healthy: voter,
        }
    }

    fn health() -> ClusterHealth {
        ClusterHealth {
            healthy: true,
            failure_tolerance: 1,
            servers: vec![
                peer("s1", false, true),
                peer("s2", true, true),
                peer("n1", false, false),
            ],
        }
    }

    #[test]
    fn cloud_machines_join_their_peers_oldest_first() {
        let machines = vec![
            machine("n1", "B", 5_000),
            machine("s2", "A", 2_000),
            machine("s1", "A", 1_000),
        ];
        let servers = join_cloud(machines, &health(), Some("B"), 65_000);
        let nodes: Vec<&str> = servers.iter().map(|s| s.node.as_str()).collect();
        assert_eq!(nodes, ["s1", "s2", "n1"]);
        assert_eq!(servers[0].machine.as_deref(), Some("i-s1"));
        assert_eq!(servers[0].age_secs, Some(64));
        assert_eq!(servers[0].outdated, Some(true));
        assert!(servers[1].leader && servers[1].voter);
        // The new one is in Raft, not yet a voter, on the newest image.
        assert!(servers[2].in_raft && !servers[2].voter);
        assert_eq!(servers[2].outdated, Some(false));
    }

    #[test]
    fn a_peer_without_a_machine_and_a_machine_without_a_peer_both_show() {
        let machines = vec![machine("s1", "A", 1), machine("new", "B", 9)];
        let servers = join_cloud(machines, &health(), None, 10_000);
        let nodes: Vec<&str> = servers.iter().map(|s| s.node.as_str()).collect();
        assert_eq!(nodes, ["s1", "new", "n1", "s2"]);
        let new = &servers[1];
        assert!(!new.in_raft && !new.healthy && new.serf_status.is_empty());
        let orphan = &servers[3];
        assert!(orphan.machine.is_none() && orphan.leader);
        assert!(servers.iter().all(|s| s.outdated.is_none()));
    }

    #[test]
    fn catalog_nodes_take_their_image_from_node_meta() {
        let nodes = vec![
            ("s2".to_owned(), Some("A".to_owned())),
            ("s1".to_owned(), Some("B".to_owned())),
        ];
        let servers = join_catalog(&nodes, &health(), Some("B"));
        let nodes: Vec<&str> = servers.iter().map(|s| s.node.as_str()).collect();
        assert_eq!(nodes, ["n1", "s1", "s2"]);
        assert_eq!(servers[1].outdated, Some(false));
        assert_eq!(servers[2].outdated, Some(true));
        assert!(servers[2].leader);
        assert_eq!(servers[0].image, None);
    }

    fn rollout(state: RolloutState) -> Rollout {
        let mut r = Rollout::start("r1".into(), "B", 1_700_000_000_000, 1);
        r.state = state;
        r.launches.push(StepRecord {
            machine: "i-n1".into(),
            at: 5,
            token: None,
            reason: None,
        });
        r.waiting = Some("new server n1 is not yet a stable voter".into());
        r
    }

    #[test]
    fn progress_counts_servers_on_the_target_and_says_why_it_waits() {
        let servers = join_cloud(
            vec![machine("s1", "A", 1), machine("n1", "B", 5)],
            &health(),
            Some("B"),
            10,
        );
        let p = progress(&rollout(RolloutState::Active), &servers);
        assert_eq!((p.on_target, p.total, p.launches), (1, 3, 1));
        assert_eq!(p.state, "active");
        assert!(p.waiting.as_deref().is_some_and(|w| w.contains("n1")));
        let stopped = progress(
            &rollout(RolloutState::Stopped {
                at: 9,
                reason: "n1 never got healthy".into(),
            }),
            &servers,
        );
        assert_eq!(stopped.state, "stopped");
        assert_eq!(stopped.waiting.as_deref(), Some("n1 never got healthy"));
        let done = progress(&rollout(RolloutState::Completed { at: 9 }), &servers);
        assert_eq!((done.state.as_str(), done.waiting), ("completed", None));
    }

    #[test]
    fn the_pause_key_is_read_as_json_or_as_text() {
        let json = br#"{"by":"ops@host","reason":"change freeze","at":5}"#;
        let p = parse_pause(json);
        assert_eq!(p.by.as_deref(), Some("ops@host"));
        assert_eq!(p.reason.as_deref(), Some("change freeze"));
        assert_eq!(
            parse_pause(b" hold on \n").reason.as_deref(),
            Some("hold on")
        );
        assert_eq!(parse_pause(b""), PauseInfo::default());
    }

    fn kv(key: &str, value: &[u8], session: Option<&str>) -> KvPair {
        KvPair {
            key: key.into(),
            value: value.to_vec(),
            session: session.map(str::to_owned),
            lock_index: 3,
            ..KvPair::default()
        }
    }

    #[test]
    fn a_lock_names_its_replica_from_the_value_or_the_session_name() {
        let value = br#"{"replica":"r-a","action":"spin-up","trigger_id":"42"}"#;
        let held = kv("rehydrator/prod/locks/step", value, Some("sess"));
        let l = lock_status("prod", &held, Some(("rehydrator prod r-a", "node-1")));
        assert_eq!(l.name, "step");
        assert_eq!(
            (l.replica.as_deref(), l.action.as_deref(), l.node.as_deref()),
            (Some("r-a"), Some("spin-up"), Some("node-1"))
        );
        let odd = kv("rehydrator/prod/locks/step", b"not json", Some("sess"));
        let l = lock_status("prod", &odd, Some(("rehydrator prod r-b", "node-2")));
        assert_eq!(l.replica.as_deref(), Some("r-b"));
        // Released: the value stays, but nobody holds it.
        let free = kv("rehydrator/prod/locks/step", value, None);
        let l = lock_status("prod", &free, None);
        assert_eq!((l.session, l.replica), (None, None));
    }

    fn receipt(action: &str, finished_at: u64) -> Receipt {
        Receipt {
            action: action.into(),
            trigger_id: format!("t{finished_at}"),
            watch: "w".into(),
            outcome: Outcome::Launched("i-1".into()),
            by: "r-a".into(),
            started_at: finished_at - 1,
            finished_at,
            lock_index: 1,
            attempts: 1,
            position: None,
        }
    }

    #[test]
    fn the_newest_receipts_come_first_and_bad_ones_are_counted() {
        let entries = vec![
            kv("a/1", &receipt("spin-up", 10).to_bytes(), None),
            kv("a/2", &receipt("spin-down", 30).to_bytes(), None),
            kv("a/3", b"{", None),
            kv("a/4", &receipt("spin-up", 20).to_bytes(), None),
        ];
        let (latest, bad) = latest_receipts(&entries, 2);
        let at: Vec<u64> = latest.iter().map(|r| r.finished_at).collect();
        assert_eq!((at, bad), (vec![30, 20], 1));
    }

    #[test]
    fn ages_show_the_two_largest_units() {
        assert_eq!(format_age(7), "7s");
        assert_eq!(format_age(366), "6m 6s");
        assert_eq!(format_age(3 * 3600 + 240), "3h 4m");
        assert_eq!(format_age(90_000), "1d 1h");
    }

    #[test]
    fn the_human_view_shows_servers_rollout_locks_receipts_and_pause() {
        let servers = join_cloud(
            vec![machine("s1", "A", 1_000), machine("n1", "B", 5_000)],
            &health(),
            Some("B"),
            3_600_000,
        );
        let ro = rollout(RolloutState::Active);
        let report = StatusReport {
            cluster: "prod".into(),
            consul: "http://127.0.0.1:8500".into(),
            generated_at: 3_600_000,
            healthy: true,
            failure_tolerance: 1,
            leader: Some("s2".into()),
            newest_image: Some(ImageInfo {
                id: "B".into(),
                name: "b".into(),
                created: "2026-01-01T00:00:00Z".into(),
            }),
            source: ServerSource::Cloud,
            progress: Some(progress(&ro, &servers)),
            servers,
            rollout: Some(ro),
            rollout_error: None,
            locks: vec![lock_status(
                "prod",
                &kv(
                    "rehydrator/prod/locks/step",
                    br#"{"replica":"r-a","action":"spin-up","trigger_id":"42"}"#,
                    Some("sess"),
                ),
                Some(("rehydrator prod r-a", "node-1")),
            )],
            receipts: vec![receipt("spin-up", 1_700_000_000_000)],
            paused: true,
            pause: Some(PauseInfo {
                by: Some("ops".into()),
                // Text from Consul may carry terminal escapes: they are shown, not obeyed.
                reason: Some("freeze\u{1b}[2J\u{7}".into()),
                at: None,
            }),
            warnings: Vec::new(),
        };
        let text = render(&report);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "control characters reach the terminal: {text:?}"
        );
        assert!(
            text.contains("paused: YES by ops: freeze\\u{1b}[2J\\u{7}"),
            "{text}"
        );
        for want in [
            "leader: s2",
            "newest image: B",
            "paused: YES by ops: freeze",
            "i-s1",
            "A (outdated)",
            "59m 59s",
            "rollout r1 to B: active",
            "1/3 servers on the target; 1 launched, 0 retired",
            "waiting: new server n1 is not yet a stable voter",
            "step: held by r-a (node node-1), running spin-up for trigger 42",
            "2023-11-14T22:13:20Z  spin-up  t1700000000000  r-a  launched: i-1",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // The JSON round-trips into the same report.
        let json = serde_json::to_string(&report).unwrap();
        let back: StatusReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }
}
