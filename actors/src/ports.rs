//! What the actors need from the world, as small traits the binary implements: `ConsulPort`
//! (KV, sessions, blocking watches) and `WebhookPort` (the http executor's POST).
//!
//! Futures are `'static` and not `Send`: actors run on single-threaded arbiters and spawn them
//! onto their context, so an implementation clones what it needs (an awc client is an `Rc`).

use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use rehydrator_config::WatchKind;

/// A port call in flight.
pub type PortFuture<T> = LocalBoxFuture<'static, Result<T, PortError>>;

/// Why a port call failed, in the terms the actors decide on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connection refused, reset, DNS: try again later.
    Unreachable,
    /// No answer in time: try again later.
    Timeout,
    /// The cluster has no leader: try again later.
    NoLeader,
    /// Consul refused the request as such (4xx other than 403/404/429): retrying will not help.
    Rejected,
    /// Consul refused the ACL token (403): nothing works until the token or its policy is
    /// fixed, so every place that reports errors names it.
    Denied,
    /// Consul failed it (5xx): try again later.
    Server,
    /// The answer did not decode.
    Decode,
}

/// A failed port call: its kind and a message for logs (never a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PortError {
    pub kind: ErrorKind,
    pub message: String,
}

impl PortError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self.kind,
            ErrorKind::Rejected | ErrorKind::Denied | ErrorKind::Decode
        )
    }

    /// The kind as a short label, for metrics and structured logs.
    pub fn label(&self) -> &'static str {
        match self.kind {
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::NoLeader => "no_leader",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Denied => "acl_denied",
            ErrorKind::Server => "server",
            ErrorKind::Decode => "decode",
        }
    }
}

/// A KV entry as the actors see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub session: Option<String>,
    pub lock_index: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A value with the index a blocking query continues from.
#[derive(Debug, Clone, PartialEq)]
pub struct Indexed<T> {
    pub index: u64,
    pub value: T,
}

/// What `ConsulPort::kv_acquire` is asked: the lock, and what decides under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquire {
    pub key: String,
    pub value: Vec<u8>,
    pub session: String,
    /// Take nothing if this key exists (a job's receipt: the job is done).
    pub unless: Option<String>,
    /// Read the keys under this prefix in the same round trip (a job's watermarks).
    pub read: Option<String>,
}

/// What `ConsulPort::kv_acquire` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The session holds the lock, acquired for the `lock_index`-th time; `read` holds the
    /// entries under the prefix asked for, as of that moment; `prior` is the lock key's value
    /// just before (a released or dead holder's record of what it held), if the key existed.
    Held {
        lock_index: u64,
        read: Vec<KvEntry>,
        prior: Option<Vec<u8>>,
    },
    /// `unless` exists; nothing was written.
    Present,
    /// Another session holds the lock, or lock-delay keeps it free for now.
    Busy,
}

/// The session a replica holds its locks with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    pub name: String,
    pub ttl: Duration,
    pub lock_delay: Duration,
    /// A check on the agent the session is tied to besides `serfHealth` (the replica's
    /// liveness check): Consul invalidates the session when it turns critical.
    pub check: Option<String>,
}

/// The replica's liveness check: a TTL check on its Consul agent, in a service instance of
/// its own (`rehydrator`, ID `id`), that the replica passes while it runs. Its session is tied
/// to it, so a dead replica's locks go when the check turns critical (`ttl` after the last
/// pass) instead of when the session's TTL lapses (up to 2 × TTL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessSpec {
    /// The service's and its check's ID on the agent: unique per cluster and replica.
    pub id: String,
    pub cluster: String,
    pub replica: String,
    pub ttl: Duration,
}

/// The lock a write is made under: the write lands only while `session` still holds `lock`.
/// A replica that lost its lock (frozen past its session's TTL, cut off from its agent) and
/// goes on with a step it decided before cannot record anything: the holder that took over
/// decides from what is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub lock: String,
    pub session: String,
}

/// What a fenced write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    Written,
    /// The key is no longer at the index asked for.
    Changed,
    /// The session no longer holds the lock: nothing was written.
    LockLost,
}

