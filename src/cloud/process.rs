//! Local processes as the actors' `CloudPort`: each "machine" is a real `consul agent -server`
//! on loopback, each "image" a label (a file under `images/`, optionally naming another consul
//! binary) carried in the agent's node meta as `image`. `run` builds it from
//! `[cloud] type = "process"`; `rehydrator process-cluster` starts the first servers and the
//! client agent replicas talk to, so a real rollout runs on a laptop.
//!
//! Every replica on the machine shares one data directory, which is the whole cloud's state:
//!
//! ```text
//! images/<label>          the image registry; content: a consul binary, empty = the default
//! machines/<id>.json      one record per launched server (written atomically)
//! machines/<id>.log       the agent's stdout and stderr
//! machines/<id>.exit      how the agent exited, written by the replica that reaped it
//! machines/<id>/data      the agent's -data-dir
//! client.json, client/    the client agent replicas talk to
//! ```
//!
//! A machine's ID derives from its launch token and its record is created with a hard link,
//! which fails if the file exists: of two replicas launching the same step, exactly one writes
//! the record and spawns; the other answers that record. The agents run in their own process
//! group, so a replica's Ctrl-C never takes the cluster down with it.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rehydrator_actors::ports::{
    clip, CloudPort, Image, Machine, MachineState, PortFuture, MAX_REASON,
};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use super::consul_version::{self, Version};
use super::CloudError;
use crate::consul::Token;

/// How long `consul leave` and the agent's exit after it may take before the process is
/// signalled: a server's leave drains for 5s (`leave_drain_time`) and then shuts down.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to die after SIGTERM before it gets SIGKILL.
pub const TERM_TIMEOUT: Duration = Duration::from_secs(10);
/// A record without a PID this old belongs to a launcher that died before it spawned.
pub const SPAWN_GRACE: Duration = Duration::from_secs(30);
/// What every agent runs with unless told otherwise: loopback needs no slack for slow networks.
pub const DEFAULT_HCL: &str = "performance { raft_multiplier = 1 }";
/// The client agent's node name.
pub const CLIENT_NODE: &str = "rehydrator-client";

const POLL: Duration = Duration::from_millis(100);

/// The ports an agent listens on; DNS, gRPC and Serf WAN are disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPorts {
    pub http: u16,
    pub server: u16,
    pub serf_lan: u16,
}

/// One launched agent, as `machines/<id>.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub image: String,
    pub token: String,
    /// Unix milliseconds.
    pub launched_at: u64,
    /// None between the record's creation and the spawn.
    pub pid: Option<u32>,
    pub ports: AgentPorts,
    pub binary: PathBuf,
    #[serde(default)]
    pub retired: bool,
}

/// What a `ProcessCloud` is built from.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    /// The consul binary for images that name none, and for `consul leave`.
    pub consul_bin: PathBuf,
    /// Shared by every replica on the machine.
    pub data_dir: PathBuf,
    /// HCL fragments every agent gets after [`DEFAULT_HCL`], as owner-only files in its
    /// configuration folder (they may hold ACL tokens).
    pub agent_hcl: Vec<String>,
    /// The ACL token for what the backend asks the agents itself (`consul leave`): passed in
    /// the child's environment, never its arguments.
    pub acl_token: Option<Token>,
}

/// Consul agents as local processes.
#[derive(Clone)]
pub struct ProcessCloud {
    inner: Arc<Inner>,
}

struct Inner {
    options: ProcessOptions,
    /// The agents this instance spawned: `try_wait` reaps them, so none stays a zombie.
    children: Mutex<HashMap<String, Child>>,
    /// Each binary's Consul version, asked once: the flags an agent gets depend on it.
    versions: Mutex<HashMap<PathBuf, Version>>,
}

impl std::fmt::Debug for ProcessCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessCloud")
            .field("consul_bin", &self.inner.options.consul_bin)
            .field("data_dir", &self.inner.options.data_dir)
            .finish()
    }
}

impl ProcessCloud {
    /// A cloud over `options.data_dir`, created if missing.
    pub fn new(options: ProcessOptions) -> Result<Self, CloudError> {
        for dir in ["images", "machines"] {
            let path = options.data_dir.join(dir);
            fs::create_dir_all(&path).map_err(|e| CloudError::Config {
                reason: format!("cloud.data_dir: cannot create {}: {e}", path.display()),
            })?;
        }
        Ok(Self::with_options(options))
    }

