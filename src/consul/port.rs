//! The actors' `ConsulPort`, implemented with this client: what the LockManager, Dispatcher
//! and Watchers call. Each watch gets a `ClientWatch` that runs its blocking-query loop by
//! `WatchState`'s rules (index reset, rate limit, backoff) and hands back only answers that
//! may hold news, with the endpoint's JSON as `consul watch` would pass it to a handler.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use rehydrator_actors::ports::{
    Acquire, Acquired, ClusterHealth, ConsulPort, ErrorKind, Fence, Fenced, Indexed as PortIndexed,
    KvEntry, LeaderTransfer as PortTransfer, LivenessSpec, PeerHealth, PortError, PortFuture,
    SessionSpec, WatchRead, WatchStream,
};
use rehydrator_config::WatchKind;
use tokio::time::Instant;

use rehydrator_consul::{
    AgentCheck, AgentServiceRegistration, Client, ConsulError, IndexOrder, KvDeleteOptions, KvPair,
    KvPutOptions, KvTxnOp, LeaderTransfer, QueryOptions, ServiceCheck, SessionBehavior,
    SessionRequest, TxnError, TxnOutcome, WatchPolicy, WatchState,
};

/// The service the replicas' liveness checks live in, on their agents.
pub const LIVENESS_SERVICE: &str = "rehydrator";
/// The check's name, as `consul catalog` and the UI show it.
const LIVENESS_CHECK_NAME: &str = "rehydrator replica alive";
/// How long a replica's check may stay critical before its agent removes it (Consul's floor).
const LIVENESS_REAP: Duration = Duration::from_secs(60);
/// How long a snapshot's transfer may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Writes `bytes` to `dest` whole or not at all: to a file beside it, synced, then renamed.
fn write_whole(dest: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    let part = dest.with_extension("part");
    let written = std::fs::File::create(&part).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&part, dest)) {
        let _ = std::fs::remove_file(&part);
        return Err(format!("writing {}: {e}", dest.display()));
    }
    Ok(())
}

/// Consul's bound on a service meta value.
const MAX_META_VALUE: usize = 512;

/// The client as the actors' port.
#[derive(Clone)]
pub struct ConsulAdapter {
    client: Client,
    policy: WatchPolicy,
}

impl ConsulAdapter {
    pub fn new(client: Client, policy: WatchPolicy) -> Self {
        Self { client, policy }
    }
}

/// What the actors make of a client error: its kind decides retry, backoff and the status
/// text.
fn port_error(e: ConsulError) -> PortError {
    let kind = match &e {
        ConsulError::Unreachable { .. } | ConsulError::Transport { .. } => ErrorKind::Unreachable,
        ConsulError::Timeout { .. } => ErrorKind::Timeout,
        _ if e.is_no_leader() => ErrorKind::NoLeader,
        ConsulError::Status { status, .. } if *status >= 500 || *status == 429 => ErrorKind::Server,
        ConsulError::Status { status: 403, .. } => ErrorKind::Denied,
        ConsulError::Status { .. } | ConsulError::Config(_) => ErrorKind::Rejected,
        ConsulError::Decode { .. } | ConsulError::TooLarge { .. } => ErrorKind::Decode,
    };
    PortError::new(kind, e.to_string())
}

/// `?` on the client's results inside the port's futures: the two error types live in other
/// crates, so no `From` can join them here.
trait Ported<T> {
    fn ported(self) -> Result<T, PortError>;
}

impl<T> Ported<T> for Result<T, ConsulError> {
    fn ported(self) -> Result<T, PortError> {
        self.map_err(port_error)
    }
}

/// The transaction `kv_acquire` sends: the `unless` check, the lock, the `read`.
fn acquire_ops(req: &Acquire) -> Vec<KvTxnOp> {
    let mut ops = Vec::with_capacity(3);
    if let Some(key) = &req.unless {
        ops.push(KvTxnOp::CheckNotExists { key: key.clone() });
    }
    // The lock's value before this acquire: who held it last, for what. get-tree, as a get of
    // a missing key would fail the whole transaction.
    ops.push(KvTxnOp::GetTree {
        prefix: req.key.clone(),
    });
    ops.push(KvTxnOp::Lock {
        key: req.key.clone(),
        value: req.value.clone(),
        session: req.session.clone(),
    });
    if let Some(prefix) = &req.read {
        // get-tree, not get: a missing key would fail the whole transaction.
        ops.push(KvTxnOp::GetTree {
            prefix: prefix.clone(),
        });
    }
    ops
}

