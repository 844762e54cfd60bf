//! Real Consul agents started through the process backend: `n` servers on image `a` and a
//! client agent in a data directory of the test's, every agent killed on drop (panics
//! included); a failed test keeps the agents' logs.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rehydrator::cloud::process::{ProcessCloud, ProcessOptions};
use rehydrator::consul::{Client, ConsulConfig, QueryOptions};

/// What the agents run with: promotion after 2s instead of 10s, a 1s leave drain instead of 5s
/// (one block a line).
pub const AGENT_HCL: &str =
    "autopilot { server_stabilization_time = \"2s\" }\nperformance { leave_drain_time = \"1s\" }";

/// ACLs on, denying by default, with `token` as the management token and the agents' own:
/// what `ProcessRig::with_acl` adds to `AGENT_HCL` (Consul 1.8's `master`, an alias of
/// `initial_management` in later versions).
pub fn acl_hcl(token: &str) -> String {
    format!(
        "acl {{\n  enabled = true\n  default_policy = \"deny\"\n  down_policy = \"extend-cache\"\n  tokens {{\n    master = \"{token}\"\n    agent = \"{token}\"\n  }}\n}}"
    )
}

/// The `server_stabilization_time` in `AGENT_HCL`.
pub const STABILIZATION: Duration = Duration::from_secs(2);

/// How long a cluster may take to elect a leader with every server a voter.
pub const BOOT_BOUND: Duration = Duration::from_secs(90);

/// A data directory with its agents, all killed on drop.
pub struct ProcessRig {
    pub cloud: ProcessCloud,
    pub dir: PathBuf,
    pub consul_bin: PathBuf,
    /// The management token when the agents enforce ACLs.
    pub token: Option<String>,
}

