//! Reading the report: Consul (and the cloud) in one pass, then plain joins.

use futures_util::future::{join_all, try_join, try_join5};
use rehydrator_actors::guard::GuardRecord;
use rehydrator_actors::plan::{self, Rollout, RolloutState};
use rehydrator_actors::ports::{
    CloudPort, ClusterHealth, ConsulPort, Image, Machine, MachineState,
};
use rehydrator_actors::receipt::{now_ms, Keys, LockValue, Receipt};

use crate::consul::port::{ConsulAdapter, LIVENESS_SERVICE};
use crate::consul::{Client, ConsulError, KvPair, QueryOptions, WatchPolicy};

use super::model::*;

/// The servers as their source lists them, before the join.
enum Servers {
    Cloud(Vec<Machine>, Option<Image>),
    /// Node name and its `image` node meta.
    Catalog(Vec<(String, Option<String>)>),
}

fn consul(what: &'static str) -> impl FnOnce(ConsulError) -> StatusError {
    move |error| StatusError::Consul { what, error }
}

/// Reads the cluster's status from Consul and, when given, the cloud. `consul` is the client
/// `run` builds (clone it: it is cheap); `cloud` is its `Ports::cloud`.
// No `err`: the caller reports a failure (the CLI prints it, the endpoint answers 503).
#[tracing::instrument(skip_all, fields(cluster = %scope.cluster, cloud = cloud.is_some()))]
pub async fn gather(
    consul_client: &Client,
    cloud: Option<&dyn CloudPort>,
    scope: &Scope,
) -> Result<StatusReport, StatusError> {
    let keys = Keys::new(&scope.cluster);
    let opts = QueryOptions::default();
    let mut warnings = Vec::new();

    // The reads do not depend on one another: in flight together, a report costs the slowest
    // of them (a cloud API call, typically) rather than their sum.
    let adapter = ConsulAdapter::new(consul_client.clone(), WatchPolicy::default());
    let health = async {
        adapter
            .autopilot_health()
            .await
            .map_err(|error| StatusError::Port {
                what: "autopilot health",
                error,
            })
    };
    let (rollout_key, pause_key) = (keys.rollout(), keys.pause());
    let rollout_entry = async {
        let got = consul_client.kv_get(&rollout_key, &opts).await;
        got.map(|i| i.value).map_err(consul("the rollout record"))
    };
    let guard_key = keys.guard();
    let pause_entry = async {
        let (pause, guard) = try_join(
            async {
                let got = consul_client.kv_get(&pause_key, &opts).await;
                got.map(|i| i.value).map_err(consul("the pause key"))
            },
            async {
                let got = consul_client.kv_get(&guard_key, &opts).await;
                got.map(|i| i.value).map_err(consul("the guard's record"))
            },
        )
        .await?;
        Ok((pause, guard))
    };
    let (locks_prefix, receipts_prefix) = (
        format!("rehydrator/{}/locks/", scope.cluster),
        format!("rehydrator/{}/receipts/", scope.cluster),
    );
    let lists = async {
        try_join(
            async {
                let got = consul_client.kv_list(&locks_prefix, &opts).await;
                got.map(|i| i.value).map_err(consul("the locks"))
            },
            async {
                let got = consul_client.kv_list(&receipts_prefix, &opts).await;
                got.map(|i| i.value).map_err(consul("the receipts"))
            },
        )
        .await
    };
    let servers_read = async {
        match cloud {
            Some(cloud) => {
                let machines = async {
                    cloud.machines().await.map_err(|error| StatusError::Cloud {
                        what: "the machines",
                        error,
                    })
                };
                let newest = async {
                    cloud
                        .newest_image()
                        .await
                        .map_err(|error| StatusError::Cloud {
                            what: "the newest image",
                            error,
                        })
                };
                let (machines, newest) = try_join(machines, newest).await?;
                Ok(Servers::Cloud(machines, newest))
            }
            None => {
                let got = consul_client
                    .catalog_service(&scope.service, None, &opts)
                    .await;
                let nodes = got
                    .map(|i| i.value)
                    .map_err(consul("the servers' catalog service"))?;
                Ok(Servers::Catalog(
                    nodes
                        .into_iter()
                        .map(|n| (n.node, n.node_meta.get("image").cloned()))
                        .collect(),
                ))
            }
        }
    };
    let replicas_read = consul_client.health_service(LIVENESS_SERVICE, None, false, &opts);
    let (
        (health, replicas_read),
        rollout_entry,
        (pause_entry, guard_entry),
        (lock_entries, receipt_entries),
        servers_read,
    ) = try_join5(
        async {
            let (health, replicas) = futures_util::future::join(health, replicas_read).await;
            Ok((health?, replicas))
        },
        rollout_entry,
        pause_entry,
        lists,
        servers_read,
    )
    .await?;
    // Liveness checks are the replicas' own: a token that may not read them, or an agent
    // that refuses them, costs the list, not the report.
    let replicas = match replicas_read {
        Ok(found) => replicas_of(&scope.cluster, found.value),
        Err(e) => {
            warnings.push(format!("the replicas' liveness checks: {e}"));
            Vec::new()
        }
    };
    let guard = guard_entry.and_then(|e| match serde_json::from_slice::<GuardRecord>(&e.value) {
        Ok(g) => Some(g),
        Err(err) => {
            warnings.push(format!(
                "the guard's record at {} does not decode: {err}",
                e.key
            ));
            None
        }
    });

    let mut rollout_error = None;
    let rollout = rollout_entry.and_then(|e| match serde_json::from_slice::<Rollout>(&e.value) {
        Ok(r) => Some(r),
        Err(err) => {
            let why = format!("the rollout record at {} does not decode: {err}", e.key);
            warnings.push(why.clone());
            rollout_error = Some(why);
            None
        }
    });
    let pause = pause_entry.map(|e| parse_pause(&e.value));

    let now = now_ms();
    let (source, servers, newest_image) = match servers_read {
        Servers::Cloud(machines, newest) => {
            let reference = newest.as_ref().map(|i| i.id.clone());
            let servers = join_cloud(machines, &health, reference.as_deref(), now);
            (ServerSource::Cloud, servers, newest.map(ImageInfo::from))
        }
        Servers::Catalog(images) => {
            let reference = rollout
                .as_ref()
                .filter(|r| r.is_active())
                .map(|r| r.target_image.clone());
            let servers = join_catalog(&images, &health, reference.as_deref());
            (ServerSource::Catalog, servers, None)
        }
    };

    // Each held lock's session, for its Name and Node; a session gone since the list is a
    // warning, not a failure.
    let sessions = join_all(lock_entries.iter().map(|entry| async {
        let Some(id) = &entry.session else {
            return Ok(None);
        };
        consul_client
            .session_info(id, &opts)
            .await
            .map(|found| found.value)
            .map_err(|e| format!("session {id} of lock {}: {e}", entry.key))
    }))
    .await;
    let mut locks = Vec::new();
    for (entry, session) in lock_entries.iter().zip(sessions) {
        let session = session.unwrap_or_else(|warning| {
            warnings.push(warning);
            None
        });
        locks.push(lock_status(
            &scope.cluster,
            entry,
            session.as_ref().map(|s| (s.name.as_str(), s.node.as_str())),
        ));
    }

    let (receipts, undecodable) = latest_receipts(&receipt_entries, scope.receipts);
    if undecodable > 0 {
        warnings.push(format!("{undecodable} receipt(s) do not decode"));
    }

    let progress = rollout
        .as_ref()
        .map(|r| progress(r, &servers, scope.desired));
    Ok(StatusReport {
        cluster: scope.cluster.clone(),
        consul: consul_client.address().to_owned(),
        generated_at: now,
        healthy: health.healthy,
        failure_tolerance: health.failure_tolerance,
        leader: health
            .servers
            .iter()
            .find(|p| p.leader)
            .map(|p| p.name.clone()),
        newest_image,
        source,
        servers,
        rollout,
        rollout_error,
        progress,
        locks,
        replicas,
        receipts,
        paused: pause.is_some(),
        pause,
        guard,
        warnings,
    })
}

