//! The data directory's files: the image registry and one record per launched agent, each
//! written atomically and, for a launch, created exclusively (the step's claim); and how a
//! record reads as a `Machine`.

use super::*;

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

/// An image label: a file name and a node-meta value, so letters, digits, `-`, `_` and `.`.
pub(super) fn check_label(label: &str, request: &str) -> Result<(), CloudError> {
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

pub(super) fn read_record(path: &Path, request: &str) -> Result<Option<Record>, CloudError> {
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

pub(super) fn write_record(path: &Path, record: &Record) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    write_atomic(path, &bytes)
}

/// A temporary file beside `path`, named so listings skip it.
pub(super) fn temp_beside(path: &Path) -> PathBuf {
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

impl ProcessCloud {
    /// A record's machine state now (retired, never started, starting, running, exited).
    pub fn state_of(&self, record: &Record) -> MachineState {
        self.reap();
        self.state(record, now_ms())
    }

    pub(super) fn machines_dir(&self) -> PathBuf {
        self.data_dir().join("machines")
    }

    pub(super) fn record_path(&self, id: &str) -> PathBuf {
        self.machines_dir().join(format!("{id}.json"))
    }

    pub(super) fn client_path(&self) -> PathBuf {
        self.data_dir().join("client.json")
    }

    /// The client agent's record (its PID and ports), once `start_client` started it.
    pub fn client_record(&self) -> Result<Option<Record>, CloudError> {
        read_record(&self.client_path(), "read the client agent's record")
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
    pub(super) fn image_binary(&self, label: &str, request: &str) -> Result<PathBuf, CloudError> {
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

    /// Keeps how a child agent exited where every replica can read it: only its parent can
    /// reap it and learn its status.
    pub(super) fn note_exit(&self, id: &str, status: std::process::ExitStatus) {
        let path = self.record_path(id).with_extension("exit");
        if let Err(e) = write_atomic(&path, status.to_string().as_bytes()) {
            tracing::debug!(machine = %id, error = %e, "Could not keep the agent's exit status.");
        }
    }

    /// The record's machine with, if its agent died (rather than being retired), why: read
    /// only when one machine is asked about, not on every listing.
    pub(super) fn described(&self, record: &Record) -> Machine {
        let mut m = self.machine(record);
        if m.state == MachineState::Terminated && !record.retired {
            m.reason = Some(self.reason(record));
        }
        m
    }

    /// Why a record's agent is not running: how it exited (if its parent saw) and the tail of
    /// its log. Read only when asked about one machine, not on every listing.
    pub(super) fn reason(&self, record: &Record) -> String {
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

    pub(super) fn state(&self, record: &Record, now: u64) -> MachineState {
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

    pub(super) fn machine(&self, record: &Record) -> Machine {
        Machine {
            id: record.id.clone(),
            image: record.image.clone(),
            launched_at: record.launched_at,
            state: self.state(record, now_ms()),
            // Every agent shares 127.0.0.1: only the node name tells their peers apart.
            address: None,
            zone: None,
            node: Some(record.id.clone()),
            token: Some(record.token.clone()),
            reason: None,
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

    pub(super) fn agent_data_dir(&self, id: &str) -> PathBuf {
        self.machines_dir().join(id).join("data")
    }

    /// `machines/<id>.json` -> `machines/<id>/data`; `client.json` -> `client/data`.
    pub(super) fn agent_data_dir_of(&self, record_path: &Path) -> PathBuf {
        record_path.with_extension("").join("data")
    }
}
