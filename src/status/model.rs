//! The report's shape: what `gather` fills in and `render` and the endpoint show.

use rehydrator_actors::guard::GuardRecord;
use rehydrator_actors::plan::Rollout;
use rehydrator_actors::ports::{Image, PortError};
use rehydrator_actors::receipt::Receipt;
use serde::{Deserialize, Serialize};

use crate::consul::ConsulError;

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
    /// The cluster's replicas, from their liveness checks (the `rehydrator` service): alive
    /// while their check passes. Replicas with `lock.check_ttl = "0s"` are not listed.
    #[serde(default)]
    pub replicas: Vec<ReplicaStatus>,
    /// The newest receipts across all actions, newest first.
    pub receipts: Vec<Receipt>,
    /// Whether the pause key `rehydrator/<cluster>/pause` is set.
    pub paused: bool,
    /// Who paused and why, when the key says so.
    pub pause: Option<PauseInfo>,
    /// The lifecycle guard's last decision (`rehydrator/<cluster>/guard`): the group's servers
    /// it released and those it holds, with why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardRecord>,
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
    /// Servers the cluster should have (`cluster.desired_servers`, else its voters now).
    #[serde(default)]
    pub desired: usize,
    /// Voters on the target image, at most `desired`: servers replaced so far. A new server
    /// still joining is not counted, nor is the extra one beside the server it replaces.
    #[serde(default)]
    pub replaced: usize,
    /// Launched machines that have not failed.
    pub launches: usize,
    /// Launched machines that died, were terminated or never started before they joined.
    #[serde(default)]
    pub failed_launches: usize,
    pub retirements: usize,
    /// Why the rollout waits (from the record), or why it stopped.
    pub waiting: Option<String>,
    /// Since when (Unix ms) it has waited for that reason, when the record says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_since: Option<u64>,
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
    /// When the holder took it (Unix ms), as its value says; None from replicas older than
    /// that field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_since: Option<u64>,
}

/// A replica as its liveness check shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub replica: String,
    /// The node of the agent its check lives on.
    pub node: String,
    /// The check's status: `passing` (alive), `critical` (dead, or stalled past its TTL:
    /// Consul has ended its session), `warning`.
    pub check: String,
    /// The check's output (`TTL expired` once it lapsed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
}

impl ReplicaStatus {
    pub fn alive(&self) -> bool {
        self.check == "passing"
    }
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
    /// `cluster.desired_servers`, when a configuration says; else the voters stand for it.
    pub desired: Option<usize>,
}

impl Scope {
    /// The cluster `cluster`, its servers registering `consul`, the last 10 receipts.
    pub fn new(cluster: impl Into<String>) -> Self {
        Self {
            cluster: cluster.into(),
            service: "consul".into(),
            receipts: DEFAULT_RECEIPTS,
            desired: None,
        }
    }

    /// The scope `run` works in.
    pub fn from_settings(settings: &rehydrator_config::Settings) -> Self {
        Self {
            cluster: settings.cluster.name.clone(),
            service: settings.cluster.service.clone(),
            receipts: DEFAULT_RECEIPTS,
            desired: Some(settings.cluster.desired_servers.get() as usize),
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
