//! The simulator's cloud as the actors' `CloudPort`: images are `GET /sim/images`, machines are
//! the simulated servers of `GET /sim/servers`, a launch is `POST /sim/servers` with the step's
//! idempotency token, and retiring is `POST /sim/servers/{name}/terminate` (the agent leaves
//! gracefully, then the machine goes). The demo and the rollout tests use it; `run` builds it
//! from `[cloud] type = "sim"`.
//!
//! Futures are `'static` and not `Send`, like every port's: the awc client is an `Rc` and each
//! call clones what it needs.

use std::time::Duration;

use awc::http::{Method, Uri};
use rehydrator_actors::ports::{
    clip, CloudPort, Image, LifecycleWait, Machine, MachineState, PortFuture, Transition,
    MAX_REASON,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::Instrument as _;

use super::asg::HOOK_PREFIX;
use super::CloudError;

/// How long one control API call may take; the simulator answers them at once.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest error body kept in an error (errors end up in logs and receipts).
const MAX_MESSAGE: usize = 512;

/// The simulator's `/sim` control API as a cloud.
#[derive(Clone)]
pub struct SimCloud {
    base: String,
    client: awc::Client,
    timeout: Duration,
}

impl std::fmt::Debug for SimCloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCloud")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SimCloud {
    /// A cloud over the simulator serving at `base_url` (`http://127.0.0.1:8500`; the Consul
    /// address, since the simulator serves both APIs). Must run inside an actix runtime.
    pub fn new(base_url: &str) -> Result<Self, CloudError> {
        let base = base_url.trim_end_matches('/').to_owned();
        let uri: Uri = base.parse().map_err(|e| CloudError::Config {
            reason: format!("the simulator URL {base:?} is invalid: {e}"),
        })?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(CloudError::Config {
                reason: format!("the simulator URL {base:?} must be http(s)://host[:port]"),
            });
        }
        Ok(Self {
            base,
            client: awc::Client::default(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Another bound on each call than [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The base URL calls go to.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sends one control API call and decodes a 2xx answer as `T`.
    fn call<T: DeserializeOwned + 'static>(
        &self,
        method: Method,
        path: String,
        body: Option<Value>,
    ) -> impl std::future::Future<Output = Result<T, CloudError>> + 'static {
        let (client, base, timeout) = (self.client.clone(), self.base.clone(), self.timeout);
        async move {
            let request = format!("{method} {path}");
            let req = client
                .request(method, format!("{base}{path}"))
                .timeout(timeout);
            let sent = match &body {
                Some(b) => req.send_json(b).await,
                None => req.send().await,
            };
            let mut resp = sent.map_err(|e| match e {
                awc::error::SendRequestError::Timeout => CloudError::Timeout {
                    request: request.clone(),
                    after: timeout,
                },
                e => CloudError::Unreachable {
                    base: base.clone(),
                    request: request.clone(),
                    reason: e.to_string(),
                },
            })?;
            let bytes = resp.body().await.map_err(|e| CloudError::Unreachable {
                base: base.clone(),
                request: request.clone(),
                reason: format!("reading the answer: {e}"),
            })?;
            let status = resp.status();
            if !status.is_success() {
                return Err(CloudError::Status {
                    status: status.as_u16(),
                    request,
                    message: error_message(&bytes),
                });
            }
            serde_json::from_slice(&bytes).map_err(|e| CloudError::Decode {
                request,
                reason: e.to_string(),
            })
        }
    }
}

/// The control API's `{"error": ...}`, else the body itself, cut short.
fn error_message(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => match o.get("error") {
            Some(Value::String(s)) => s.clone(),
            _ => String::from_utf8_lossy(body).into_owned(),
        },
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    let text = text.trim();
    match text.char_indices().nth(MAX_MESSAGE) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// An image as `GET /sim/images` lists it (`broken` is the simulator's secret: a real cloud
/// cannot tell, so neither does the port).
#[derive(Debug, Clone, Deserialize)]
struct ImageJson {
    id: String,
    name: String,
    created: String,
}

/// A server as `GET /sim/servers` lists it; only what a cloud would know about the machine.
#[derive(Debug, Clone, Deserialize)]
struct ServerJson {
    name: String,
    /// `ip:8300`.
    address: String,
    image: String,
    machine: String,
    #[serde(default)]
    token: Option<String>,
    launched_at: u64,
    /// Why a terminated machine was terminated.
    #[serde(default)]
    reason: Option<String>,
}

/// A simulated server as a machine; `None` for a terminated one (the port lists the living).
///
/// A stopped (left) or killed server's machine still exists and runs, only its Consul agent
/// does not: it is `Running`, and the rollout sees it has no healthy Raft peer.
fn machine(s: ServerJson, request: &str) -> Result<Option<Machine>, CloudError> {
    let state = match s.machine.as_str() {
        "booting" => MachineState::Pending,
        "running" | "stopped" | "killed" => MachineState::Running,
        "terminated" => MachineState::Terminated,
        other => {
            return Err(CloudError::Decode {
                request: request.to_owned(),
                reason: format!("server {} has an unknown machine state {other:?}", s.name),
            })
        }
    };
    let address = s
        .address
        .rsplit_once(':')
        .map_or(s.address.as_str(), |(ip, _)| ip)
        .to_owned();
    Ok(Some(Machine {
        node: Some(s.name.clone()),
        id: s.name,
        image: s.image,
        launched_at: s.launched_at,
        state,
        address: Some(address).filter(|a| !a.is_empty()),
        zone: None,
        token: s.token,
        reason: s.reason.map(|r| clip(&r, MAX_REASON)),
    }))
}

impl CloudPort for SimCloud {
    fn newest_image(&self) -> PortFuture<Option<Image>> {
        let call = self.call::<Vec<ImageJson>>(Method::GET, "/sim/images".into(), None);
        Box::pin(
            async move {
                let images = call.await?;
                let images = images
                    .into_iter()
                    .map(|i| Image {
                        id: i.id,
                        name: i.name,
                        created: i.created,
                    })
                    .collect();
                Ok(super::newest(images, "GET /sim/images")?)
            }
            .instrument(tracing::debug_span!("sim_cloud", op = "newest_image")),
        )
    }

    fn machines(&self) -> PortFuture<Vec<Machine>> {
        let call = self.call::<Vec<ServerJson>>(Method::GET, "/sim/servers".into(), None);
        Box::pin(
            async move {
                let mut out = Vec::new();
                for s in call.await? {
                    if let Some(m) = machine(s, "GET /sim/servers")? {
                        if m.state != MachineState::Terminated {
                            out.push(m);
                        }
                    }
                }
                Ok(out)
            }
            .instrument(tracing::debug_span!("sim_cloud", op = "machines")),
        )
    }

    fn launch(&self, image: &str, token: &str) -> PortFuture<Machine> {
        let body = json!({"image": image, "token": token});
        let call = self.call::<ServerJson>(Method::POST, "/sim/servers".into(), Some(body));
        let span = tracing::debug_span!("sim_cloud", op = "launch", %image, %token);
        Box::pin(
            async move {
                let request = "POST /sim/servers";
                let m = machine(call.await?, request)?.ok_or_else(|| CloudError::Decode {
                    request: request.into(),
                    reason: "no machine in the answer".into(),
                })?;
                tracing::debug!(
                    machine = %m.id,
                    state = ?m.state,
                    "Simulated cloud launched a machine.",
                );
                Ok(m)
            }
            .instrument(span),
        )
    }

    fn machine(&self, machine_id: &str) -> PortFuture<Option<Machine>> {
        let path = format!("/sim/servers/{}", crate::consul::segment(machine_id));
        let call = self.call::<ServerJson>(Method::GET, path.clone(), None);
        let span = tracing::debug_span!("sim_cloud", op = "machine", machine = %machine_id);
        Box::pin(
            async move {
                match call.await {
                    Ok(s) => Ok(machine(s, &format!("GET {path}"))?),
                    Err(CloudError::Status { status: 404, .. }) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
            .instrument(span),
        )
    }

    fn retire(&self, machine_id: &str) -> PortFuture<()> {
        let path = format!(
            "/sim/servers/{}/terminate",
            crate::consul::segment(machine_id)
        );
        let call = self.call::<Value>(Method::POST, path, None);
        let span = tracing::debug_span!("sim_cloud", op = "retire", machine = %machine_id);
        Box::pin(
            async move {
                call.await?;
                tracing::debug!("Simulated cloud terminated a machine.");
                Ok(())
            }
            .instrument(span),
        )
    }

    fn lifecycle_waits(&self) -> PortFuture<Vec<LifecycleWait>> {
        let call = self.call::<GroupJson>(Method::GET, "/sim/group".into(), None);
        Box::pin(
            async move {
                match call.await {
                    Ok(g) => Ok(waits(&g)),
                    // No group: nothing waits.
                    Err(CloudError::Status { status: 404, .. }) => Ok(Vec::new()),
                    Err(e) => Err(e.into()),
                }
            }
            .instrument(tracing::debug_span!("sim_cloud", op = "lifecycle_waits")),
        )
    }

    fn complete_lifecycle(&self, wait: &LifecycleWait) -> PortFuture<()> {
        let body = json!({"instance": wait.machine, "hook": wait.hook, "result": "CONTINUE"});
        let call = self.call::<Value>(Method::POST, "/sim/group/lifecycle".into(), Some(body));
        let span =
            tracing::debug_span!("sim_cloud", op = "complete_lifecycle", machine = %wait.machine);
        Box::pin(async move { Ok(call.await.map(drop)?) }.instrument(span))
    }

    fn extend_lifecycle(&self, wait: &LifecycleWait) -> PortFuture<()> {
        let body = json!({"instance": wait.machine, "hook": wait.hook});
        let call = self.call::<Value>(Method::POST, "/sim/group/heartbeat".into(), Some(body));
        let span =
            tracing::debug_span!("sim_cloud", op = "extend_lifecycle", machine = %wait.machine);
        Box::pin(async move { Ok(call.await.map(drop)?) }.instrument(span))
    }
}

/// The simulated group as `GET /sim/group` shows it; only what the guard reads.
#[derive(Debug, Clone, Deserialize)]
struct GroupJson {
    hooks: Vec<HookJson>,
    members: Vec<MemberJson>,
}

#[derive(Debug, Clone, Deserialize)]
struct HookJson {
    name: String,
    heartbeat_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
struct MemberJson {
    name: String,
    lifecycle: String,
    pending_hooks: Vec<String>,
}

/// The members held by a hook of the guard's (named `rehydrator…`, as on AWS).
fn waits(g: &GroupJson) -> Vec<LifecycleWait> {
    let mut out = Vec::new();
    for m in &g.members {
        let transition = match m.lifecycle.as_str() {
            "Pending:Wait" => Transition::Launching,
            "Terminating:Wait" => Transition::Terminating,
            _ => continue,
        };
        for hook in m
            .pending_hooks
            .iter()
            .filter(|h| h.starts_with(HOOK_PREFIX))
        {
            let timeout = g
                .hooks
                .iter()
                .find(|h| &h.name == hook)
                .map_or(Duration::from_secs(3600), |h| {
                    Duration::from_millis(h.heartbeat_timeout_ms)
                });
            out.push(LifecycleWait {
                machine: m.name.clone(),
                transition,
                hook: hook.clone(),
                heartbeat_timeout: timeout,
            });
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn server(machine_state: &str) -> ServerJson {
        ServerJson {
            name: "consul-server-4".into(),
            address: "127.0.1.4:8300".into(),
            image: "image-b".into(),
            machine: machine_state.into(),
            token: Some("t-1".into()),
            launched_at: 1_714_564_800_000,
            reason: None,
        }
    }

    #[test]
    fn a_server_is_a_machine() {
        let m = machine(server("booting"), "GET").unwrap().unwrap();
        assert_eq!(
            m,
            Machine {
                id: "consul-server-4".into(),
                image: "image-b".into(),
                launched_at: 1_714_564_800_000,
                state: MachineState::Pending,
                address: Some("127.0.1.4".into()),
                zone: None,
                node: Some("consul-server-4".into()),
                token: Some("t-1".into()),
                reason: None,
            }
        );
        for (sim, port) in [
            ("running", MachineState::Running),
            ("stopped", MachineState::Running),
            ("killed", MachineState::Running),
            ("terminated", MachineState::Terminated),
        ] {
            assert_eq!(machine(server(sim), "GET").unwrap().unwrap().state, port);
        }
        assert!(matches!(
            machine(server("melted"), "GET"),
            Err(CloudError::Decode { .. })
        ));
    }

    #[test]
    fn error_bodies_are_the_control_apis_message() {
        assert_eq!(
            error_message(br#"{"error": "unknown image \"x\""}"#),
            "unknown image \"x\""
        );
        assert_eq!(error_message(b" plain text\n"), "plain text");
        let long = "x".repeat(2000);
        assert_eq!(
            error_message(long.as_bytes()).chars().count(),
            MAX_MESSAGE + 1
        );
    }

    #[test]
    fn the_base_url_must_be_http() {
        assert!(SimCloud::new("http://127.0.0.1:8500/").is_ok());
        assert_eq!(
            SimCloud::new("http://127.0.0.1:8500/").unwrap().base_url(),
            "http://127.0.0.1:8500"
        );
        assert!(matches!(
            SimCloud::new("127.0.0.1:8500"),
            Err(CloudError::Config { .. })
        ));
        assert!(matches!(
            SimCloud::new("not a url"),
            Err(CloudError::Config { .. })
        ));
    }
}
