//! What the demo reads while the rollout runs, over HTTP as any client of the simulator would:
//! the cluster's status through the same model `rehydrator status` and `/v1/status` use
//! (`status::gather`: servers, autopilot, the rollout record, the lock holders), and from the
//! simulator's `/sim` control API what only the simulator knows: retired machines, launch
//! tokens, the invariants and the event log.

use std::time::Duration;

use base64::Engine;
use rehydrator_actors::plan::Rollout;
use serde::Deserialize;
use serde_json::Value;

use super::timeline::Event;
use crate::cloud::{ProcessCloud, SimCloud};
use crate::consul::{Client, ConsulConfig};
use crate::status::{self, Scope, ServerStatus, StatusError, StatusReport};

/// Why a read of the simulator failed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("{path}: {reason}")]
    Http { path: String, reason: String },
    #[error("{path}: answered {status}")]
    Status { path: String, status: u16 },
    #[error("{path}: unexpected answer: {reason}")]
    Decode { path: String, reason: String },
    #[error("the cluster's status: {0}")]
    Report(#[from] StatusError),
    #[error("the Consul client or the simulated cloud for {address}: {reason}")]
    Setup { address: String, reason: String },
}

/// One server as `/sim/servers` shows it (the fields the demo uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServerRow {
    pub name: String,
    pub image: String,
    pub machine: String,
    pub in_raft: bool,
    pub voter: bool,
    pub leader: bool,
    pub token: Option<String>,
}

impl ServerRow {
    /// A live server as the status model shows it.
    pub fn from_status(s: &ServerStatus) -> Self {
        Self {
            name: s.node.clone(),
            image: s.image.clone().unwrap_or_else(|| "?".into()),
            // The cloud port's words for a machine, in the simulator's.
            machine: match s.machine_state.as_deref() {
                Some("pending") => "booting",
                Some("stopping") => "stopped",
                _ => "running",
            }
            .into(),
            in_raft: s.in_raft,
            voter: s.voter,
            leader: s.leader,
            token: None,
        }
    }

    pub fn terminated(&self) -> bool {
        self.machine == "terminated"
    }

    /// Where the server is, in a word or two.
    pub fn state(&self) -> &'static str {
        match self.machine.as_str() {
            "booting" => "booting",
            "terminated" => "retired",
            "stopped" => "left",
            "killed" => "killed",
            _ if self.voter => "voter",
            _ if self.in_raft => "non-voter (stabilizing)",
            _ => "starting",
        }
    }
}

/// The `step` lock while a session holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub session: String,
    pub replica: String,
    pub action: String,
}

/// One look at everything the progress display shows.
#[derive(Debug, Clone)]
pub struct Observation {
    /// The live servers (from the status model), then the retired ones.
    pub servers: Vec<ServerRow>,
    pub leader: Option<String>,
    pub failure_tolerance: Option<u64>,
    pub rollout: Option<Rollout>,
    pub lock: Option<LockHolder>,
    /// Launches and retirements the cloud has done so far, by the simulator's record.
    pub cloud_actions: usize,
}

impl Observation {
    /// The display's view of a status report, completed with the simulator's machines (the
    /// report lists live ones only, and no launch tokens).
    pub fn from_report(report: &StatusReport, machines: &[ServerRow]) -> Self {
        let mut servers: Vec<ServerRow> =
            report.servers.iter().map(ServerRow::from_status).collect();
        servers.extend(machines.iter().filter(|m| m.terminated()).cloned());
        let lock = report
            .locks
            .iter()
            .find(|l| l.name == "step")
            .and_then(|l| {
                Some(LockHolder {
                    session: l.session.clone()?,
                    replica: l.replica.clone().unwrap_or_else(|| "?".into()),
                    action: l.action.clone().unwrap_or_else(|| "?".into()),
                })
            });
        Self {
            servers,
            leader: report.leader.clone(),
            failure_tolerance: Some(u64::from(report.failure_tolerance)),
            rollout: report.rollout.clone(),
            lock,
            cloud_actions: machines.iter().filter(|s| s.token.is_some()).count()
                + machines.iter().filter(|s| s.terminated()).count(),
        }
    }
}

/// Reads the simulator (or a real cluster's client agent) at `base` for cluster `cluster`'s
/// keys.
pub struct Probe {
    http: awc::Client,
    base: String,
    cluster: String,
    consul: Client,
    cloud: Box<dyn rehydrator_actors::ports::CloudPort>,
}

impl Probe {
    /// Must run inside an actix System (the clients are awc's).
    pub fn new(base: String, cluster: &str) -> Result<Self, ObserveError> {
        let cloud = SimCloud::new(&base).map_err(|e| ObserveError::Setup {
            address: base.clone(),
            reason: e.to_string(),
        })?;
        Self::with_cloud(base, cluster, Box::new(cloud))
    }

    /// Reads real Consul's client agent at `base`, with the process cloud its servers run in.
    pub fn real(base: String, cluster: &str, cloud: ProcessCloud) -> Result<Self, ObserveError> {
        Self::with_cloud(base, cluster, Box::new(cloud))
    }

