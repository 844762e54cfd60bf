//! Reporter: the status endpoint's agent on the actor system's thread.
//!
//! actix-web serves on worker threads of its own, but the Consul client (awc), the cloud and
//! the actors' addresses live on the thread `run` started the tree on, and are not `Send`.
//! So the endpoint's handlers only send this actor a query (an `Addr` crosses threads) and it
//! does the work here: the status report (`status::gather`, the one status model), the
//! readiness check, and the metrics with their scrape-time series refreshed.
//!
//! A report costs several Consul reads and, on AWS, a describe call that counts against the
//! account's API rate limit. Every open dashboard polls once a second and Prometheus scrapes
//! too, so one report answers every request for a second, and requests that arrive while one
//! is being taken wait for it rather than start another.

use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::future::{FutureExt, LocalBoxFuture, Shared};
use rehydrator_actors::lock_manager::{GetSession, GetSessionError, LockManager};
use rehydrator_actors::metrics::Metrics;
use rehydrator_actors::ports::CloudPort;
use serde::Serialize;
use tracing::debug;

use crate::consul::{Client, QueryOptions};
use crate::status::{self, Scope, StatusError, StatusReport};

/// How long a readiness check waits for Consul.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a scrape waits for the status it refreshes the servers' series from; past it the
/// scrape answers with the series as they were.
const SCRAPE_STATUS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one status report answers every request: the dashboard's poll period.
const STATUS_MAX_AGE: Duration = Duration::from_secs(1);

/// A status report being taken or taken, shared by every request it answers.
type SharedReport = Shared<LocalBoxFuture<'static, Result<StatusReport, StatusError>>>;

/// Query: answered at once, which shows the actor system's thread is turning.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

/// Query: the cluster's status, as `rehydrator status --json` prints it.
#[derive(Message)]
#[rtype(result = "Result<StatusReport, StatusError>")]
pub struct GetStatus;

/// Query: whether this replica holds a live Consul session and Consul answers.
#[derive(Message)]
#[rtype(result = "Readiness")]
pub struct GetReadiness;

/// Query: the metrics in the OpenMetrics text format.
#[derive(Message)]
#[rtype(result = "Result<String, std::fmt::Error>")]
pub struct GetMetrics;

/// The answer to `GetReadiness`, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// The session this replica holds its locks with, when it has one.
    pub session: Option<String>,
    /// Why it is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Readiness {
    fn not_ready(session: Option<String>, reason: String) -> Self {
        Self {
            ready: false,
            session,
            reason: Some(reason),
        }
    }
}

pub struct Reporter {
    client: Client,
    cloud: Option<Rc<dyn CloudPort>>,
    scope: Scope,
    lock_manager: Addr<LockManager>,
    metrics: Metrics,
    /// The latest report and when it was started.
    latest: Option<(Instant, SharedReport)>,
}

impl Reporter {
    /// `client` and `cloud` are the ones the tree runs with; `metrics` is `Tree::metrics`.
    pub fn new(
        client: Client,
        cloud: Option<Rc<dyn CloudPort>>,
        scope: Scope,
        lock_manager: Addr<LockManager>,
        metrics: Metrics,
    ) -> Self {
        Self {
            client,
            cloud,
            scope,
            lock_manager,
            metrics,
            latest: None,
        }
    }

    /// The latest report if it is still being taken or younger than `STATUS_MAX_AGE`, else a
    /// new one. A failed report counts once in the errors metric, however many it answers.
    fn gather(&mut self) -> SharedReport {
        if let Some((started, report)) = &self.latest {
            if report.peek().is_none() || started.elapsed() < STATUS_MAX_AGE {
                return report.clone();
            }
        }
        let (client, cloud, scope) = (self.client.clone(), self.cloud.clone(), self.scope.clone());
        let metrics = self.metrics.clone();
        let report = async move {
            let report = status::gather(&client, cloud.as_deref(), &scope).await;
            if let Err(e) = &report {
                metrics.error("status", e.kind());
            }
            report
        }
        .boxed_local()
        .shared();
        self.latest = Some((Instant::now(), report.clone()));
        report
    }
}

impl Actor for Reporter {
    type Context = Context<Self>;
}

impl Handler<Ping> for Reporter {
    type Result = ();

    fn handle(&mut self, _msg: Ping, _ctx: &mut Context<Self>) {}
}

impl Handler<GetStatus> for Reporter {
    type Result = ResponseFuture<Result<StatusReport, StatusError>>;

    fn handle(&mut self, _msg: GetStatus, _ctx: &mut Context<Self>) -> Self::Result {
        Box::pin(self.gather())
    }
}