    fn with_options(options: ProcessOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                children: Mutex::new(HashMap::new()),
                versions: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The cloud `[cloud] type = "process"` describes.
    pub fn from_settings(
        settings: &rehydrator_config::ProcessSettings,
    ) -> Result<Self, CloudError> {
        Self::new(ProcessOptions {
            consul_bin: settings.consul_bin.clone(),
            data_dir: settings.data_dir.clone(),
            agent_hcl: settings
                .agent_hcl
                .iter()
                .map(|h| h.expose().to_owned())
                .collect(),
            acl_token: None,
        })
    }

    /// The same cloud, asking the agents with `token` (the replica's own Consul token).
    pub fn with_acl_token(self, token: Option<Token>) -> Self {
        let mut options = self.inner.options.clone();
        options.acl_token = token;
        Self::with_options(options)
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.options.data_dir
    }

    /// The consul binary of images that name none.
    pub fn binary(&self) -> &Path {
        &self.inner.options.consul_bin
    }

    /// A record's machine state now (retired, never started, starting, running, exited).
    pub fn state_of(&self, record: &Record) -> MachineState {
        self.reap();
        self.state(record, now_ms())
    }

    fn children(&self) -> MutexGuard<'_, HashMap<String, Child>> {
        // A panic while holding the map leaves it consistent: every entry is a live handle.
        self.inner
            .children
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The Consul version of `binary`, asked once and remembered.
    pub fn version_of(&self, binary: &Path) -> Result<Version, CloudError> {
        let cached = self
            .inner
            .versions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(binary)
            .copied();
        if let Some(v) = cached {
            return Ok(v);
        }
        // Retryable, as a failed spawn is: the binary may be in the middle of being installed.
        let v = consul_version::ask(binary).map_err(|e| CloudError::Local {
            request: format!("ask {} its version", binary.display()),
            reason: format!("{e}; is it a consul binary?"),
        })?;
        tracing::info!(binary = %binary.display(), version = %v, "Consul binary version.");
        self.inner
            .versions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(binary.to_owned(), v);
        Ok(v)
    }

    fn machines_dir(&self) -> PathBuf {
        self.data_dir().join("machines")
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.machines_dir().join(format!("{id}.json"))
    }

    fn client_path(&self) -> PathBuf {
        self.data_dir().join("client.json")
    }

    /// Registers image `label` (now its creation time), running `binary` or the default consul.
    pub fn register_image(&self, label: &str, binary: Option<&Path>) -> Result<(), CloudError> {
        let request = format!("register image {label:?}");
        check_label(label, &request)?;
        let content = binary.map(|b| b.display().to_string()).unwrap_or_default();
        let path = self.data_dir().join("images").join(label);
        write_atomic(&path, content.as_bytes()).map_err(|e| local(&request, &path, e))
    }

    /// The binary image `label` runs; refused when no such image is registered.
    fn image_binary(&self, label: &str, request: &str) -> Result<PathBuf, CloudError> {
        check_label(label, request)?;
        let path = self.data_dir().join("images").join(label);
        match fs::read_to_string(&path) {
            Ok(text) if text.trim().is_empty() => Ok(self.inner.options.consul_bin.clone()),
            Ok(text) => Ok(PathBuf::from(text.trim())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(CloudError::Refused {
                request: request.to_owned(),
                reason: format!(
                    "image {label:?} is not registered (no file {})",
                    path.display()
                ),
            }),
            Err(e) => Err(local(request, &path, e)),
        }
    }

    /// The registered images, each created at its file's modification time.
    pub fn images(&self) -> Result<Vec<Image>, CloudError> {
        let request = "list images";
        let dir = self.data_dir().join("images");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(local(request, &dir, e)),
        };
        let mut images = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| local(request, &dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Temporary files of a registration in progress start with a dot.
            if name.starts_with('.') || check_label(&name, request).is_err() {
                continue;
            }
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(|e| local(request, &entry.path(), e))?;
            images.push(Image {
                id: name.clone(),
                name,
                created: humantime::format_rfc3339_nanos(modified).to_string(),
            });
        }
        Ok(images)
    }

    /// Every record, retired ones too, oldest first.
    pub fn records(&self) -> Result<Vec<Record>, CloudError> {
        let request = "list machines";
        let dir = self.machines_dir();
        let entries = fs::read_dir(&dir).map_err(|e| local(request, &dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| local(request, &dir, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if path.extension().is_some_and(|e| e == "json")
                && !name.is_some_and(|n| n.starts_with('.'))
            {
                if let Some(r) = read_record(&path, request)? {
                    out.push(r);
                }
            }
        }
        out.sort_by(|a, b| (a.launched_at, &a.id).cmp(&(b.launched_at, &b.id)));
        Ok(out)
    }

    /// Whether the record's agent runs: a child of this instance by `try_wait`, any other
    /// by its process table entry (not a zombie, its command line naming the node).
    pub fn is_alive(&self, record: &Record) -> bool {
        let Some(pid) = record.pid else {
            return false;
        };
        let mut children = self.children();
        if let Some(child) = children.get_mut(&record.id) {
            if child.id() == pid {
                return match child.try_wait() {
                    Ok(None) => true,
                    exited => {
                        children.remove(&record.id);
                        drop(children);
                        if let Ok(Some(status)) = exited {
                            self.note_exit(&record.id, status);
                        }
                        false
                    }
                };
            }
        }
        drop(children);
        pid_runs(pid, &record.id)
    }

    /// Keeps how a child agent exited where every replica can read it: only its parent can
    /// reap it and learn its status.
    fn note_exit(&self, id: &str, status: std::process::ExitStatus) {
        let path = self.record_path(id).with_extension("exit");
        if let Err(e) = write_atomic(&path, status.to_string().as_bytes()) {
            tracing::debug!(machine = %id, error = %e, "Could not keep the agent's exit status.");
        }
    }

    /// The record's machine with, if its agent died (rather than being retired), why: read
    /// only when one machine is asked about, not on every listing.
    fn described(&self, record: &Record) -> Machine {
        let mut m = self.machine(record);
        if m.state == MachineState::Terminated && !record.retired {
            m.reason = Some(self.reason(record));
        }
        m
    }

    /// Why a record's agent is not running: how it exited (if its parent saw) and the tail of
    /// its log. Read only when asked about one machine, not on every listing.
    fn reason(&self, record: &Record) -> String {
        if record.pid.is_none() {
            return "the launcher died before it started the agent".into();
        }
        let path = self.record_path(&record.id);
        let exit = fs::read_to_string(path.with_extension("exit"))
            .map(|s| format!("the agent ended with {}", s.trim()))
            .unwrap_or_else(|_| "the agent's process is gone".into());
        match log_tail(&path.with_extension("log"), 3) {
            Some(tail) => clip(&format!("{exit}; its log ends: {tail}"), MAX_REASON),
            None => exit,
        }
    }

    fn state(&self, record: &Record, now: u64) -> MachineState {
        if record.retired {
            MachineState::Terminated
        } else if record.pid.is_none() {
            let grace = u64::try_from(SPAWN_GRACE.as_millis()).unwrap_or(u64::MAX);
            if now.saturating_sub(record.launched_at) < grace {
                MachineState::Pending
            } else {
                MachineState::Terminated
            }
        } else if self.is_alive(record) {
            MachineState::Running
        } else {
            MachineState::Terminated
        }
    }

    fn machine(&self, record: &Record) -> Machine {
        Machine {
            id: record.id.clone(),
            image: record.image.clone(),
            launched_at: record.launched_at,
            state: self.state(record, now_ms()),
            // Every agent shares 127.0.0.1: only the node name tells their peers apart.
            address: None,
            node: Some(record.id.clone()),
            token: Some(record.token.clone()),
            reason: None,
        }
    }

    /// Reaps every child of this instance that exited, whoever stopped it: one another
    /// replica retired is no longer looked at through `is_alive`, and must not stay a zombie.
    fn reap(&self) {
        let mut exited = Vec::new();
        self.children().retain(|id, child| match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                exited.push((id.clone(), status));
                false
            }
            Err(_) => false,
        });
        for (id, status) in exited {
            self.note_exit(&id, status);
        }
    }

    /// The server machines that run or are being started.
    pub fn live_machines(&self) -> Result<Vec<Machine>, CloudError> {
        self.reap();
        Ok(self
            .records()?
            .iter()
            .map(|r| self.machine(r))
            .filter(|m| m.state != MachineState::Terminated)
            .collect())
    }

    /// One machine in any state, with why its agent is not running if it is not.
    pub fn find(&self, id: &str) -> Result<Option<Machine>, CloudError> {
        self.reap();
        if check_label(id, "find a machine").is_err() {
            return Ok(None);
        }
        let Some(record) = read_record(&self.record_path(id), "find a machine")? else {
            return Ok(None);
        };
        Ok(Some(self.described(&record)))
    }

    /// Ports no other agent of this data directory holds: two agents must never share one.
    fn taken_ports(&self) -> Result<HashSet<u16>, CloudError> {
        let mut taken = HashSet::new();
        let client = read_record(&self.client_path(), "read the client record")?;
        for r in self.records()?.into_iter().chain(client) {
            if !r.retired {
                taken.extend([r.ports.http, r.ports.server, r.ports.serf_lan]);
            }
        }
        Ok(taken)
    }

    /// Serf LAN ports of the running servers, for `-retry-join`.
    fn join_ports(&self) -> Result<Vec<u16>, CloudError> {
        Ok(self
            .records()?
            .iter()
            .filter(|r| !r.retired && self.is_alive(r))
            .map(|r| r.ports.serf_lan)
            .collect())
    }

    /// Launches one server on `image`, or answers the machine `token` already launched.
    pub fn launch_now(&self, image: &str, token: &str) -> Result<Machine, CloudError> {
        let request = format!("launch {image}");
        let id = machine_id(token);
        let path = self.record_path(&id);
        if let Some(existing) = read_record(&path, &request)? {
            return self.answer_existing(existing, token, &request);
        }
        let binary = self.image_binary(image, &request)?;
        // Asked before the record is claimed, not between the claim and the spawn: a replica
        // killed in that window leaves a machine that never ran (a failed launch), and the
        // first `consul version` of a binary is the slowest part of a launch.
        self.version_of(&binary)?;
        let join = self.join_ports()?;
        let mut taken = self.taken_ports()?;
        let ports = allocate_ports(&mut taken).map_err(|e| CloudError::Local {
            request: request.clone(),
            reason: format!("no free loopback port: {e}"),
        })?;
        let record = Record {
            id,
            image: image.to_owned(),
            token: token.to_owned(),
            launched_at: now_ms(),
            pid: None,
            ports,
            binary,
            retired: false,
        };
        if !create_exclusive(&path, &record).map_err(|e| local(&request, &path, e))? {
            // Another replica won the race for this token between our read and our create.
            let existing = read_record(&path, &request)?.ok_or_else(|| CloudError::Local {
                request: request.clone(),
                reason: format!("{} exists but cannot be read", path.display()),
            })?;
            return self.answer_existing(existing, token, &request);
        }
        let args = server_args(&record, &self.agent_data_dir(&record.id), &join, None);
        let record = self.spawn_recorded(record, &path, args, &request)?;
        tracing::info!(
            machine = %record.id,
            image,
            pid = ?record.pid,
            http = record.ports.http,
            "Started a Consul server process.",
        );
        Ok(self.machine(&record))
    }

    fn answer_existing(
        &self,
        existing: Record,
        token: &str,
        request: &str,
    ) -> Result<Machine, CloudError> {
        if existing.token != token {
            return Err(CloudError::Refused {
                request: request.to_owned(),
                reason: format!(
                    "machine {} belongs to another token (a hash collision): use another token",
                    existing.id
                ),
            });
        }
        tracing::debug!(
            machine = %existing.id,
            "The token already launched a machine; answering it.",
        );
        Ok(self.described(&existing))
    }

    fn agent_data_dir(&self, id: &str) -> PathBuf {
        self.machines_dir().join(id).join("data")
    }

    /// Spawns the agent of a freshly created record and records its PID. If either fails the
    /// record goes, so a retry with the same token can launch again.
    fn spawn_recorded(
        &self,
        mut record: Record,
        path: &Path,
        mut args: Vec<String>,
        request: &str,
    ) -> Result<Record, CloudError> {
        let version = match self.version_of(&record.binary) {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(e);
            }
        };
        args.extend(version.agent_flags());
        let log = path.with_extension("log");
        let data_dir = self.agent_data_dir_of(path);
        let spawned = write_agent_config(&data_dir, &self.inner.options.agent_hcl)
            .and_then(|()| spawn_agent(&record.binary, &args, &log, &data_dir));
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(CloudError::Local {
                    request: request.to_owned(),
                    reason: format!("cannot start {}: {e}", record.binary.display()),
                });
            }
        };
        record.pid = Some(child.id());
        if let Err(e) = write_record(path, &record) {
            signal_group(child.id(), "KILL");
            let mut child = child;
            let _ = child.wait();
            let _ = fs::remove_file(path);
            return Err(local(request, path, e));
        }
        self.children().insert(record.id.clone(), child);
        Ok(record)
    }

    /// `machines/<id>.json` -> `machines/<id>/data`; `client.json` -> `client/data`.
    fn agent_data_dir_of(&self, record_path: &Path) -> PathBuf {
        record_path.with_extension("").join("data")
    }

    /// Starts the first `n` servers on `image`, expecting each other (`-bootstrap-expect`).
    /// Refused while any server of this data directory still runs.
    pub fn bootstrap(&self, n: usize, image: &str) -> Result<Vec<Machine>, CloudError> {
        let request = format!("bootstrap {n} servers on {image}");
        if n == 0 {
            return Err(CloudError::Refused {
                request,
                reason: "a cluster needs at least one server".into(),
            });
        }
        let binary = self.image_binary(image, &request)?;
        let running = self.live_machines()?;
        if !running.is_empty() {
            return Err(CloudError::Refused {
                request,
                reason: format!(
                    "{} server(s) of {} still run; stop them first",
                    running.len(),
                    self.data_dir().display()
                ),
            });
        }
        let mut taken = self.taken_ports()?;
        let stamp = now_ms();
        let mut records = Vec::new();
        for i in 0..n {
            let token = format!("bootstrap-{stamp}-{i}");
            let ports = allocate_ports(&mut taken).map_err(|e| CloudError::Local {
                request: request.clone(),
                reason: format!("no free loopback port: {e}"),
            })?;
            records.push(Record {
                id: machine_id(&token),
                image: image.to_owned(),
                token,
                launched_at: stamp,
                pid: None,
                ports,
                binary: binary.clone(),
                retired: false,
            });
        }
        let mut machines = Vec::new();
        for record in &records {
            let path = self.record_path(&record.id);
            if !create_exclusive(&path, record).map_err(|e| local(&request, &path, e))? {
                return Err(CloudError::Refused {
                    request,
                    reason: format!("{} exists already", path.display()),
                });
            }
            let join: Vec<u16> = records
                .iter()
                .filter(|r| r.id != record.id)
                .map(|r| r.ports.serf_lan)
                .collect();
            let args = server_args(record, &self.agent_data_dir(&record.id), &join, Some(n));
            let started = self.spawn_recorded(record.clone(), &path, args, &request)?;
            tracing::info!(
                machine = %started.id,
                image,
                pid = ?started.pid,
                http = started.ports.http,
                "Started a bootstrap server process.",
            );
            machines.push(self.machine(&started));
        }
        Ok(machines)
    }

    /// Starts the client agent replicas talk to, on `http_port` (0: any free port), joined to
    /// the running servers; answers the running one if there is one. Returns its HTTP port.
    pub fn start_client(&self, http_port: u16) -> Result<u16, CloudError> {
        let request = "start the client agent".to_owned();
        let path = self.client_path();
        if let Some(existing) = read_record(&path, &request)? {
            if !existing.retired && self.is_alive(&existing) {
                return Ok(existing.ports.http);
            }
            let _ = fs::remove_file(&path);
        }
        let join = self.join_ports()?;
        let mut taken = self.taken_ports()?;
        let mut ports = allocate_ports(&mut taken).map_err(|e| CloudError::Local {
            request: request.clone(),
            reason: format!("no free loopback port: {e}"),
        })?;
        if http_port != 0 {
            ports.http = http_port;
        }
        let record = Record {
            id: CLIENT_NODE.to_owned(),
            image: String::new(),
            token: "client".to_owned(),
            launched_at: now_ms(),
            pid: None,
            ports,
            binary: self.inner.options.consul_bin.clone(),
            retired: false,
        };
        if !create_exclusive(&path, &record).map_err(|e| local(&request, &path, e))? {
            return Err(CloudError::Refused {
                request,
                reason: format!("{} is being started by another process", path.display()),
            });
        }
        let args = client_args(&record, &self.agent_data_dir_of(&path), &join);
        let record = self.spawn_recorded(record, &path, args, &request)?;
        tracing::info!(pid = ?record.pid, http = record.ports.http, "Started the client agent.");
        Ok(record.ports.http)
    }

    /// Retires a machine: `consul leave`, then SIGTERM and SIGKILL to its process group if it
    /// does not exit in time; then the record says retired. Retiring a retired machine is done.
    pub async fn retire_now(&self, id: &str) -> Result<(), CloudError> {
        let request = format!("retire {id}");
        let path = self.record_path(id);
        let Some(mut record) = read_record(&path, &request)? else {
            return Err(CloudError::Refused {
                request,
                reason: format!("no machine {id} in {}", self.machines_dir().display()),
            });
        };
        if record.retired {
            return Ok(());
        }
        self.stop_process(&record, &request).await?;
        record.retired = true;
        write_record(&path, &record).map_err(|e| local(&request, &path, e))?;
        self.children().remove(id);
        tracing::info!(machine = %id, "Retired a Consul server process.");
        Ok(())
    }

    async fn stop_process(&self, record: &Record, request: &str) -> Result<(), CloudError> {
        let Some(pid) = record.pid else {
            return Ok(());
        };
        if !self.is_alive(record) {
            return Ok(());
        }
        match self.leave(record).await {
            Ok(()) => {
                if self.wait_exit(record, LEAVE_TIMEOUT).await {
                    return Ok(());
                }
                tracing::warn!(
                    machine = %record.id,
                    after = ?LEAVE_TIMEOUT,
                    "The agent left but did not exit; terminating it.",
                );
            }
            Err(e) => {
                tracing::warn!(
                    machine = %record.id,
                    error = %e,
                    "consul leave failed; terminating the agent.",
                )
            }
        }
        for signal in ["TERM", "KILL"] {
            signal_group(pid, signal);
            if self.wait_exit(record, TERM_TIMEOUT).await {
                return Ok(());
            }
        }
        Err(CloudError::Local {
            request: request.to_owned(),
            reason: format!("process {pid} survived SIGKILL"),
        })
    }

    /// `consul leave` against the agent's HTTP port, bounded by [`LEAVE_TIMEOUT`].
    async fn leave(&self, record: &Record) -> Result<(), CloudError> {
        let request = format!("consul leave {}", record.id);
        let log = self.record_path(&record.id).with_extension("log");
        let out = open_log(&log).map_err(|e| local(&request, &log, e))?;
        let err = out.try_clone().map_err(|e| local(&request, &log, e))?;
        let mut command = Command::new(&self.inner.options.consul_bin);
        command
            .arg("leave")
            .arg(format!("-http-addr=http://127.0.0.1:{}", record.ports.http));
        if let Some(token) = &self.inner.options.acl_token {
            command
                .env("CONSUL_HTTP_TOKEN", token.expose())
                .env_remove("CONSUL_HTTP_TOKEN_FILE");
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| CloudError::Local {
                request: request.clone(),
                reason: format!(
                    "cannot run {}: {e}",
                    self.inner.options.consul_bin.display()
                ),
            })?;
        let deadline = Instant::now() + LEAVE_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(CloudError::Local {
                        request,
                        reason: format!("{status} (see {})", log.display()),
                    })
                }
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CloudError::Timeout {
                        request,
                        after: LEAVE_TIMEOUT,
                    });
                }
                Err(e) => {
                    return Err(CloudError::Local {
                        request,
                        reason: e.to_string(),
                    })
                }
            }
        }
    }

    /// Polls until the record's process is gone; false if it still runs after `limit`.
    async fn wait_exit(&self, record: &Record, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if !self.is_alive(record) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Kills every agent of this data directory (servers and client) at once, without a
    /// leave, and marks them retired: the end of a test or of a laptop session. Blocking.
    pub fn stop_all(&self) -> Result<usize, CloudError> {
        let request = "stop every agent";
        let mut paths: Vec<PathBuf> = self
            .records()?
            .iter()
            .map(|r| self.record_path(&r.id))
            .collect();
        paths.push(self.client_path());
        let mut stopped = 0;
        for path in paths {
            let Some(mut record) = read_record(&path, request)? else {
                continue;
            };
            if record.retired {
                continue;
            }
            if let Some(pid) = record.pid {
                if self.is_alive(&record) {
                    signal_group(pid, "KILL");
                    stopped += 1;
                    let deadline = Instant::now() + TERM_TIMEOUT;
                    while self.is_alive(&record) && Instant::now() < deadline {
                        std::thread::sleep(POLL);
                    }
                }
            }
            record.retired = true;
            write_record(&path, &record).map_err(|e| local(request, &path, e))?;
            self.children().remove(&record.id);
        }
        Ok(stopped)
    }
}