    fn with_cloud(
        base: String,
        cluster: &str,
        cloud: Box<dyn rehydrator_actors::ports::CloudPort>,
    ) -> Result<Self, ObserveError> {
        let consul = ConsulConfig::with_address(&base)
            .and_then(Client::new)
            .map_err(|e| ObserveError::Setup {
                address: base.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            http: awc::Client::builder()
                .timeout(Duration::from_secs(5))
                .finish(),
            base,
            cluster: cluster.to_owned(),
            consul,
            cloud,
        })
    }

    /// GET `path`: Ok(None) on 404, the body otherwise.
    async fn get_bytes(&self, path: &str) -> Result<Option<Vec<u8>>, ObserveError> {
        let mut resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| ObserveError::Http {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        if resp.status() == 404 {
            return Ok(None);
        }
        let body = resp
            .body()
            .limit(16 << 20)
            .await
            .map_err(|e| ObserveError::Http {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        if !resp.status().is_success() {
            return Err(ObserveError::Status {
                path: path.to_owned(),
                status: resp.status().as_u16(),
            });
        }
        Ok(Some(body.to_vec()))
    }

    /// GET `path` as JSON of type `T`.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ObserveError> {
        let bytes = self
            .get_bytes(path)
            .await?
            .ok_or_else(|| ObserveError::Status {
                path: path.to_owned(),
                status: 404,
            })?;
        serde_json::from_slice(&bytes).map_err(|e| ObserveError::Decode {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Sends `method path` with an optional JSON body; fails unless 2xx.
    pub async fn send(
        &self,
        method: awc::http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(), ObserveError> {
        let req = self.http.request(method, format!("{}{path}", self.base));
        let sent = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        };
        let resp = sent.map_err(|e| ObserveError::Http {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if !resp.status().is_success() {
            return Err(ObserveError::Status {
                path: path.to_owned(),
                status: resp.status().as_u16(),
            });
        }
        Ok(())
    }

    pub async fn servers(&self) -> Result<Vec<ServerRow>, ObserveError> {
        self.get("/sim/servers").await
    }

    /// `/sim/servers` as raw JSON, for the verdict.
    pub async fn servers_json(&self) -> Result<Vec<Value>, ObserveError> {
        self.get("/sim/servers").await
    }

    pub async fn invariants(&self) -> Result<Value, ObserveError> {
        self.get("/sim/invariants").await
    }

    pub async fn timeline(&self) -> Result<Vec<Event>, ObserveError> {
        self.get("/sim/timeline").await
    }

    /// A KV entry's decoded value and its session; None while the key does not exist.
    async fn kv(&self, key: &str) -> Result<Option<(Vec<u8>, Option<String>)>, ObserveError> {
        let path = format!("/v1/kv/{key}");
        let Some(bytes) = self.get_bytes(&path).await? else {
            return Ok(None);
        };
        let decode = |reason: String| ObserveError::Decode {
            path: path.clone(),
            reason,
        };
        let list: Value = serde_json::from_slice(&bytes).map_err(|e| decode(e.to_string()))?;
        let entry = &list[0];
        let value = match entry["Value"].as_str() {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| decode(e.to_string()))?,
            None => Vec::new(),
        };
        Ok(Some((value, entry["Session"].as_str().map(str::to_owned))))
    }

    /// The `step` lock's holder while a session holds it.
    pub async fn step_lock(&self) -> Result<Option<LockHolder>, ObserveError> {
        let key = format!("rehydrator/{}/locks/step", self.cluster);
        let Some((value, Some(session))) = self.kv(&key).await? else {
            return Ok(None);
        };
        let holder = rehydrator_actors::receipt::LockValue::decode(&value);
        Ok(Some(LockHolder {
            session,
            replica: holder.as_ref().map_or("?", |h| &h.replica).to_owned(),
            action: holder.as_ref().map_or("?", |h| &h.action).to_owned(),
        }))
    }

    /// Replica names holding a live session (a session's name ends with its replica's).
    pub async fn session_holders(&self) -> Result<Vec<String>, ObserveError> {
        let list: Vec<Value> = self.get("/v1/session/list").await?;
        Ok(list
            .iter()
            .filter_map(|s| s["Name"].as_str())
            .filter_map(|n| n.rsplit(' ').next())
            .map(str::to_owned)
            .collect())
    }

    /// Blocking queries parked in the simulator now.
    pub async fn parked(&self) -> Result<u64, ObserveError> {
        let stats: Value = self.get("/sim/stats").await?;
        Ok(stats["parked"].as_u64().unwrap_or(0))
    }

    /// Everything the progress display shows, read now (the machines from `/sim/servers`).
    pub async fn observe(&self) -> Result<Observation, ObserveError> {
        let machines = self.servers().await?;
        self.observe_with(&machines).await
    }

    /// Everything the progress display shows, read now, with `machines` as the cloud has them.
    pub async fn observe_with(&self, machines: &[ServerRow]) -> Result<Observation, ObserveError> {
        let mut scope = Scope::new(self.cluster.clone());
        // The display shows no receipts.
        scope.receipts = 0;
        let report = status::gather(&self.consul, Some(self.cloud.as_ref()), &scope).await?;
        Ok(Observation::from_report(&report, machines))
    }
}
