//! The demo's orchestrator replicas: real `rehydrator run` processes of this same binary, so the
//! chaos kill is a real SIGKILL and the takeover is a real session expiry, as in production.
//!
//! Each writes its log to a file in the demo's scratch directory. `Replicas` kills and reaps
//! every process it started when it is dropped — at the demo's end, on an error, on a panic's
//! unwind, and when Ctrl-C drops the demo's future. A demo killed outright runs no drop, so
//! each replica also stops when its stdin, a pipe whose write end only the demo holds, closes
//! (`run --stop-on-stdin-eof`). Either way no replica outlives the demo.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// Why a replica could not be started.
#[derive(Debug, thiserror::Error)]
#[error("starting replica {name} ({exe}): {source}")]
pub struct SpawnError {
    pub name: String,
    pub exe: String,
    #[source]
    pub source: std::io::Error,
}

/// One `rehydrator run` process.
pub struct Replica {
    pub name: String,
    pub log: PathBuf,
    /// Its status endpoint's port on 127.0.0.1: the dashboard is `http://127.0.0.1:PORT/`.
    pub port: u16,
    child: Child,
    /// Killed on purpose (chaos): its exit is expected.
    pub killed: bool,
}

impl Replica {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The replica's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log, for an error message.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, then reap it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The replicas the demo started.
pub struct Replicas {
    pub list: Vec<Replica>,
}

impl Replicas {
    /// Starts `exe run --config config --replica NAME` for each (name, status port), logging
    /// to `dir/NAME.log`, its status endpoint (the dashboard) on `127.0.0.1:PORT`.
    pub fn spawn(
        exe: &Path,
        config: &Path,
        dir: &Path,
        names: &[(String, u16)],
    ) -> Result<Self, SpawnError> {
        let mut started = Self { list: Vec::new() };
        for (name, port) in names {
            let log = dir.join(format!("{name}.log"));
            let err = |source| SpawnError {
                name: name.clone(),
                exe: exe.display().to_string(),
                source,
            };
            let file = std::fs::File::create(&log).map_err(err)?;
            let mut cmd = Command::new(exe);
            cmd.arg("run")
                .arg("--config")
                .arg(config)
                .args(["--replica", name])
                // The demo keeps the pipe's write end; when the demo dies, even by SIGKILL, the
                // kernel closes it and the replica stops.
                .arg("--stop-on-stdin-eof")
                // Debug for the actors: the demo waits for their watches' baselines in the log.
                .env("RUST_LOG", "info,rehydrator_actors=debug")
                .env("NO_COLOR", "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(file);
            // The user's overrides are for their own replicas: the demo's configuration file
            // says everything these need, and REHYDRATOR_* would override it.
            for (key, _) in std::env::vars_os() {
                let k = key.to_string_lossy();
                if k.starts_with("REHYDRATOR_") || k.starts_with("CONSUL_HTTP_") {
                    cmd.env_remove(&key);
                }
            }
            // Each its own known port, so the demo can tell the user where the dashboards are.
            cmd.env("REHYDRATOR_STATUS__LISTEN", format!("127.0.0.1:{port}"));
            // If this fails, the ones already started are killed as `started` drops.
            let child = cmd.spawn().map_err(err)?;
            started.list.push(Replica {
                name: name.clone(),
                port: *port,
                log,
                child,
                killed: false,
            });
        }
        Ok(started)
    }

    pub fn get(&self, name: &str) -> Option<&Replica> {
        self.list.iter().find(|r| r.name == name)
    }

    /// SIGKILLs replica `name` (chaos), as a container's sudden death would. False if unknown.
    pub fn kill(&mut self, name: &str) -> bool {
        match self.list.iter_mut().find(|r| r.name == name) {
            Some(r) => {
                r.killed = true;
                r.kill();
                true
            }
            None => false,
        }
    }

    /// A replica that exited without being killed on purpose, with its status.
    pub fn died(&mut self) -> Option<(&Replica, ExitStatus)> {
        let i = self
            .list
            .iter_mut()
            .position(|r| !r.killed && r.exited().is_some())?;
        let status = self.list[i].exited()?;
        Some((&self.list[i], status))
    }

    /// Kills and reaps every replica still running.
    pub fn stop_all(&mut self) {
        for r in &mut self.list {
            r.kill();
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        self.stop_all();
    }
}
