//! `rehydrator demo --consul-bin PATH`: the demo on real Consul agents, started through the
//! process backend (`consul agent -server` processes on loopback, the same as
//! `rehydrator process-cluster`). What the simulator keeps for the demo (its invariants, its
//! event log, every machine with its launch token) real Consul does not: [`Recorder`] rebuilds
//! them from outside, from each look the demo takes (every 100 ms) at Consul and the process
//! cloud's records, so the verdict and the timeline judge a real rollout as they judge a
//! simulated one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::observe::{Observation, ServerRow};
use super::timeline::Event;
use super::{DemoError, NEW_IMAGE, OLD_IMAGE};
use crate::cloud::consul_version::{self, Version};
use crate::cloud::process::{ProcessCloud, ProcessOptions};
use crate::consul::{Client, ConsulConfig, QueryOptions};
use rehydrator_actors::ports::MachineState;

/// What the agents run with: promotion after 2 s instead of Consul's 10 s, a 1 s leave drain
/// instead of 5 s, so a rollout of 3 servers takes about a minute.
pub const AGENT_HCL: &str =
    "autopilot { server_stabilization_time = \"2s\" }\nperformance { leave_drain_time = \"1s\" }";
/// The `server_stabilization_time` in [`AGENT_HCL`].
pub const STABILIZATION: Duration = Duration::from_secs(2);
/// How long the first servers may take to elect a leader with every one a voter.
const BOOT_BOUND: Duration = Duration::from_secs(90);
/// A stretch without a leader longer than this is counted as quorum lost: an election on
/// loopback takes about a second, and a cluster without quorum elects no one.
pub const LEADERLESS_LIMIT: Duration = Duration::from_secs(10);

/// Real Consul servers on `OLD_IMAGE` and the client agent the replicas talk to.
pub struct RealCluster {
    pub cloud: ProcessCloud,
    /// The client agent's HTTP address.
    pub url: String,
    pub version: Version,
}

fn failed(what: &str, reason: impl std::fmt::Display) -> DemoError {
    DemoError::Real {
        what: what.to_owned(),
        reason: reason.to_string(),
    }
}

impl RealCluster {
    /// Starts `n` servers from `bin` on `OLD_IMAGE` in `dir`, and the client agent; waits until
    /// they have a leader and `n` voters. On failure every agent started is stopped.
    pub async fn start(bin: &Path, dir: &Path, n: usize) -> Result<Self, DemoError> {
        let version = consul_version::ask(bin).map_err(|e| failed("--consul-bin", e))?;
        let cloud = ProcessCloud::new(ProcessOptions {
            consul_bin: bin.to_owned(),
            data_dir: dir.to_owned(),
            agent_hcl: vec![AGENT_HCL.to_owned()],
            acl_token: None,
        })
        .map_err(|e| failed("the process cloud", e))?;
        let cluster = Self {
            cloud,
            url: String::new(),
            version,
        };
        match cluster.boot(n).await {
            Ok(url) => Ok(Self { url, ..cluster }),
            Err(e) => {
                cluster.stop();
                Err(e)
            }
        }
    }