/// A committed acquire. Check-not-exists yields nothing; then come the lock key's entries
/// before the acquire (the key itself, if it existed, and any key under it as a prefix), the
/// lock's own result with its LockIndex, and what `read` found (under another prefix).
fn held(req: &Acquire, results: Vec<KvPair>) -> Result<Acquired, PortError> {
    let at = results.iter().rposition(|p| p.key == req.key);
    let mut results = results.into_iter();
    let prior: Vec<KvPair> = results.by_ref().take(at.unwrap_or(0)).collect();
    let prior = prior
        .into_iter()
        .find(|p| p.key == req.key)
        .map(|p| p.value);
    let lock = results.next().filter(|p| p.key == req.key).ok_or_else(|| {
        PortError::new(
            ErrorKind::Decode,
            format!(
                "Consul's txn answer for lock {} lacks the lock's entry",
                req.key
            ),
        )
    })?;
    if lock.session.as_deref() != Some(req.session.as_str()) {
        return Err(PortError::new(
            ErrorKind::Decode,
            format!(
                "Consul's txn answer shows lock {} not held by our session",
                req.key
            ),
        ));
    }
    Ok(Acquired::Held {
        lock_index: lock.lock_index,
        read: results.map(entry).collect(),
        prior,
    })
}

/// A rolled-back acquire: the receipt exists (whatever else failed), the lock is busy, or
/// something the job cannot get past (an invalid session, a refused token).
fn refused(req: &Acquire, errors: &[TxnError]) -> Result<Acquired, PortError> {
    // After the check (if any) and the read of the lock's prior value.
    let lock_op = usize::from(req.unless.is_some()) + 1;
    if req.unless.is_some()
        && errors
            .iter()
            .any(|e| e.op_index == 0 && e.what.ends_with("exists"))
    {
        return Ok(Acquired::Present);
    }
    let busy = |e: &TxnError| {
        e.op_index == lock_op && (e.what.contains("already held") || e.what.contains("lock delay"))
    };
    if !errors.is_empty() && errors.iter().all(busy) {
        return Ok(Acquired::Busy);
    }
    let what: Vec<String> = errors
        .iter()
        .map(|e| format!("op {}: {}", e.op_index, e.what))
        .collect();
    let denied = errors.iter().any(|e| is_denied(&e.what));
    Err(if denied {
        PortError::new(
            ErrorKind::Denied,
            format!(
                "ACL token refused: acquiring {}: {}",
                req.key,
                what.join("; ")
            ),
        )
    } else {
        PortError::new(
            ErrorKind::Rejected,
            format!("Consul refused acquiring {}: {}", req.key, what.join("; ")),
        )
    })
}

/// A rolled-back fenced write: the lock's check (op 0) failed, or the CAS (op 1); anything
/// else (a refused token) is an error naming the key.
fn fenced_refusal(key: &str, fence: &Fence, errors: &[TxnError]) -> Result<Fenced, PortError> {
    if errors
        .iter()
        .any(|e| e.op_index == 0 && !is_denied(&e.what))
    {
        return Ok(Fenced::LockLost);
    }
    if !errors.is_empty()
        && errors
            .iter()
            .all(|e| e.op_index == 1 && !is_denied(&e.what))
    {
        return Ok(Fenced::Changed);
    }
    let what: Vec<String> = errors
        .iter()
        .map(|e| format!("op {}: {}", e.op_index, e.what))
        .collect();
    let kind = if errors.iter().any(|e| is_denied(&e.what)) {
        ErrorKind::Denied
    } else {
        ErrorKind::Rejected
    };
    Err(PortError::new(
        kind,
        format!(
            "Consul refused writing {key} under lock {}: {}",
            fence.lock,
            what.join("; ")
        ),
    ))
}