/// Consul, as the actors use it.
pub trait ConsulPort {
    /// One key; `index`/`wait` make it a blocking read (index 0: answer at once).
    fn kv_get(&self, key: &str, index: u64, wait: Duration)
        -> PortFuture<Indexed<Option<KvEntry>>>;
    /// Every key under `prefix`.
    fn kv_list(&self, prefix: &str) -> PortFuture<Indexed<Vec<KvEntry>>>;
    /// Writes `value`; with `cas` only if the key's ModifyIndex is `cas` (0: only if absent).
    fn kv_put(&self, key: &str, value: Vec<u8>, cas: Option<u64>) -> PortFuture<bool>;
    /// Deletes one key.
    fn kv_delete(&self, key: &str) -> PortFuture<bool>;
    /// Takes the lock on `key` for `session`, writing `value`, in one round trip that also
    /// fails if `unless` exists and reads the keys under `read` (Consul's `/v1/txn`).
    fn kv_acquire(&self, req: &Acquire) -> PortFuture<Acquired>;
    /// Lets go of the lock on `key` if `session` holds it.
    fn kv_release(&self, key: &str, session: &str) -> PortFuture<bool>;
    /// Creates a session (Behavior=release) and returns its ID.
    fn session_create(&self, spec: &SessionSpec) -> PortFuture<String>;
    /// Renews a session; `Ok(false)` when Consul no longer knows it (it was invalidated).
    fn session_renew(&self, id: &str) -> PortFuture<bool>;
    /// Destroys a session, releasing its locks.
    fn session_destroy(&self, id: &str) -> PortFuture<()>;
    /// A blocking-query stream for a `[[watch]]`, following Consul's blocking-query rules.
    fn watch(&self, kind: &WatchKind) -> Box<dyn WatchStream>;

    /// Writes `value` if the key's ModifyIndex is `cas` (0: only if absent; None: whatever
    /// it holds) and `fence`'s session holds its lock, both checked in the write's own
    /// transaction.
    fn kv_put_fenced(
        &self,
        key: &str,
        value: Vec<u8>,
        cas: Option<u64>,
        fence: &Fence,
    ) -> PortFuture<Fenced> {
        let _ = (key, value, cas, fence);
        Box::pin(futures_util::future::ready(Err(unsupported(
            "a fenced write",
        ))))
    }

    /// Registers the replica's liveness check on the agent and passes it: registering alone
    /// would leave a check that an earlier stall made critical as it was.
    fn liveness_register(&self, spec: &LivenessSpec) -> PortFuture<()> {
        let _ = spec;
        Box::pin(futures_util::future::ready(Err(unsupported(
            "a liveness check",
        ))))
    }

    /// Passes the liveness check `id`; `Ok(false)` when the agent no longer has it.
    fn liveness_pass(&self, id: &str) -> PortFuture<bool> {
        let _ = id;
        Box::pin(futures_util::future::ready(Err(unsupported(
            "a liveness check",
        ))))
    }

    /// Saves a snapshot of the servers' state (through the leader) to `dest`, whole or not
    /// at all (written aside, then renamed), reading at most `max_bytes`; answers its size.
    fn snapshot(&self, dest: &std::path::Path, max_bytes: usize) -> PortFuture<u64> {
        let _ = (dest, max_bytes);
        Box::pin(futures_util::future::ready(Err(unsupported("a snapshot"))))
    }

    /// Removes the liveness check `id` and its service from the agent.
    fn liveness_deregister(&self, id: &str) -> PortFuture<()> {
        let _ = id;
        Box::pin(futures_util::future::ready(Err(unsupported(
            "a liveness check",
        ))))
    }

    /// Autopilot's view of the servers (`/v1/operator/autopilot/health`; 429 is an answer).
    fn autopilot_health(&self) -> PortFuture<ClusterHealth> {
        Box::pin(futures_util::future::ready(Err(unsupported(
            "autopilot health",
        ))))
    }

    /// Autopilot's `ServerStabilizationTime`: how long a new server must be healthy before it
    /// becomes a voter.
    fn server_stabilization(&self) -> PortFuture<Duration> {
        Box::pin(futures_util::future::ready(Err(unsupported(
            "autopilot configuration",
        ))))
    }

    /// The Raft leader's address (`/v1/status/leader`), None while there is none: Raft's own
    /// answer, fresher than autopilot's health, which a server computes every few seconds.
    fn raft_leader(&self) -> PortFuture<Option<String>> {
        Box::pin(futures_util::future::ready(Err(unsupported(
            "status/leader",
        ))))
    }