impl CloudPort for ProcessCloud {
    fn newest_image(&self) -> PortFuture<Option<Image>> {
        let found = self
            .images()
            .and_then(|images| super::newest(images, "list images"));
        Box::pin(futures_util::future::ready(found.map_err(Into::into)))
    }

    fn machines(&self) -> PortFuture<Vec<Machine>> {
        let _span = tracing::debug_span!("process_cloud", op = "machines").entered();
        Box::pin(futures_util::future::ready(
            self.live_machines().map_err(Into::into),
        ))
    }

    fn launch(&self, image: &str, token: &str) -> PortFuture<Machine> {
        let _span = tracing::debug_span!("process_cloud", op = "launch", %image, %token).entered();
        Box::pin(futures_util::future::ready(
            self.launch_now(image, token).map_err(Into::into),
        ))
    }

    fn retire(&self, machine_id: &str) -> PortFuture<()> {
        let (cloud, id) = (self.clone(), machine_id.to_owned());
        let span = tracing::debug_span!("process_cloud", op = "retire", machine = %machine_id);
        Box::pin(async move { cloud.retire_now(&id).await.map_err(Into::into) }.instrument(span))
    }

    fn machine(&self, machine_id: &str) -> PortFuture<Option<Machine>> {
        let _span =
            tracing::debug_span!("process_cloud", op = "machine", machine = %machine_id).entered();
        Box::pin(futures_util::future::ready(
            self.find(machine_id).map_err(Into::into),
        ))
    }
}