impl Handler<GetReadiness> for Reporter {
    type Result = ResponseFuture<Readiness>;

    fn handle(&mut self, _msg: GetReadiness, _ctx: &mut Context<Self>) -> Self::Result {
        let (lock_manager, client) = (self.lock_manager.clone(), self.client.clone());
        Box::pin(async move {
            let session = match lock_manager.send(GetSession).await {
                Ok(Some(id)) => id,
                Ok(None) => {
                    let reason = match lock_manager.send(GetSessionError).await {
                        Ok(Some(e)) => format!("no Consul session: {e}"),
                        _ => "no Consul session held (yet)".into(),
                    };
                    return Readiness::not_ready(None, reason);
                }
                Err(e) => {
                    return Readiness::not_ready(None, format!("the lock manager is gone: {e}"))
                }
            };
            // One read answers both questions: Consul is reachable, and still knows the
            // session (a session Consul invalidated is not live, whatever the replica thinks).
            let opts = QueryOptions::default();
            let info = client.session_info(&session, &opts);
            match tokio::time::timeout(READY_TIMEOUT, info).await {
                Err(_) => Readiness::not_ready(
                    Some(session),
                    format!("Consul did not answer within {READY_TIMEOUT:?}"),
                ),
                Ok(Err(e)) => {
                    Readiness::not_ready(Some(session), format!("Consul is unreachable: {e}"))
                }
                Ok(Ok(found)) if found.value.is_none() => Readiness::not_ready(
                    Some(session),
                    "Consul no longer knows this replica's session".into(),
                ),
                Ok(Ok(_)) => Readiness {
                    ready: true,
                    session: Some(session),
                    reason: None,
                },
            }
        })
    }
}

impl Handler<GetMetrics> for Reporter {
    type Result = ResponseFuture<Result<String, std::fmt::Error>>;

    fn handle(&mut self, _msg: GetMetrics, _ctx: &mut Context<Self>) -> Self::Result {
        let metrics = self.metrics.clone();
        let report = self.gather();
        Box::pin(async move {
            // Only Consul and the cloud know the servers and the rollout's state on every
            // replica (only the step lock's holder reads them otherwise): refresh them now.
            match tokio::time::timeout(SCRAPE_STATUS_TIMEOUT, report).await {
                Ok(Ok(r)) => {
                    metrics.servers_by_image(r.servers.iter().map(|s| s.image.as_deref()));
                    if r.rollout_error.is_some() {
                        metrics.rollout_invalid();
                    } else {
                        metrics.rollout_state(r.rollout.as_ref().map(|ro| &ro.state));
                    }
                    metrics.paused(r.paused);
                    metrics.observe(&observed(&r));
                }
                Ok(Err(e)) => {
                    debug!(
                        error = %e,
                        "No status for this scrape; its series keep their last values.",
                    );
                }
                Err(_) => {
                    metrics.error("status", "timeout");
                    debug!(
                        after = ?SCRAPE_STATUS_TIMEOUT,
                        "No status in time for this scrape; its series keep their last values.",
                    );
                }
            }
            metrics.encode()
        })
    }
}

/// The alerting series' values in a report.
fn observed(r: &crate::status::StatusReport) -> rehydrator_actors::metrics::Observed {
    let rollout = r.rollout.as_ref();
    let progress = rollout.map_or(0, |ro| {
        ro.launches
            .iter()
            .chain(&ro.retirements)
            .map(|s| s.at)
            .max()
            .unwrap_or(ro.started_at)
            .max(ro.started_at)
    });
    rehydrator_actors::metrics::Observed {
        failure_tolerance: r.failure_tolerance,
        healthy: r.healthy,
        outdated: r
            .servers
            .iter()
            .filter(|s| s.outdated == Some(true))
            .count(),
        rollout_started_ms: rollout.map_or(0, |ro| ro.started_at),
        last_progress_ms: progress,
        replicas_alive: r.replicas.iter().filter(|p| p.alive()).count(),
        replicas_dead: r.replicas.iter().filter(|p| !p.alive()).count(),
        held: r
            .locks
            .iter()
            .filter(|l| l.session.is_some())
            .map(|l| {
                let holder = l.replica.clone().unwrap_or_else(|| "unknown".into());
                rehydrator_actors::metrics::HeldLock {
                    lock: l.name.clone(),
                    holder_alive: r
                        .replicas
                        .iter()
                        .find(|p| p.replica == holder)
                        .map(|p| p.alive()),
                    holder,
                    since_ms: l.held_since.unwrap_or(0),
                }
            })
            .collect(),
        read_at_ms: r.generated_at,
    }
}