    /// Moves leadership to the voter `to` (any other voter if None).
    fn transfer_leader(&self, to: Option<&str>) -> PortFuture<LeaderTransfer> {
        let _ = to;
        Box::pin(futures_util::future::ready(Err(unsupported(
            "transfer-leader",
        ))))
    }

    /// Makes the failed member `node` leave (`/v1/agent/force-leave`): the leader then takes
    /// it out of Raft. Ask it only of a member known dead: real 1.8.7 drops a live one too.
    fn force_leave(&self, node: &str) -> PortFuture<()> {
        let _ = node;
        Box::pin(futures_util::future::ready(Err(unsupported("force-leave"))))
    }
}

fn unsupported(what: &str) -> PortError {
    PortError::new(
        ErrorKind::Rejected,
        format!("{what} is not available through this port"),
    )
}

/// One server as autopilot sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerHealth {
    /// The Raft ID.
    pub id: String,
    /// The node name.
    pub name: String,
    /// `ip:port` of its Raft endpoint.
    pub address: String,
    /// `alive`, `left`, `failed`, ...
    pub serf_status: String,
    pub leader: bool,
    pub voter: bool,
    pub healthy: bool,
    /// Since when `healthy` has held (autopilot's StableSince), Unix ms, when known.
    pub stable_since_ms: Option<u64>,
}

impl PeerHealth {
    /// The address without its port, to match a machine's private address.
    pub fn ip(&self) -> &str {
        self.address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(ip, _)| ip)
    }
}

/// Autopilot's verdict on the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterHealth {
    pub healthy: bool,
    pub failure_tolerance: u32,
    pub servers: Vec<PeerHealth>,
}

/// How a leadership transfer went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderTransfer {
    Transferred,
    /// Consul answered but did not move leadership.
    NotTransferred,
    /// The servers predate transfer-leader (Consul < 1.15 answers 404).
    Unsupported,
}

/// One watch's blocking-query loop as the client runs it: index handling (reset when it goes
/// backwards, never 0 after the first call), rate limiting and backoff on errors are the
/// stream's business; the Watcher only decides what counts as a change worth firing.
pub trait WatchStream {
    /// The first call answers at once (the baseline); later calls block until the index moves
    /// or the wait runs out. After an error the next call waits out the stream's backoff.
    fn next(&self) -> PortFuture<WatchRead>;
}

/// What one blocking read of a watch returned.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchRead {
    /// X-Consul-Index of the answer (for event lists, Consul's hash of the last event ID).
    pub index: u64,
    /// The endpoint's JSON answer, as `consul watch` hands it to a handler.
    pub payload: serde_json::Value,
}

/// The http executor's one need: POST JSON, return the status code; and the rollout's
/// notifications' (`notify.rs`): the same with a bearer token.
pub trait WebhookPort {
    fn post_json(&self, url: &str, body: serde_json::Value, timeout: Duration) -> PortFuture<u16>;

    /// POSTs JSON with `Authorization: Bearer <token>` when a token is given. The token must
    /// not appear in errors or logs. A port that cannot send the header refuses rather than
    /// posting without it.
    fn post_json_bearer(
        &self,
        url: &str,
        body: serde_json::Value,
        token: Option<&str>,
        timeout: Duration,
    ) -> PortFuture<u16> {
        match token {
            None => self.post_json(url, body, timeout),
            Some(_) => Box::pin(futures_util::future::ready(Err(unsupported(
                "a bearer token",
            )))),
        }
    }
}

/// Where snapshots go when they leave the machine (`rollout.snapshot_dir = "s3://…"`): one
/// bucket, keys as given.
pub trait ObjectStore {
    /// Uploads the file at `file` as `key`.
    fn put_file(&self, key: &str, file: &std::path::Path) -> PortFuture<()>;

    /// The keys under `prefix`, oldest first (by last modification, then key).
    fn list(&self, prefix: &str) -> PortFuture<Vec<String>>;

    fn delete(&self, key: &str) -> PortFuture<()>;
}

/// A health gate checked before every rollout step (`rollout.gate_*`): open, or closed and
/// why. The step waits while any gate is closed and says which and why.
pub trait GatePort {
    /// The gate's name for status and logs (`prometheus`).
    fn name(&self) -> &str;