    async fn boot(&self, n: usize) -> Result<String, DemoError> {
        self.cloud
            .register_image(OLD_IMAGE, None)
            .map_err(|e| failed("registering the first image", e))?;
        self.cloud
            .bootstrap(n, OLD_IMAGE)
            .map_err(|e| failed("starting the servers", e))?;
        let port = self
            .cloud
            .start_client(0)
            .map_err(|e| failed("starting the client agent", e))?;
        let url = format!("http://127.0.0.1:{port}");
        let client = ConsulConfig::with_address(&url)
            .and_then(Client::new)
            .map_err(|e| failed("the client agent's address", e))?;
        let started = Instant::now();
        loop {
            let leader = client.status_leader().await.ok().flatten();
            let voters = client
                .raft_configuration(&QueryOptions::default())
                .await
                .map_or(0, |r| r.voters());
            // And autopilot's first health pass, which the rollout waits for anyway.
            let healthy = client
                .autopilot_health(&QueryOptions::default())
                .await
                .is_ok_and(|h| h.healthy && h.servers.len() == n);
            if leader.is_some() && voters == n && healthy {
                return Ok(url);
            }
            if started.elapsed() > BOOT_BOUND {
                return Err(failed(
                    "the first servers",
                    format!(
                        "no leader with {n} healthy voters within {BOOT_BOUND:?}; the agents' logs are in {}",
                        self.cloud.data_dir().join("machines").display()
                    ),
                ));
            }
            actix_rt::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The replicas' `[cloud]` section: this process cloud.
    pub fn cloud_toml(&self) -> String {
        format!(
            "type = \"process\"\nconsul_bin = {}\ndata_dir = {}\nagent_hcl = '''{AGENT_HCL}'''",
            toml_string(&self.cloud.binary().display().to_string()),
            toml_string(&self.cloud.data_dir().display().to_string()),
        )
    }

    /// Registers `NEW_IMAGE` (the same binary: the demo rolls the machine image, not Consul).
    pub fn register_new_image(&self) -> Result<(), DemoError> {
        self.cloud
            .register_image(NEW_IMAGE, None)
            .map_err(|e| failed("registering the new image", e))
    }

    /// Every machine the cloud ever had, as `/sim/servers` rows: launch tokens only on the
    /// machines launched since `since_ms` (the rollout's), as the simulator shows none on the
    /// first servers.
    pub fn rows(&self, since_ms: u64) -> Result<Vec<ServerRow>, DemoError> {
        let records = self
            .cloud
            .records()
            .map_err(|e| failed("reading the machines", e))?;
        Ok(records
            .iter()
            .map(|r| {
                let state = self.cloud.state_of(r);
                ServerRow {
                    name: r.id.clone(),
                    image: r.image.clone(),
                    machine: match state {
                        MachineState::Terminated => "terminated",
                        MachineState::Pending => "booting",
                        MachineState::Stopping => "stopped",
                        MachineState::Running => "running",
                    }
                    .into(),
                    in_raft: false,
                    voter: false,
                    leader: false,
                    token: (r.launched_at >= since_ms).then(|| r.token.clone()),
                }
            })
            .collect())
    }

    /// Every agent of the demo's data directory, killed.
    pub fn stop(&self) {
        if let Err(e) = self.cloud.stop_all() {
            tracing::warn!(error = %e, "Could not stop every Consul agent of the demo.");
        }
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// One server's lane as seen so far.
#[derive(Debug, Default)]
struct Seen {
    image: String,
    joined: bool,
    voter: bool,
    left: bool,
    terminated: bool,
}

/// The simulator's invariants and event log, rebuilt from the demo's looks at real Consul.
#[derive(Debug)]
pub struct Recorder {
    n: usize,
    events: Vec<Event>,
    seen: BTreeMap<String, Seen>,
    leader: Option<String>,
    leaderless_since: Option<u64>,
    quorum_lost: u64,
    max_voters_missing: u64,
    leader_retired: u64,
    max_servers: u64,
    min_voters: Option<u64>,
    leader_changes: u64,
    min_failure_tolerance: Option<u64>,
    /// The longest stretch without a leader, milliseconds.
    pub longest_leaderless_ms: u64,
}

impl Recorder {
    pub fn new(n: usize) -> Self {
        Self {
            n,
            events: Vec::new(),
            seen: BTreeMap::new(),
            leader: None,
            leaderless_since: None,
            quorum_lost: 0,
            max_voters_missing: 0,
            leader_retired: 0,
            max_servers: 0,
            min_voters: None,
            leader_changes: 0,
            min_failure_tolerance: None,
            longest_leaderless_ms: 0,
        }
    }

    fn event(&mut self, at: u64, server: &str, image: &str, event: &str) {
        self.events.push(Event {
            at,
            server: server.to_owned(),
            image: image.to_owned(),
            event: event.to_owned(),
        });
    }

    /// Takes one look at `now` (Unix ms): `o` from Consul, `machines` from the cloud's records.
    pub fn look(&mut self, now: u64, o: &Observation, machines: &[ServerRow]) {
        let live: BTreeSet<&str> = machines
            .iter()
            .filter(|m| !m.terminated())
            .map(|m| m.name.as_str())
            .collect();
        for m in machines {
            if !self.seen.contains_key(&m.name) {
                self.seen.insert(
                    m.name.clone(),
                    Seen {
                        image: m.image.clone(),
                        ..Seen::default()
                    },
                );
                self.event(now, &m.name, &m.image, "launched");
            }
        }
        for s in o.servers.iter().filter(|s| !s.terminated()) {
            let Some(seen) = self.seen.get_mut(&s.name) else {
                continue;
            };
            let image = seen.image.clone();
            let (join, vote) = (s.in_raft && !seen.joined, s.voter && !seen.voter);
            seen.joined |= s.in_raft;
            seen.voter |= s.voter;
            if join {
                self.event(now, &s.name, &image, "joined");
            }
            if vote {
                self.event(now, &s.name, &image, "voter");
            }
        }
        // Leadership: a change of leader is a follower event for the old, a leader event for
        // the new. A leader whose machine is gone while it still led was retired leading.
        if o.leader != self.leader {
            if let Some(old) = self.leader.take() {
                let image = self.seen.get(&old).map(|s| s.image.clone());
                if let Some(image) = image {
                    self.event(now, &old, &image, "follower");
                }
                if !live.contains(old.as_str()) {
                    self.leader_retired += 1;
                }
            }
            if let Some(new) = &o.leader {
                self.leader_changes += 1;
                let image = self.seen.get(new).map(|s| s.image.clone());
                if let Some(image) = image {
                    self.event(now, new, &image, "leader");
                }
            }
            self.leader = o.leader.clone();
        }
        match (&o.leader, self.leaderless_since) {
            (Some(_), Some(since)) => {
                let gap = now.saturating_sub(since);
                self.longest_leaderless_ms = self.longest_leaderless_ms.max(gap);
                if gap > LEADERLESS_LIMIT.as_millis() as u64 {
                    self.quorum_lost += 1;
                }
                self.leaderless_since = None;
            }
            (None, None) => self.leaderless_since = Some(now),
            _ => {}
        }
        // The status model takes Raft membership from autopilot, which answers no servers at
        // all while it has no health pass (after an election too): such a look says nothing
        // about membership or votes, rather than that there are none.
        let silent = !o.servers.iter().any(|s| s.in_raft);
        // Leaving is the cloud's word (a machine stopping or gone), not autopilot's, whose list
        // is partial for a moment after an election.
        let stopping: BTreeSet<&str> = machines
            .iter()
            .filter(|m| m.machine == "stopped")
            .map(|m| m.name.as_str())
            .collect();
        for (name, seen) in &mut self.seen {
            let gone = !live.contains(name.as_str());
            let (leave, end) = (
                seen.joined && !seen.left && (gone || stopping.contains(name.as_str())),
                gone && !seen.terminated,
            );
            seen.left |= leave;
            seen.terminated |= gone;
            let image = seen.image.clone();
            if leave {
                self.events.push(Event {
                    at: now,
                    server: name.clone(),
                    image: image.clone(),
                    event: "left".into(),
                });
            }
            if end {
                self.events.push(Event {
                    at: now,
                    server: name.clone(),
                    image,
                    event: "terminated".into(),
                });
            }
        }
        if silent {
            return;
        }
        let voters = o
            .servers
            .iter()
            .filter(|s| s.voter && live.contains(s.name.as_str()))
            .count() as u64;
        self.min_voters = Some(self.min_voters.map_or(voters, |m| m.min(voters)));
        self.max_voters_missing = self
            .max_voters_missing
            .max((self.n as u64).saturating_sub(voters));
        self.max_servers = self.max_servers.max(live.len() as u64);
        if let Some(ft) = o.failure_tolerance {
            self.min_failure_tolerance = Some(self.min_failure_tolerance.map_or(ft, |m| m.min(ft)));
        }
    }

    /// The invariants as `/sim/invariants` has them, for `verdict::check_invariants`.
    pub fn invariants(&self) -> Value {
        // Still leaderless at the end counts too.
        let quorum_lost = self.quorum_lost + u64::from(self.leaderless_since.is_some());
        json!({
            "quorum_lost_count": quorum_lost,
            "max_voters_missing": self.max_voters_missing,
            "leader_retired": self.leader_retired,
            "max_servers": self.max_servers,
            "min_voters": self.min_voters,
            "leader_changes": self.leader_changes,
            "min_failure_tolerance": self.min_failure_tolerance,
        })
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.clone()
    }
}

/// `/sim/servers` JSON for `verdict::check_servers`: the cloud's machines, with each live one's
/// vote from Consul's latest look.
pub fn servers_json(machines: &[ServerRow], o: &Observation) -> Vec<Value> {
    machines
        .iter()
        .map(|m| {
            let voter = o.servers.iter().any(|s| s.name == m.name && s.voter);
            json!({
                "name": m.name,
                "image": m.image,
                "machine": m.machine,
                "voter": voter,
                "token": m.token,
            })
        })
        .collect()
}

/// Where the demo keeps a real cluster's agents: beside the replicas' logs.
pub fn data_dir(logs: &Path) -> PathBuf {
    logs.join("consul")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(name: &str, image: &str, machine: &str, in_raft: bool, voter: bool) -> ServerRow {
        ServerRow {
            name: name.into(),
            image: image.into(),
            machine: machine.into(),
            in_raft,
            voter,
            leader: false,
            token: None,
        }
    }

    fn look(servers: Vec<ServerRow>, leader: Option<&str>) -> Observation {
        Observation {
            servers,
            leader: leader.map(str::to_owned),
            failure_tolerance: Some(1),
            rollout: None,
            lock: None,
            cloud_actions: 0,
        }
    }

    #[test]
    fn a_clean_replacement_keeps_every_invariant_and_draws_each_lane() {
        let mut r = Recorder::new(1);
        let a = row("a1", "a", "running", true, true);
        r.look(
            0,
            &look(vec![a.clone()], Some("a1")),
            std::slice::from_ref(&a),
        );
        let b = row("b1", "b", "running", true, false);
        r.look(
            100,
            &look(vec![a.clone(), b.clone()], Some("a1")),
            &[a.clone(), b.clone()],
        );
        let b = row("b1", "b", "running", true, true);
        r.look(
            200,
            &look(vec![a.clone(), b.clone()], Some("b1")),
            &[a.clone(), b.clone()],
        );
        let gone = row("a1", "a", "terminated", false, false);
        r.look(300, &look(vec![b.clone()], Some("b1")), &[gone, b]);
        let inv = r.invariants();
        assert!(
            super::super::verdict::check_invariants(&inv, 1).is_empty(),
            "{inv}"
        );
        let kinds: Vec<(&str, &str)> = r
            .events
            .iter()
            .map(|e| (e.server.as_str(), e.event.as_str()))
            .collect();
        assert!(kinds.contains(&("b1", "voter")), "{kinds:?}");
        assert!(kinds.contains(&("a1", "terminated")), "{kinds:?}");
        assert_eq!(inv["leader_changes"], 2, "{inv}");
    }

    #[test]
    fn a_look_without_autopilot_s_answer_says_nothing_about_voters() {
        let mut r = Recorder::new(1);
        let silent = row("a1", "a", "running", false, false);
        r.look(0, &look(vec![silent.clone()], Some("a1")), &[silent]);
        assert_eq!(r.invariants()["min_voters"], Value::Null);
        let a = row("a1", "a", "running", true, true);
        r.look(100, &look(vec![a.clone()], Some("a1")), &[a]);
        let inv = r.invariants();
        assert_eq!(
            (&inv["min_voters"], &inv["max_voters_missing"]),
            (&1.into(), &0.into()),
            "{inv}"
        );
    }

    #[test]
    fn a_leader_gone_while_leading_and_a_long_leaderless_stretch_are_counted() {
        let mut r = Recorder::new(1);
        let a = row("a1", "a", "running", true, true);
        r.look(0, &look(vec![a.clone()], Some("a1")), &[a]);
        let gone = row("a1", "a", "terminated", false, false);
        r.look(100, &look(vec![], None), std::slice::from_ref(&gone));
        let b = row("b1", "b", "running", true, true);
        r.look(20_000, &look(vec![b.clone()], Some("b1")), &[gone, b]);
        let inv = r.invariants();
        assert_eq!(inv["leader_retired"], 1, "{inv}");
        assert_eq!(inv["quorum_lost_count"], 1, "{inv}");
        assert_eq!(r.longest_leaderless_ms, 19_900);
    }
}