/// The servers from the cloud's machines, each joined with its Raft peer the way the rollout
/// joins them (`plan::servers`), plus any peer no machine accounts for. Oldest first.
pub fn join_cloud(
    machines: Vec<Machine>,
    health: &ClusterHealth,
    reference: Option<&str>,
    now: u64,
) -> Vec<ServerStatus> {
    let paired = plan::servers(&machines, health);
    let mut out: Vec<ServerStatus> = paired
        .iter()
        .map(|sv| {
            let m = sv.machine;
            let mut s = peer_status(sv.node(), sv.peer);
            s.machine = Some(m.id.clone());
            s.image = Some(m.image.clone());
            s.launched_at = Some(m.launched_at);
            s.age_secs = Some(now.saturating_sub(m.launched_at) / 1000);
            s.machine_state = Some(machine_state(m.state).into());
            s.outdated = reference.map(|r| m.image != r);
            s
        })
        .collect();
    let unmatched = health.servers.iter().filter(|p| {
        !paired
            .iter()
            .any(|sv| sv.peer.is_some_and(|q| q.id == p.id))
    });
    out.extend(unmatched.map(|p| peer_status(p.name.clone(), Some(p))));
    sort_servers(&mut out);
    out
}

/// The servers from the catalog (node name, its `image` node meta), joined with Raft peers
/// by node name, plus any peer the catalog lacks.
pub fn join_catalog(
    nodes: &[(String, Option<String>)],
    health: &ClusterHealth,
    reference: Option<&str>,
) -> Vec<ServerStatus> {
    let mut out: Vec<ServerStatus> = nodes
        .iter()
        .map(|(node, image)| {
            let peer = health.servers.iter().find(|p| &p.name == node);
            let mut s = peer_status(node.clone(), peer);
            s.image = image.clone();
            s.outdated = match (image, reference) {
                (Some(i), Some(r)) => Some(i != r),
                _ => None,
            };
            s
        })
        .collect();
    let unlisted = health
        .servers
        .iter()
        .filter(|p| !nodes.iter().any(|(n, _)| n == &p.name));
    out.extend(unlisted.map(|p| peer_status(p.name.clone(), Some(p))));
    sort_servers(&mut out);
    out
}