/// The machine ID (and Consul node name) a launch token names: stable across replicas and
/// retries, so the record's path is the token's claim.
pub fn machine_id(token: &str) -> String {
    // FNV-1a: std's hasher may change between Rust releases, and replicas must agree.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in token.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's high bits barely move for tokens that differ in their last character (the step
    // number): murmur3's finalizer spreads them, so node names differ at a glance.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    format!("consul-{:012x}", hash >> 16)
}

/// A server agent's arguments.
pub fn server_args(
    record: &Record,
    data_dir: &Path,
    join: &[u16],
    bootstrap_expect: Option<usize>,
) -> Vec<String> {
    let mut args = vec![
        "agent".to_owned(),
        "-server".to_owned(),
        format!("-node={}", record.id),
        format!("-node-meta=image:{}", record.image),
        format!("-server-port={}", record.ports.server),
        // Servers join the WAN pool on a port of their own; one datacenter needs none.
        "-serf-wan-port=-1".to_owned(),
    ];
    if let Some(n) = bootstrap_expect {
        args.push(format!("-bootstrap-expect={n}"));
    }
    args.extend(common_args(record, data_dir, join));
    args
}

/// The client agent's arguments.
pub fn client_args(record: &Record, data_dir: &Path, join: &[u16]) -> Vec<String> {
    let mut args = vec!["agent".to_owned(), format!("-node={}", record.id)];
    args.extend(common_args(record, data_dir, join));
    args
}