fn is_denied(what: &str) -> bool {
    what.contains("Permission denied") || what.contains("ACL not found")
}

fn entry(p: KvPair) -> KvEntry {
    KvEntry {
        key: p.key,
        value: p.value,
        session: p.session,
        lock_index: p.lock_index,
        create_index: p.create_index,
        modify_index: p.modify_index,
    }
}

impl ConsulPort for ConsulAdapter {
    fn kv_get(
        &self,
        key: &str,
        index: u64,
        wait: Duration,
    ) -> PortFuture<PortIndexed<Option<KvEntry>>> {
        let (c, key) = (self.client.clone(), key.to_owned());
        let opts = if index == 0 {
            QueryOptions::default()
        } else {
            QueryOptions::blocking(index, wait)
        };
        Box::pin(async move {
            let got = c.kv_get(&key, &opts).await.ported()?;
            Ok(PortIndexed {
                index: got.meta.index,
                value: got.value.map(entry),
            })
        })
    }

    fn kv_list(&self, prefix: &str) -> PortFuture<PortIndexed<Vec<KvEntry>>> {
        let (c, prefix) = (self.client.clone(), prefix.to_owned());
        Box::pin(async move {
            let got = c
                .kv_list(&prefix, &QueryOptions::default())
                .await
                .ported()?;
            Ok(PortIndexed {
                index: got.meta.index,
                value: got.value.into_iter().map(entry).collect(),
            })
        })
    }

    fn kv_put(&self, key: &str, value: Vec<u8>, cas: Option<u64>) -> PortFuture<bool> {
        let (c, key) = (self.client.clone(), key.to_owned());
        Box::pin(async move {
            let opts = KvPutOptions {
                cas,
                ..KvPutOptions::default()
            };
            c.kv_put(&key, &value, &opts).await.ported()
        })
    }

    fn kv_put_fenced(
        &self,
        key: &str,
        value: Vec<u8>,
        cas: Option<u64>,
        fence: &Fence,
    ) -> PortFuture<Fenced> {
        let (c, key, fence) = (self.client.clone(), key.to_owned(), fence.clone());
        Box::pin(async move {
            let ops = [
                KvTxnOp::CheckSession {
                    key: fence.lock.clone(),
                    session: fence.session.clone(),
                },
                match cas {
                    Some(index) => KvTxnOp::Cas {
                        key: key.clone(),
                        value,
                        index,
                    },
                    None => KvTxnOp::Set {
                        key: key.clone(),
                        value,
                    },
                },
            ];
            match c.txn(&ops).await.ported()? {
                TxnOutcome::Committed(_) => Ok(Fenced::Written),
                TxnOutcome::RolledBack(errors) => fenced_refusal(&key, &fence, &errors),
            }
        })
    }

    fn kv_delete(&self, key: &str) -> PortFuture<bool> {
        let (c, key) = (self.client.clone(), key.to_owned());
        Box::pin(async move {
            c.kv_delete(&key, &KvDeleteOptions::default())
                .await
                .ported()
        })
    }

    fn kv_acquire(&self, req: &Acquire) -> PortFuture<Acquired> {
        let (c, req) = (self.client.clone(), req.clone());
        Box::pin(async move {
            let ops = acquire_ops(&req);
            match c.txn(&ops).await.ported()? {
                TxnOutcome::Committed(results) => held(&req, results),
                TxnOutcome::RolledBack(errors) => refused(&req, &errors),
            }
        })
    }

    fn kv_release(&self, key: &str, session: &str) -> PortFuture<bool> {
        let (c, key, session) = (self.client.clone(), key.to_owned(), session.to_owned());
        Box::pin(async move { c.kv_release(&key, b"", &session).await.ported() })
    }

