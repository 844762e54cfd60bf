//! The agents as processes: launch (record, then spawn), liveness through the PID and its
//! command line, reaping, and retirement (`consul leave`, then signals).

use super::*;

/// Starts `binary args` in its own process group, output appended to `log`.
pub(super) fn spawn_agent(
    binary: &Path,
    args: &[String],
    log: &Path,
    data_dir: &Path,
) -> io::Result<Child> {
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
pub(super) fn log_tail(path: &Path, lines: usize) -> Option<String> {
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

pub(super) fn open_log(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new().create(true).append(true).open(path)
}

/// Sends `signal` to the process group `pid` leads (every agent leads its own), via kill(1):
/// `unsafe` is not allowed here, so no libc.
pub(super) fn signal_group(pid: u32, signal: &str) {
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

/// How long an empty command line is read again before the process counts as not ours.
const CMDLINE_SETTLE: Duration = Duration::from_secs(1);
/// `PF_KTHREAD` in /proc/<pid>/stat's flags: a kernel thread, whose command line stays empty.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Whether `pid` is a running (not zombie) process whose command line names node `node`:
/// a PID the OS reused for something else does not count.
pub fn pid_runs(pid: u32, node: &str) -> bool {
    let flag = format!("-node={node}");
    let proc = PathBuf::from(format!("/proc/{pid}"));
    if Path::new("/proc/self/stat").exists() {
        // A process another replica has just spawned reads with an empty command line until
        // the kernel has set up its arguments, which is after the spawner's `spawn` returned
        // (the vfork parent wakes when the child drops the old memory, before the new one has
        // its arguments). Seen under load in CI: a second replica took such an agent for dead
        // and started another. So an empty one is read again, for a bounded while; a kernel
        // thread (always empty) is told apart by its flags and not waited for.
        let deadline = std::time::Instant::now() + CMDLINE_SETTLE;
        loop {
            let Ok(stat) = fs::read_to_string(proc.join("stat")) else {
                return false;
            };
            // The fields follow the command name, which is in parentheses and may hold any byte:
            // state, ppid, pgrp, session, tty, tpgid, flags.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            if matches!(fields.first(), None | Some(&("Z" | "X" | "x"))) {
                return false;
            }
            let kernel_thread = fields
                .get(6)
                .and_then(|f| f.parse::<u64>().ok())
                .is_some_and(|flags| flags & PF_KTHREAD != 0);
            let Ok(cmdline) = fs::read(proc.join("cmdline")) else {
                return false;
            };
            if !cmdline.is_empty() || kernel_thread || std::time::Instant::now() >= deadline {
                return cmdline.split(|b| *b == 0).any(|arg| arg == flag.as_bytes());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
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

impl ProcessCloud {
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

    /// Reaps every child of this instance that exited, whoever stopped it: one another
    /// replica retired is no longer looked at through `is_alive`, and must not stay a zombie.
    pub(super) fn reap(&self) {
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

    pub(super) fn answer_existing(
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

    /// Spawns the agent of a freshly created record and records its PID. If either fails the
    /// record goes, so a retry with the same token can launch again.
    pub(super) fn spawn_recorded(
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

    pub(super) async fn stop_process(
        &self,
        record: &Record,
        request: &str,
    ) -> Result<(), CloudError> {
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
    pub(super) async fn leave(&self, record: &Record) -> Result<(), CloudError> {
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
    pub(super) async fn wait_exit(&self, record: &Record, limit: Duration) -> bool {
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