fn peer_status(node: String, peer: Option<&rehydrator_actors::ports::PeerHealth>) -> ServerStatus {
    ServerStatus {
        node,
        machine: None,
        image: None,
        launched_at: None,
        age_secs: None,
        machine_state: None,
        in_raft: peer.is_some(),
        voter: peer.is_some_and(|p| p.voter),
        leader: peer.is_some_and(|p| p.leader),
        healthy: peer.is_some_and(|p| p.healthy),
        serf_status: peer.map(|p| p.serf_status.clone()).unwrap_or_default(),
        outdated: None,
    }
}

/// Oldest launch first (servers without a launch time last), then by node name.
fn sort_servers(servers: &mut [ServerStatus]) {
    servers.sort_by(|a, b| {
        let key = |s: &ServerStatus| s.launched_at.unwrap_or(u64::MAX);
        key(a).cmp(&key(b)).then_with(|| a.node.cmp(&b.node))
    });
}

fn machine_state(s: MachineState) -> &'static str {
    match s {
        MachineState::Pending => "pending",
        MachineState::Running => "running",
        MachineState::Stopping => "stopping",
        MachineState::Terminated => "terminated",
    }
}

/// The rollout's progress over the servers seen now.
pub fn progress(r: &Rollout, servers: &[ServerStatus], desired: Option<usize>) -> Progress {
    let desired = desired.unwrap_or_else(|| servers.iter().filter(|s| s.voter).count());
    let (state, waiting, waiting_since) = match &r.state {
        RolloutState::Active => ("active", r.waiting.clone(), r.waiting_since),
        RolloutState::Completed { .. } => ("completed", None, None),
        RolloutState::Stopped { reason, at } => ("stopped", Some(reason.clone()), Some(*at)),
    };
    Progress {
        target_image: r.target_image.clone(),
        state: state.into(),
        on_target: servers
            .iter()
            .filter(|s| s.image.as_deref() == Some(r.target_image.as_str()))
            .count(),
        total: servers.len(),
        desired,
        replaced: servers
            .iter()
            .filter(|s| s.voter && s.image.as_deref() == Some(r.target_image.as_str()))
            .count()
            .min(desired),
        launches: r.launches.len(),
        failed_launches: r.failed_launches.len(),
        retirements: r.retired(),
        waiting,
        waiting_since,
    }
}