    fn session_create(&self, spec: &SessionSpec) -> PortFuture<String> {
        let c = self.client.clone();
        let mut request = SessionRequest {
            name: Some(spec.name.clone()),
            ttl: Some(spec.ttl),
            lock_delay: Some(spec.lock_delay),
            behavior: Some(SessionBehavior::Release),
            ..SessionRequest::default()
        };
        if let Some(check) = &spec.check {
            // NodeChecks/ServiceChecks (Consul 1.7+): a service check named in the old
            // `Checks` would be looked for among the node's checks. serfHealth stays, so a
            // dead host still ends the session at once.
            request.node_checks = Some(vec!["serfHealth".into()]);
            request.service_checks = Some(vec![ServiceCheck {
                id: check.clone(),
                namespace: String::new(),
            }]);
        }
        Box::pin(async move { c.session_create(&request).await.ported() })
    }

    fn liveness_register(&self, spec: &LivenessSpec) -> PortFuture<()> {
        let c = self.client.clone();
        let clip = |v: &str| v.chars().take(MAX_META_VALUE).collect::<String>();
        let service = AgentServiceRegistration {
            id: spec.id.clone(),
            name: LIVENESS_SERVICE.into(),
            meta: [
                ("cluster".to_owned(), clip(&spec.cluster)),
                ("replica".to_owned(), clip(&spec.replica)),
            ]
            .into(),
            check: Some(AgentCheck {
                check_id: spec.id.clone(),
                name: LIVENESS_CHECK_NAME.into(),
                notes: "Passed by the replica while it runs; its Consul session (and locks) \
                        end when this turns critical."
                    .into(),
                ttl: spec.ttl,
                status: "passing".into(),
                deregister_critical_service_after: LIVENESS_REAP,
            }),
        };
        let check = spec.id.clone();
        Box::pin(async move {
            c.agent_service_register(&service).await.ported()?;
            // The agent keeps a re-registered check's status: one left critical by a stall
            // stays so (and no session can be tied to it) until it is passed.
            if !c.agent_check_pass(&check).await.ported()? {
                return Err(PortError::new(
                    ErrorKind::Server,
                    format!("the agent lost check {check} right after registering it"),
                ));
            }
            Ok(())
        })
    }

    fn snapshot(&self, dest: &std::path::Path, max_bytes: usize) -> PortFuture<u64> {
        let (c, dest) = (self.client.clone(), dest.to_owned());
        Box::pin(async move {
            let snapshot = c.snapshot(max_bytes, SNAPSHOT_TIMEOUT).await.ported()?;
            let bytes = snapshot.archive.len() as u64;
            // Off the actors' thread: an archive can be hundreds of MiB.
            tokio::task::spawn_blocking(move || write_whole(&dest, &snapshot.archive))
                .await
                .map_err(|e| PortError::new(ErrorKind::Server, format!("the writer died: {e}")))?
                .map_err(|e| PortError::new(ErrorKind::Server, e))?;
            Ok(bytes)
        })
    }

    fn liveness_pass(&self, id: &str) -> PortFuture<bool> {
        let (c, id) = (self.client.clone(), id.to_owned());
        Box::pin(async move { c.agent_check_pass(&id).await.ported() })
    }

    fn liveness_deregister(&self, id: &str) -> PortFuture<()> {
        let (c, id) = (self.client.clone(), id.to_owned());
        Box::pin(async move { c.agent_service_deregister(&id).await.ported() })
    }

    fn session_renew(&self, id: &str) -> PortFuture<bool> {
        let (c, id) = (self.client.clone(), id.to_owned());
        Box::pin(async move { Ok(c.session_renew(&id).await.ported()?.is_some()) })
    }

    fn session_destroy(&self, id: &str) -> PortFuture<()> {
        let (c, id) = (self.client.clone(), id.to_owned());
        Box::pin(async move {
            c.session_destroy(&id).await.ported()?;
            Ok(())
        })
    }

    fn autopilot_health(&self) -> PortFuture<ClusterHealth> {
        let c = self.client.clone();
        Box::pin(async move {
            let h = c
                .autopilot_health(&QueryOptions::default())
                .await
                .ported()?;
            Ok(ClusterHealth {
                healthy: h.healthy,
                failure_tolerance: h.failure_tolerance,
                servers: h
                    .servers
                    .into_iter()
                    .map(|s| PeerHealth {
                        id: s.id,
                        name: s.name,
                        address: s.address,
                        serf_status: s.serf_status,
                        leader: s.leader,
                        voter: s.voter,
                        healthy: s.healthy,
                        stable_since_ms: humantime::parse_rfc3339_weak(&s.stable_since)
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .and_then(|d| u64::try_from(d.as_millis()).ok()),
                    })
                    .collect(),
            })
        })
    }