impl Drop for ProcessRig {
    fn drop(&mut self) {
        let stopped = self.cloud.stop_all();
        if std::thread::panicking() {
            eprintln!(
                "agents stopped ({stopped:?}); their logs are kept in {}",
                self.dir.join("machines").display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl ProcessRig {
    /// A rig in a scratch directory named after `name` and this process.
    pub fn new(name: &str, consul_bin: PathBuf) -> Self {
        Self::build(name, consul_bin, None)
    }

    /// As `new`, with ACLs on and denying by default (`acl_hcl(token)`).
    pub fn with_acl(name: &str, consul_bin: PathBuf, token: &str) -> Self {
        Self::build(name, consul_bin, Some(token))
    }

    fn build(name: &str, consul_bin: PathBuf, token: Option<&str>) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rehydrator-cloud-process-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut agent_hcl = vec![AGENT_HCL.to_owned()];
        agent_hcl.extend(token.map(acl_hcl));
        let cloud = ProcessCloud::new(ProcessOptions {
            consul_bin: consul_bin.clone(),
            data_dir: dir.clone(),
            agent_hcl,
            acl_token: token.map(rehydrator::consul::Token::new),
        })
        .expect("a process cloud in a scratch directory");
        Self {
            cloud,
            dir,
            consul_bin,
            token: token.map(str::to_owned),
        }
    }

    /// `n` servers on image `a` and the client agent; returns a client of the client agent
    /// once the cluster has a leader and `n` voters.
    pub async fn bootstrap(&self, n: usize) -> Client {
        self.cloud
            .register_image("a", None)
            .expect("image a registers");
        let servers = self.cloud.bootstrap(n, "a").expect("the servers start");
        assert_eq!(servers.len(), n);
        let port = self.cloud.start_client(0).expect("the client agent starts");
        let client = Client::new(ConsulConfig {
            token: self.token.as_deref().map(rehydrator::consul::Token::new),
            ..ConsulConfig::with_address(&format!("http://127.0.0.1:{port}"))
                .expect("a loopback address")
        })
        .expect("a client");
        super::eventually(
            "a leader, every server a voter and the client agent's node registered",
            BOOT_BOUND,
            || async {
                // An agent that exited (a port lost to another process between its choice and
                // the agent's bind, say) never comes up: say which and why at once, rather
                // than after the whole bound.
                use rehydrator_actors::ports::CloudPort as _;
                let machines = self.cloud.machines().await.ok()?;
                if let Some(dead) = machines
                    .iter()
                    .find(|m| m.state == rehydrator_actors::ports::MachineState::Terminated)
                {
                    panic!("bootstrap server {} exited: {:?}", dead.id, dead.reason);
                }
                if let Some(agent) = self.cloud.client_record().ok().flatten() {
                    assert!(
                        self.cloud.is_alive(&agent),
                        "the client agent exited (its log is under {})",
                        self.dir.display()
                    );
                }
                rehydrator::cloud::process::ready(&client, n).await
            },
        )
        .await;
        client
    }
}

/// What the quorum watcher saw while it ran.
#[derive(Debug, Default)]
pub struct Quorum {
    pub polls: u64,
    /// Polls the agent did not answer (it was down or frozen): they say nothing of the
    /// leader, and count neither way.
    pub unanswered: u64,
    pub longest_leaderless: Duration,
    pub min_voters: Option<usize>,
    /// A new server led while an old one was still in Raft: an election moved leadership
    /// on its own, so no old leader needed moving.
    pub new_leader_beside_old: bool,
}

/// Polls the leader and the Raft voters through `client` every 200ms until aborted; `old`
/// names the servers the rollout replaces.
pub fn watch_quorum(
    client: Client,
    old: Vec<String>,
    seen: Rc<RefCell<Quorum>>,
) -> tokio::task::JoinHandle<()> {
    actix_rt::spawn(async move {
        let mut leaderless_since: Option<Instant> = None;
        loop {
            let leader = match client.status_leader().await {
                Ok(leader) => leader,
                Err(_) => {
                    seen.borrow_mut().unanswered += 1;
                    actix_rt::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let raft = client.raft_configuration(&QueryOptions::stale()).await.ok();
            let voters = raft.as_ref().map(|r| r.voters());
            let new_beside_old = raft.is_some_and(|r| {
                r.servers.iter().any(|s| s.leader && !old.contains(&s.node))
                    && r.servers.iter().any(|s| old.contains(&s.node))
            });
            {
                let mut q = seen.borrow_mut();
                q.polls += 1;
                match (leader, leaderless_since) {
                    (Some(_), _) => leaderless_since = None,
                    (None, None) => leaderless_since = Some(Instant::now()),
                    (None, Some(since)) => {
                        q.longest_leaderless = q.longest_leaderless.max(since.elapsed())
                    }
                }
                q.new_leader_beside_old |= new_beside_old;
                if let Some(v) = voters {
                    q.min_voters = Some(q.min_voters.map_or(v, |m| m.min(v)));
                }
            }
            actix_rt::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// The rollout record of `cluster`, once one is written and while it decodes.
pub async fn rollout_record(
    client: &Client,
    cluster: &str,
) -> Option<rehydrator_actors::plan::Rollout> {
    let key = format!("rehydrator/{cluster}/rollout");
    let raw = client
        .kv_get_raw(&key, &QueryOptions::default())
        .await
        .ok()?
        .value?;
    serde_json::from_slice(&raw).ok()
}

/// Fires `consul-rehydrate` once a second until `cluster`'s rollout is recorded, within
/// `limit`; the record. An event reaches each agent by gossip, and one fired before a
/// replica's event watch took its baseline is not replayed, so one fire may not be enough.
pub async fn fire_until_rolling(
    client: &Client,
    cluster: &str,
    limit: Duration,
) -> rehydrator_actors::plan::Rollout {
    super::eventually("the rollout starting", limit, || async {
        if let Some(r) = rollout_record(client, cluster).await {
            return Some(r);
        }
        let _ = client
            .event_fire(
                "consul-rehydrate",
                b"",
                &rehydrator::consul::EventFilter::default(),
            )
            .await;
        actix_rt::time::sleep(Duration::from_secs(1)).await;
        None
    })
    .await
}

/// After a rollout onto `image`: `machines` (the cloud's, now) are `n` new ones, none of
/// `before`, all on `image`; and Consul agrees: `n` voters, each one of those machines, each
/// with `image` in its node meta.
pub async fn assert_rolled_onto(
    client: &Client,
    machines: &[rehydrator_actors::ports::Machine],
    before: &[String],
    n: usize,
    image: &str,
) {
    assert_eq!(machines.len(), n, "{machines:?}");
    assert!(machines.iter().all(|m| m.image == image), "{machines:?}");
    assert!(
        machines.iter().all(|m| !before.contains(&m.id)),
        "{machines:?}"
    );
    let raft = client
        .raft_configuration(&QueryOptions::default())
        .await
        .unwrap();
    assert_eq!(raft.voters(), n, "{raft:?}");
    assert!(
        raft.servers
            .iter()
            .all(|s| machines.iter().any(|m| m.id == s.node)),
        "{raft:?}"
    );
    let images = catalog_images(client).await;
    for m in machines {
        assert_eq!(
            images.get(&m.id).map(String::as_str),
            Some(image),
            "{images:?}"
        );
    }
}

/// The servers in the catalog: node name and its `image` node meta.
pub async fn catalog_images(client: &Client) -> std::collections::HashMap<String, String> {
    client
        .catalog_service("consul", None, &QueryOptions::default())
        .await
        .expect("the catalog's consul service")
        .value
        .into_iter()
        .map(|s| {
            let image = s.node_meta.get("image").cloned().unwrap_or_default();
            (s.node, image)
        })
        .collect()
}

impl ProcessRig {
    /// A replica configuration for `cluster` on these agents (`desired` servers, Consul at
    /// `client`), written into the rig's directory; returns its path.
    pub fn replica_config(&self, cluster: &str, desired: usize, client: &Client) -> PathBuf {
        let cloud = format!(
            "type = \"process\"\nconsul_bin = \"{}\"\ndata_dir = \"{}\"\nagent_hcl = '''{AGENT_HCL}'''",
            self.consul_bin.display(),
            self.dir.display()
        );
        let config = self.dir.join("rehydrator.toml");
        std::fs::write(
            &config,
            super::rollout::config(
                cluster,
                desired,
                client.address(),
                &cloud,
                "stable_timeout = \"1m\"",
            ),
        )
        .unwrap();
        config
    }
}

/// Waits until each of `replicas` (by name) holds a session.
pub async fn every_replica_in_session(client: &Client, replicas: &[&str], bound: Duration) {
    super::eventually("every replica to hold a session", bound, || async {
        let s = sessions(client).await;
        replicas
            .iter()
            .all(|r| s.iter().any(|(name, _)| name == r))
            .then_some(())
    })
    .await;
}

/// The live sessions by replica: (replica, session ID).
pub async fn sessions(client: &Client) -> Vec<(String, String)> {
    client
        .session_list(&QueryOptions::default())
        .await
        .map(|a| a.value)
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            let replica = s.name.rsplit(' ').next().unwrap_or_default().to_owned();
            (replica, s.id)
        })
        .collect()
}

/// `cluster`'s `step` lock while a session holds it: (session, holder's replica, the holder's
/// record).
pub async fn step_lock(
    client: &Client,
    cluster: &str,
) -> Option<(String, String, serde_json::Value)> {
    let key = format!("rehydrator/{cluster}/locks/step");
    let pair = client
        .kv_get(&key, &QueryOptions::default())
        .await
        .ok()?
        .value?;
    let session = pair.session?;
    let holder: serde_json::Value = serde_json::from_slice(&pair.value).ok()?;
    let replica = holder["replica"].as_str()?.to_owned();
    Some((session, replica, holder))
}