/// What the pause key says: `rehydrator pause`'s JSON, or any text as the reason.
pub fn parse_pause(value: &[u8]) -> PauseInfo {
    if let Ok(info) = serde_json::from_slice::<PauseInfo>(value) {
        return info;
    }
    let text = String::from_utf8_lossy(value).trim().to_owned();
    PauseInfo {
        reason: Some(text).filter(|t| !t.is_empty()),
        ..PauseInfo::default()
    }
}

/// One lock key: its holder from the value the Dispatcher wrote and the session's Name/Node.
pub fn lock_status(cluster: &str, entry: &KvPair, session: Option<(&str, &str)>) -> LockStatus {
    let held = entry.session.is_some();
    let holder = held.then(|| LockValue::decode(&entry.value)).flatten();
    let keys = Keys::new(cluster);
    let from_session = session
        .and_then(|(name, _)| keys.replica_of_session(name))
        .map(str::to_owned);
    let (replica, action, trigger_id, held_since) = match holder {
        Some(h) => (Some(h.replica), Some(h.action), Some(h.trigger_id), h.since),
        None => (from_session, None, None, None),
    };
    LockStatus {
        name: entry
            .key
            .rsplit('/')
            .next()
            .unwrap_or(&entry.key)
            .to_owned(),
        key: entry.key.clone(),
        session: entry.session.clone(),
        session_name: session.map(|(n, _)| n.to_owned()),
        node: session.map(|(_, n)| n.to_owned()),
        replica,
        action,
        trigger_id,
        lock_index: entry.lock_index,
        held_since,
    }
}

/// The newest `n` receipts (by finish time, then key) and how many did not decode.
pub fn latest_receipts(entries: &[KvPair], n: usize) -> (Vec<Receipt>, usize) {
    let mut undecodable = 0;
    let mut receipts: Vec<(&str, Receipt)> = entries
        .iter()
        .filter_map(|e| match Receipt::from_bytes(&e.value) {
            Some(r) => Some((e.key.as_str(), r)),
            None => {
                undecodable += 1;
                None
            }
        })
        .collect();
    receipts.sort_by(|(ka, a), (kb, b)| b.finished_at.cmp(&a.finished_at).then(ka.cmp(kb)));
    (
        receipts.into_iter().take(n).map(|(_, r)| r).collect(),
        undecodable,
    )
}

/// The replicas of `cluster` among the `rehydrator` service's instances, by name.
fn replicas_of(cluster: &str, entries: Vec<crate::consul::ServiceEntry>) -> Vec<ReplicaStatus> {
    let mut out: Vec<ReplicaStatus> = entries
        .into_iter()
        .filter(|e| e.service.meta.get("cluster").map(String::as_str) == Some(cluster))
        .take(MAX_REPLICAS)
        .map(|e| {
            let check = e.checks.iter().find(|c| c.check_id == e.service.id);
            ReplicaStatus {
                replica: e
                    .service
                    .meta
                    .get("replica")
                    .cloned()
                    .unwrap_or_else(|| e.service.id.clone()),
                node: e.node.node.clone(),
                check: check.map_or_else(|| "unknown".into(), |c| c.status.clone()),
                output: check.map(|c| c.output.clone()).unwrap_or_default(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.replica.cmp(&b.replica));
    out
}

/// The most replicas a report lists (the service's instances are the outside world's).
const MAX_REPLICAS: usize = 64;