fn common_args(record: &Record, data_dir: &Path, join: &[u16]) -> Vec<String> {
    let mut args = vec![
        "-bind=127.0.0.1".to_owned(),
        "-advertise=127.0.0.1".to_owned(),
        "-client=127.0.0.1".to_owned(),
        format!("-data-dir={}", data_dir.display()),
        format!("-http-port={}", record.ports.http),
        format!("-serf-lan-port={}", record.ports.serf_lan),
        // Every agent shares 127.0.0.1: the fixed default ports would collide.
        "-dns-port=-1".to_owned(),
        "-grpc-port=-1".to_owned(),
        // Consul's default of 30s between join attempts would stall a bootstrap whose peers
        // start a moment later.
        "-retry-interval=1s".to_owned(),
        // The HCL (which may hold ACL tokens) is in files only this user reads, never in the
        // arguments every user on the machine sees: see `write_agent_config`.
        format!("-config-dir={}", config_dir(data_dir).display()),
    ];
    args.extend(join.iter().map(|p| format!("-retry-join=127.0.0.1:{p}")));
    args
}

/// An agent's configuration folder, beside its data folder.
fn config_dir(data_dir: &Path) -> PathBuf {
    data_dir.with_file_name("config")
}

/// Writes [`DEFAULT_HCL`] and each `agent_hcl` fragment as a file of its own (Consul reads
/// them in name order and merges them as it would `-hcl` flags), owner-only.
fn write_agent_config(data_dir: &Path, hcl: &[String]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = config_dir(data_dir);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    for (i, text) in std::iter::once(DEFAULT_HCL)
        .chain(hcl.iter().map(String::as_str))
        .enumerate()
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(format!("{i:02}.hcl")))?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
    }
    Ok(())
}

/// Starts `binary args` in its own process group, output appended to `log`.
fn spawn_agent(binary: &Path, args: &[String], log: &Path, data_dir: &Path) -> io::Result<Child> {
    fs::create_dir_all(data_dir)?;
    let out = open_log(log)?;
    let err = out.try_clone()?;
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own group: a replica's Ctrl-C (sent to the terminal's group) must not reach it.
        .process_group(0)
        .spawn()
}

/// The last `lines` non-empty lines of a log, read from its last 4 KiB, control characters
/// dropped (an agent's log is colourless, but it is still the outside world's text).
fn log_tail(path: &Path, lines: usize) -> Option<String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut buf = Vec::new();
    f.take(4096).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let tail: Vec<String> = text
        .lines()
        .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let start = tail.len().saturating_sub(lines);
    Some(tail[start..].join(" | ")).filter(|t| !t.is_empty())
}

fn open_log(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new().create(true).append(true).open(path)
}

/// Sends `signal` to the process group `pid` leads (every agent leads its own), via kill(1):
/// `unsafe` is not allowed here, so no libc.
fn signal_group(pid: u32, signal: &str) {
    let result = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = result {
        tracing::warn!(pid, signal, error = %e, "Could not run kill(1).");
    }
}

/// Whether `pid` is a running (not zombie) process whose command line names node `node`:
/// a PID the OS reused for something else does not count.
pub fn pid_runs(pid: u32, node: &str) -> bool {
    let flag = format!("-node={node}");
    let proc = PathBuf::from(format!("/proc/{pid}"));
    if Path::new("/proc/self/stat").exists() {
        let Ok(stat) = fs::read_to_string(proc.join("stat")) else {
            return false;
        };
        // The state follows the command name, which is in parentheses and may hold any byte.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if matches!(state, None | Some('Z' | 'X' | 'x')) {
            return false;
        }
        let Ok(cmdline) = fs::read(proc.join("cmdline")) else {
            return false;
        };
        return cmdline.split(|b| *b == 0).any(|arg| arg == flag.as_bytes());
    }
    // No /proc (macOS): ps(1) shows the same.
    let Ok(out) = Command::new("ps")
        .args(["-o", "stat=", "-o", "command=", "-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    match words.next() {
        Some(stat) if !stat.starts_with('Z') => words.any(|w| w == flag),
        _ => false,
    }
}

