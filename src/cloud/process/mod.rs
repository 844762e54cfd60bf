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
//!
//! The files: `registry` (the data directory's records and images), `agent` (launch, liveness,
//! retirement), `args` (an agent's command line and configuration files), `ports`,
//! `bootstrap` (the first servers and the client agent); this one holds the type, its
//! options and the `CloudPort` it implements, and the imports the others share.

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

mod agent;
mod args;
mod bootstrap;
mod ports;
mod registry;
#[cfg(test)]
mod tests;

pub use agent::pid_runs;
pub use args::{client_args, server_args};
pub use bootstrap::ready;
pub use ports::{allocate_ports, AgentPorts};
pub use registry::{create_exclusive, machine_id, write_atomic, Record};
use {agent::*, args::*, registry::*};

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