    fn server_stabilization(&self) -> PortFuture<Duration> {
        let c = self.client.clone();
        Box::pin(async move {
            Ok(c.autopilot_configuration(&QueryOptions::default())
                .await
                .ported()?
                .server_stabilization_time)
        })
    }

    fn raft_leader(&self) -> PortFuture<Option<String>> {
        let c = self.client.clone();
        Box::pin(async move { Ok(c.status_leader().await.ported()?.filter(|l| !l.is_empty())) })
    }

    fn transfer_leader(&self, to: Option<&str>) -> PortFuture<PortTransfer> {
        let (c, to) = (self.client.clone(), to.map(str::to_owned));
        Box::pin(async move {
            Ok(match c.transfer_leader(to.as_deref()).await.ported()? {
                LeaderTransfer::Transferred => PortTransfer::Transferred,
                LeaderTransfer::NotTransferred => PortTransfer::NotTransferred,
                LeaderTransfer::Unsupported => PortTransfer::Unsupported,
            })
        })
    }

    fn force_leave(&self, node: &str) -> PortFuture<()> {
        let (c, node) = (self.client.clone(), node.to_owned());
        Box::pin(async move { c.agent_force_leave(&node, false).await.ported() })
    }

    fn watch(&self, kind: &WatchKind) -> Box<dyn WatchStream> {
        if let WatchKind::Schedule { every } = kind {
            return Box::new(Ticks {
                every: *every,
                started: std::cell::Cell::new(false),
            });
        }
        let order = match kind {
            WatchKind::Event { .. } => IndexOrder::Hashed,
            _ => IndexOrder::Raft,
        };
        Box::new(ClientWatch {
            client: self.client.clone(),
            kind: kind.clone(),
            state: Rc::new(RefCell::new(WatchState::with_order(self.policy, order))),
        })
    }
}

/// One watch's blocking-query loop.
struct ClientWatch {
    client: Client,
    kind: WatchKind,
    state: Rc<RefCell<WatchState>>,
}

impl WatchStream for ClientWatch {
    fn next(&self) -> PortFuture<WatchRead> {
        let (client, kind, state) = (self.client.clone(), self.kind.clone(), self.state.clone());
        Box::pin(async move {
            loop {
                let delay = state.borrow().delay(Instant::now());
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let opts = {
                    let mut s = state.borrow_mut();
                    s.started(Instant::now());
                    s.options()
                };
                match client.watch_read(&kind, &opts).await {
                    Ok((index, payload)) => {
                        if state.borrow_mut().observe(index).is_news() {
                            return Ok(WatchRead {
                                index: index.max(1),
                                payload,
                            });
                        }
                    }
                    Err(e) => {
                        state.borrow_mut().failed();
                        return Err(port_error(e));
                    }
                }
            }
        })
    }
}

/// A `schedule` watch: a tick every `every`, numbered by Unix time / `every` so every replica
/// names the same tick the same, which makes it a trigger they agree on.
struct Ticks {
    every: Duration,
    started: std::cell::Cell<bool>,
}

impl WatchStream for Ticks {
    fn next(&self) -> PortFuture<WatchRead> {
        let every_ms = (self.every.as_millis() as u64).max(1);
        let first = !self.started.replace(true);
        Box::pin(async move {
            let now = rehydrator_actors::receipt::now_ms();
            let tick = now / every_ms;
            if !first {
                // Sleep to the next boundary: replicas tick together, not every `every` from
                // whenever each started.
                tokio::time::sleep(Duration::from_millis((tick + 1) * every_ms - now)).await;
            }
            let tick = rehydrator_actors::receipt::now_ms() / every_ms;
            Ok(WatchRead {
                index: tick,
                payload: serde_json::json!({ "Tick": tick }),
            })
        })
    }
}