    /// `None` when open; `Some(why)` when closed. A gate that cannot get its answer is closed
    /// (why: what failed): a step never goes on what could not be checked.
    fn closed(&self) -> LocalBoxFuture<'static, Option<String>>;
}

/// A machine image the cloud can launch servers from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// What a launch names (an AMI ID; the simulator's image label).
    pub id: String,
    pub name: String,
    /// RFC 3339; images are ordered by it, ties by name.
    pub created: String,
}

/// Where a machine is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineState {
    Pending,
    Running,
    Stopping,
    Terminated,
}

/// One of the cluster's server machines, as the cloud sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub id: String,
    pub image: String,
    /// Unix milliseconds.
    pub launched_at: u64,
    pub state: MachineState,
    /// Private address (no port): how it is matched to its Raft peer.
    pub address: Option<String>,
    /// Its availability zone, when the cloud knows it: a retirement keeps the zones even.
    pub zone: Option<String>,
    /// The Consul node name, when the cloud knows it.
    pub node: Option<String>,
    /// The idempotency token it was launched with.
    pub token: Option<String>,
    /// Why it stopped or never started, in the cloud's words (EC2's StateReason, the agent's
    /// exit status and the tail of its log); None while it lives or where the cloud says
    /// nothing. Bounded by the backend ([`MAX_REASON`]).
    pub reason: Option<String>,
}

/// The longest `Machine::reason` a backend passes on: it is written into the rollout record,
/// whose size is bounded.
pub const MAX_REASON: usize = 512;

/// `text` cut to at most `max` bytes on a character boundary, with `…` where it was cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Where the Consul servers' machines come from: EC2, ECS container instances, the simulator's
/// cloud, or local processes. No SDK type crosses this trait.
pub trait CloudPort {
    /// The newest image matching the configured filter (newest by creation date, then name).
    fn newest_image(&self) -> PortFuture<Option<Image>>;
    /// The cluster's server machines that are not terminated.
    fn machines(&self) -> PortFuture<Vec<Machine>>;
    /// Launches one server on `image`. With a `token` already used, answers the machine that
    /// token launched instead of a second one: a retried step never makes two machines.
    fn launch(&self, image: &str, token: &str) -> PortFuture<Machine>;
    /// Retires a machine: the Consul agent on it leaves gracefully, then the machine goes.
    fn retire(&self, machine_id: &str) -> PortFuture<()>;
    /// One machine in any state, terminated included, with why it stopped; None when the
    /// cloud does not know it (never launched, or forgotten since). Asked only about a
    /// launched machine that `machines` no longer lists, to tell a failed launch from a
    /// listing that lags.
    fn machine(&self, machine_id: &str) -> PortFuture<Option<Machine>>;

    /// The servers an Auto Scaling group's lifecycle hooks of rehydrator's hold in a wait
    /// state; none where the servers are in no group (the default).
    fn lifecycle_waits(&self) -> PortFuture<Vec<LifecycleWait>> {
        Box::pin(futures_util::future::ready(Ok(Vec::new())))
    }

    /// Lets a held instance go on (CompleteLifecycleAction CONTINUE).
    fn complete_lifecycle(&self, wait: &LifecycleWait) -> PortFuture<()> {
        let _ = wait;
        Box::pin(futures_util::future::ready(Err(unsupported(
            "lifecycle actions",
        ))))
    }

    /// Keeps a held instance waiting (RecordLifecycleActionHeartbeat).
    fn extend_lifecycle(&self, wait: &LifecycleWait) -> PortFuture<()> {
        let _ = wait;
        Box::pin(futures_util::future::ready(Err(unsupported(
            "lifecycle actions",
        ))))
    }
}

/// Which lifecycle transition a group holds an instance in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// `Pending:Wait`: launched, not yet in service.
    Launching,
    /// `Terminating:Wait`: about to be terminated.
    Terminating,
}

/// An instance a group's lifecycle hook holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleWait {
    /// The machine's ID (the instance).
    pub machine: String,
    pub transition: Transition,
    /// The hook holding it (CompleteLifecycleAction names it).
    pub hook: String,
    /// How long the hook waits for a heartbeat or a completion before its default result.
    pub heartbeat_timeout: Duration,
}