/// An image label: a file name and a node-meta value, so letters, digits, `-`, `_` and `.`.
fn check_label(label: &str, request: &str) -> Result<(), CloudError> {
    let ok = !label.is_empty()
        && label.len() <= 128
        && !label.starts_with('.')
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(CloudError::Refused {
            request: request.to_owned(),
            reason: format!(
                "image label {label:?} may hold only letters, digits, '-', '_' and '.' (not first)"
            ),
        })
    }
}

/// Three distinct free loopback ports (TCP; the Serf port UDP too), none of them in `taken`.
pub fn allocate_ports(taken: &mut HashSet<u16>) -> io::Result<AgentPorts> {
    Ok(AgentPorts {
        http: free_port(taken, false)?,
        server: free_port(taken, false)?,
        serf_lan: free_port(taken, true)?,
    })
}

fn free_port(taken: &mut HashSet<u16>, udp: bool) -> io::Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if taken.contains(&port) || (udp && UdpSocket::bind(("127.0.0.1", port)).is_err()) {
            continue;
        }
        taken.insert(port);
        return Ok(port);
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free port in 100 tries",
    ))
}

fn read_record(path: &Path, request: &str) -> Result<Option<Record>, CloudError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CloudError::Decode {
                request: request.to_owned(),
                reason: format!("{}: {e}", path.display()),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(local(request, path, e)),
    }
}

fn write_record(path: &Path, record: &Record) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    write_atomic(path, &bytes)
}

/// A temporary file beside `path`, named so listings skip it.
fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    path.with_file_name(format!(
        ".{name}.{}.{nanos}.{}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// Writes `path` whole or not at all: a temporary file, synced, renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = temp_beside(path);
    let result = (|| {
        fs::write(&temp, bytes)?;
        fs::File::open(&temp)?.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Creates `path` with `record` whole, only if it does not exist: false if it did. A hard
/// link fails on an existing name, so of two racing creators exactly one succeeds.
pub fn create_exclusive(path: &Path, record: &Record) -> io::Result<bool> {
    let temp = temp_beside(path);
    let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    let result = (|| {
        fs::write(&temp, &bytes)?;
        fs::File::open(&temp)?.sync_all()?;
        match fs::hard_link(&temp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    })();
    let _ = fs::remove_file(&temp);
    result
}

fn local(request: &str, path: &Path, e: io::Error) -> CloudError {
    CloudError::Local {
        request: request.to_owned(),
        reason: format!("{}: {e}", path.display()),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Barrier;

    /// A stand-in agent: answers `version` as Consul 1.8.7 does, and otherwise sleeps.
    const STAND_IN: &str =
        "#!/bin/sh\n[ \"$1\" = version ] && { echo '{\"Version\": \"1.8.7\"}'; exit 0; }\nsleep 60\n";

    use rehydrator_actors::ports::{ErrorKind, PortError};

    use super::*;

    /// A data directory with a stand-in agent: a shell script that sleeps, so its command
    /// line (and /proc) shows the agent's arguments, as consul's would. Every process it
    /// started is killed and the directory removed on drop, panics included.
    struct Rig {
        cloud: ProcessCloud,
        dir: PathBuf,
    }

    impl Rig {
        fn new(name: &str) -> Self {
            Self::with_consul(name, "false")
        }

        /// `consul_bin` runs `consul leave`; `false` makes every leave fail.
        fn with_consul(name: &str, consul_bin: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "rehydrator-process-{name}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            fs::create_dir_all(&dir).unwrap();
            let agent = dir.join("agent.sh");
            fs::write(&agent, STAND_IN).unwrap();
            fs::set_permissions(&agent, fs::Permissions::from_mode(0o755)).unwrap();
            let cloud = ProcessCloud::new(ProcessOptions {
                consul_bin: PathBuf::from(consul_bin),
                data_dir: dir.join("cloud"),
                agent_hcl: Vec::new(),
                acl_token: None,
            })
            .unwrap();
            cloud.register_image("a", Some(&agent)).unwrap();
            Self { cloud, dir }
        }

        /// Another replica's view of the same data directory: no child handles.
        fn replica(&self) -> ProcessCloud {
            ProcessCloud::new(self.cloud.inner.options.clone()).unwrap()
        }

        fn record(&self, id: &str) -> Record {
            read_record(&self.cloud.record_path(id), "test")
                .unwrap()
                .unwrap()
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = self.cloud.stop_all();
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn record(id: &str) -> Record {
        Record {
            id: id.into(),
            image: "b".into(),
            token: "r1-launch-0".into(),
            launched_at: 1_714_564_800_000,
            pid: Some(4242),
            ports: AgentPorts {
                http: 18500,
                server: 18300,
                serf_lan: 18301,
            },
            binary: PathBuf::from("/usr/bin/consul"),
            retired: false,
        }
    }

    /// Polls `done` for up to 10s: process exits are observed, not slept on.
    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within 10s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_server_runs_on_loopback_with_its_own_ports_and_the_image_in_node_meta() {
        let r = record("consul-0123");
        let args = server_args(
            &r,
            Path::new("/d/machines/consul-0123/data"),
            &[18401, 18402],
            Some(3),
        );
        for want in [
            "agent",
            "-server",
            "-node=consul-0123",
            "-node-meta=image:b",
            "-bind=127.0.0.1",
            "-advertise=127.0.0.1",
            "-client=127.0.0.1",
            "-data-dir=/d/machines/consul-0123/data",
            "-http-port=18500",
            "-server-port=18300",
            "-serf-lan-port=18301",
            "-serf-wan-port=-1",
            "-dns-port=-1",
            "-grpc-port=-1",
            "-bootstrap-expect=3",
            "-retry-join=127.0.0.1:18401",
            "-retry-join=127.0.0.1:18402",
            "-config-dir=/d/machines/consul-0123/config",
        ] {
            assert!(
                args.iter().any(|a| a == want),
                "{want} missing from {args:?}"
            );
        }
        assert_eq!(args[0], "agent", "the subcommand comes first: {args:?}");
        // Later servers join the cluster; only the first ones bootstrap it.
        let later = server_args(&r, Path::new("/d"), &[18401], None);
        assert!(
            !later.iter().any(|a| a.starts_with("-bootstrap")),
            "{later:?}"
        );
        // The client agent is no server and holds no server port.
        let client = client_args(&r, Path::new("/d"), &[18401]);
        assert!(
            !client
                .iter()
                .any(|a| a == "-server" || a.starts_with("-server-port")),
            "{client:?}"
        );
        assert!(client.iter().any(|a| a == "-http-port=18500"), "{client:?}");
    }

    #[test]
    fn machine_ids_are_stable_node_names_per_token() {
        let a = machine_id("r1700000000000-launch-0");
        assert_eq!(a, machine_id("r1700000000000-launch-0"));
        assert_ne!(a, machine_id("r1700000000000-launch-1"));
        assert!(
            a.starts_with("consul-") && a.len() == "consul-".len() + 12,
            "{a}"
        );
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        // Fixed, so replicas of different builds agree.
        assert_eq!(machine_id(""), "consul-efd01f60ba99");
    }

    #[test]
    fn the_newest_image_is_the_latest_file_then_the_name() {
        let rig = Rig::new("images");
        rig.cloud.register_image("b", None).unwrap();
        rig.cloud.register_image("c", None).unwrap();
        let images = rig.cloud.data_dir().join("images");
        let set = |name: &str, secs: u64| {
            fs::File::options()
                .write(true)
                .open(images.join(name))
                .unwrap()
                .set_modified(UNIX_EPOCH + Duration::from_secs(secs))
                .unwrap();
        };
        set("a", 1_700_000_000);
        set("b", 1_700_000_100);
        set("c", 1_700_000_050);
        let newest = |cloud: &ProcessCloud| {
            futures_util::FutureExt::now_or_never(cloud.newest_image())
                .unwrap()
                .unwrap()
                .unwrap()
        };
        assert_eq!(newest(&rig.cloud).id, "b");
        // The same time: the name decides.
        set("c", 1_700_000_100);
        assert_eq!(newest(&rig.cloud).id, "c");
        // A registration in progress (a dot file) is no image.
        fs::write(images.join(".d.tmp"), "").unwrap();
        let ids: Vec<String> = rig
            .cloud
            .images()
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids.len(), 3, "{ids:?}");
        // An empty registry has no newest image.
        let empty = Rig::new("no-images");
        fs::remove_file(empty.cloud.data_dir().join("images").join("a")).unwrap();
        assert_eq!(
            futures_util::FutureExt::now_or_never(empty.cloud.newest_image())
                .unwrap()
                .unwrap(),
            None
        );
    }

    #[test]
    fn records_round_trip_and_are_created_once_and_replaced_whole() {
        let rig = Rig::new("records");
        let path = rig.cloud.record_path("consul-1");
        let first = record("consul-1");
        assert!(create_exclusive(&path, &first).unwrap());
        let mut second = first.clone();
        second.token = "another".into();
        assert!(!create_exclusive(&path, &second).unwrap(), "created twice");
        assert_eq!(read_record(&path, "t").unwrap(), Some(first.clone()));
        let mut retired = first.clone();
        retired.retired = true;
        write_record(&path, &retired).unwrap();
        assert_eq!(read_record(&path, "t").unwrap(), Some(retired));
        // No temporary file is left beside it, and listings skip them anyway.
        let names: Vec<String> = fs::read_dir(rig.cloud.machines_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["consul-1.json".to_owned()]);
        // A record that is not one is a decode error naming the file.
        fs::write(rig.cloud.record_path("broken"), "{").unwrap();
        let err = rig.cloud.records().unwrap_err();
        assert!(
            matches!(&err, CloudError::Decode { reason, .. } if reason.contains("broken.json")),
            "{err:?}"
        );
    }

    #[test]
    fn two_replicas_racing_one_token_launch_one_process() {
        let rig = Rig::new("race");
        let replicas = [rig.cloud.clone(), rig.replica()];
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = replicas
            .into_iter()
            .map(|cloud| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    cloud.launch_now("a", "r1-launch-0").unwrap()
                })
            })
            .collect();
        let machines: Vec<Machine> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(machines[0].id, machines[1].id);
        assert!(machines
            .iter()
            .all(|m| m.state != MachineState::Terminated && m.node.as_deref() == Some(&m.id)));
        let records = rig.cloud.records().unwrap();
        assert_eq!(records.len(), 1, "{records:?}");
        let pid = records[0].pid.unwrap();
        assert!(pid_runs(pid, &records[0].id));
        // A retry later answers the same machine, from either replica.
        assert_eq!(
            rig.replica().launch_now("a", "r1-launch-0").unwrap().id,
            machines[0].id
        );
        assert_eq!(rig.cloud.records().unwrap().len(), 1);
        // Another token is another machine, on other ports.
        let other = rig.cloud.launch_now("a", "r1-launch-1").unwrap();
        assert_ne!(other.id, machines[0].id);
        let records = rig.cloud.records().unwrap();
        let ports: HashSet<u16> = records
            .iter()
            .flat_map(|r| [r.ports.http, r.ports.server, r.ports.serf_lan])
            .collect();
        assert_eq!(ports.len(), 6, "{records:?}");
        // The second joins the first.
        let cmdline = fs::read(format!(
            "/proc/{}/cmdline",
            rig.record(&other.id).pid.unwrap()
        ));
        if let Ok(cmdline) = cmdline {
            let join = format!(
                "-retry-join=127.0.0.1:{}",
                rig.record(&machines[0].id).ports.serf_lan
            );
            assert!(
                cmdline.split(|b| *b == 0).any(|a| a == join.as_bytes()),
                "{}",
                String::from_utf8_lossy(&cmdline)
            );
        }
    }

    #[test]
    fn liveness_follows_the_process_for_its_spawner_and_for_other_replicas() {
        let rig = Rig::new("alive");
        let m = rig.cloud.launch_now("a", "t-alive").unwrap();
        assert_eq!(m.state, MachineState::Running);
        assert_eq!(
            m.address, None,
            "agents share 127.0.0.1: matched by node name"
        );
        let other = rig.replica();
        assert_eq!(other.live_machines().unwrap().len(), 1);
        let pid = rig.record(&m.id).pid.unwrap();
        // A PID whose command line names another node is not this machine (PID reuse).
        assert!(!pid_runs(pid, "consul-someone-else"));
        assert!(!pid_runs(std::process::id(), &m.id));
        // The agent dies: both replicas see the machine gone; the spawner reaps it.
        signal_group(pid, "KILL");
        eventually("the spawner seeing the agent die", || {
            rig.cloud.live_machines().unwrap().is_empty()
        });
        assert!(rig.cloud.children().is_empty(), "the child was reaped");
        assert!(!pid_runs(pid, &m.id), "no zombie left");
        assert!(other.live_machines().unwrap().is_empty());
        // A record whose launcher died before spawning is pending for a while, then gone.
        let mut orphan = record("consul-orphan");
        orphan.pid = None;
        orphan.launched_at = now_ms();
        create_exclusive(&rig.cloud.record_path("consul-orphan"), &orphan).unwrap();
        assert_eq!(
            rig.cloud.live_machines().unwrap()[0].state,
            MachineState::Pending
        );
        orphan.launched_at = now_ms() - 60_000;
        write_record(&rig.cloud.record_path("consul-orphan"), &orphan).unwrap();
        assert!(rig.cloud.live_machines().unwrap().is_empty());
    }

    #[actix_rt::test]
    async fn retiring_a_dead_agent_marks_it_retired_and_retiring_again_is_done() {
        let rig = Rig::new("retire-dead");
        let m = rig.cloud.launch_now("a", "t-dead").unwrap();
        signal_group(rig.record(&m.id).pid.unwrap(), "KILL");
        let bound = Duration::from_secs(20);
        tokio::time::timeout(bound, rig.cloud.retire(&m.id))
            .await
            .unwrap()
            .unwrap();
        assert!(rig.record(&m.id).retired);
        tokio::time::timeout(bound, rig.replica().retire(&m.id))
            .await
            .unwrap()
            .unwrap();
        // The token still answers its machine, now terminated, rather than a second one.
        let again = rig.cloud.launch_now("a", "t-dead").unwrap();
        assert_eq!(
            (again.id.as_str(), again.state),
            (m.id.as_str(), MachineState::Terminated)
        );
        let err = tokio::time::timeout(bound, rig.cloud.retire("consul-nobody"))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Rejected, "{err:?}");
        assert!(err.message.contains("consul-nobody"), "{err:?}");
    }

    #[actix_rt::test]
    async fn retiring_an_agent_whose_leave_fails_terminates_its_process_group() {
        let rig = Rig::new("retire-live");
        let m = rig.cloud.launch_now("a", "t-live").unwrap();
        let pid = rig.record(&m.id).pid.unwrap();
        // Another replica retires it: no child handle, so /proc tells when it is gone.
        let other = rig.replica();
        tokio::time::timeout(Duration::from_secs(20), other.retire(&m.id))
            .await
            .unwrap()
            .unwrap();
        assert!(rig.record(&m.id).retired);
        // The spawner never asks about a retired machine again, yet its listing reaps it.
        eventually("the spawner reaping its child", || {
            rig.cloud.live_machines().unwrap();
            rig.cloud.children().is_empty()
        });
        assert!(!pid_runs(pid, &m.id));
        assert!(rig.cloud.live_machines().unwrap().is_empty());
        // The leave was tried first, and its failure is in the machine's log.
        let log = fs::read_to_string(rig.cloud.record_path(&m.id).with_extension("log"));
        assert!(log.is_ok(), "the agent's log exists");
    }

    #[test]
    fn unknown_images_and_labels_that_are_not_names_are_refused() {
        let rig = Rig::new("refused");
        let err = rig.cloud.launch_now("zzz", "t-1").unwrap_err();
        assert!(
            matches!(&err, CloudError::Refused { reason, .. } if reason.contains("\"zzz\" is not registered")),
            "{err:?}"
        );
        assert_eq!(PortError::from(err).kind, ErrorKind::Rejected);
        for bad in ["", "../etc", ".hidden", "a b", "x/y"] {
            assert!(
                matches!(
                    rig.cloud.register_image(bad, None),
                    Err(CloudError::Refused { .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(rig.cloud.records().unwrap().is_empty(), "nothing launched");
        // A binary that cannot start leaves no record: a retry may launch.
        rig.cloud
            .register_image("gone", Some(Path::new("/nonexistent/consul")))
            .unwrap();
        let err = rig.cloud.launch_now("gone", "t-2").unwrap_err();
        assert!(
            matches!(&err, CloudError::Local { reason, .. } if reason.contains("/nonexistent/consul")),
            "{err:?}"
        );
        assert!(PortError::from(err).is_retryable());
        assert!(rig.cloud.records().unwrap().is_empty());
    }

    #[test]
    fn bootstrap_starts_n_servers_expecting_each_other_once() {
        let rig = Rig::new("bootstrap");
        assert!(matches!(
            rig.cloud.bootstrap(0, "a"),
            Err(CloudError::Refused { .. })
        ));
        let machines = rig.cloud.bootstrap(3, "a").unwrap();
        assert_eq!(machines.len(), 3);
        assert!(machines
            .iter()
            .all(|m| m.state == MachineState::Running && m.image == "a"));
        let records = rig.cloud.records().unwrap();
        assert_eq!(records.len(), 3);
        let pid = records[0].pid.unwrap();
        let proc_cmdline = format!("/proc/{pid}/cmdline");
        // Read until it has content: CI once read it empty under load (a process being set up
        // or gone reads as empty); a process that stays so is reported, not skipped.
        let mut cmdline = fs::read(&proc_cmdline);
        let deadline = Instant::now() + Duration::from_secs(2);
        while cmdline.as_ref().is_ok_and(|c| c.is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            cmdline = fs::read(&proc_cmdline);
        }
        if let Ok(cmdline) = cmdline {
            assert!(
                !cmdline.is_empty(),
                "process {pid} has an empty command line (alive: {})",
                rig.cloud.is_alive(&records[0])
            );
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            assert!(args.iter().any(|a| a == "-bootstrap-expect=3"), "{args:?}");
            let joins = args
                .iter()
                .filter(|a| a.starts_with("-retry-join="))
                .count();
            assert_eq!(joins, 2, "each server joins the other two: {args:?}");
        }
        // A second bootstrap over running servers would make a second cluster: refused.
        let err = rig.cloud.bootstrap(3, "a").unwrap_err();
        assert!(
            matches!(&err, CloudError::Refused { reason, .. } if reason.contains("still run")),
            "{err:?}"
        );
        // The client agent (the default binary: here the stand-in too) joins them, and asking
        // again answers the running one.
        let cloud = ProcessCloud::new(ProcessOptions {
            consul_bin: rig.dir.join("agent.sh"),
            ..rig.cloud.inner.options.clone()
        })
        .unwrap();
        let port = cloud.start_client(0).unwrap();
        assert_eq!(cloud.start_client(0).unwrap(), port);
        assert_eq!(rig.replica().start_client(0).unwrap(), port);
        assert_eq!(cloud.stop_all().unwrap(), 4);
        assert!(rig.cloud.live_machines().unwrap().is_empty());
    }
}
