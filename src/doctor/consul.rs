//! The Consul side of `rehydrator doctor`: can rehydrator reach the cluster, which way will it
//! move leadership, will autopilot promote and clean up in time, is the cluster healthy now,
//! and may the token make the calls a rollout makes. Read by [`gather`] without changing
//! anything; judged by [`check`].
//!
//! The token's rights are read where reading proves them: `acl/token/self` (a management
//! token may do anything), the reads a rollout makes, and a key write under the cluster's
//! prefix with a `cas` no key can match (Consul checks the ACL first, then refuses the write
//! on the index: nothing is stored). Session, service and operator writes cannot be proved
//! without making one, so they are listed with the policy that grants them
//! (`deploy/consul-acl-policy.hcl`).

use std::time::Duration;

use super::{not, ok, Finding, Level};
use crate::cloud::consul_version::Version;
use crate::consul::acl::TokenSelf;
use crate::consul::{
    AutopilotConfiguration, AutopilotHealth, Client, ConsulError, KvPutOptions, QueryOptions,
};

/// The first release with `/v1/operator/raft/transfer-leader`.
const TRANSFER_SINCE: Version = Version::new(1, 15, 0);
/// The oldest release rehydrator is tested against.
const OLDEST_TESTED: Version = Version::new(1, 8, 0);
/// Time a new server needs beyond autopilot's stabilization before it votes: joining, its
/// first health checks, and a rollout's poll.
const PROMOTION_SLACK: Duration = Duration::from_secs(30);
/// The key the write probe aims at (under the cluster's prefix), and the index it names: no
/// key's ModifyIndex is this, so the write is refused after the ACL check.
const PROBE_KEY: &str = "doctor-write-probe";
const PROBE_CAS: u64 = u64::MAX;

/// What the cluster answered, each read on its own: one refused read must not hide the others.
#[derive(Debug, Clone)]
pub struct ConsulFacts {
    pub address: String,
    /// The leader's address; `Err` when Consul did not answer.
    pub leader: Result<Option<String>, String>,
    /// The agent rehydrator talks to.
    pub agent_version: Option<String>,
    pub autopilot: Option<Result<AutopilotConfiguration, String>>,
    pub health: Option<Result<AutopilotHealth, String>>,
    /// Voters in the Raft configuration, or why it could not be read.
    pub voters: Option<Result<usize, String>>,
    /// The servers `/v1/agent/members` lists, with the version each advertises (its `build`
    /// tag): none when the token lacks `node:read` (Consul filters the list, it does not
    /// refuse it).
    pub member_servers: Option<Result<Vec<(String, String)>, String>>,
    pub token: Option<Result<TokenFacts, String>>,
    /// Reading the cluster's keys.
    pub kv_read: Option<Result<(), String>>,
    /// Writing under the cluster's prefix (the refused-`cas` probe).
    pub kv_write: Option<Result<(), String>>,
}

impl ConsulFacts {
    /// Only the first question asked: who leads.
    pub fn answered(address: &str, leader: Result<Option<String>, String>) -> Self {
        Self {
            address: address.to_owned(),
            leader,
            agent_version: None,
            autopilot: None,
            health: None,
            voters: None,
            member_servers: None,
            token: None,
            kv_read: None,
            kv_write: None,
        }
    }
}

/// The token, as far as it may see itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFacts {
    AclsDisabled,
    Token {
        management: bool,
        /// Policy and role names, for the report.
        names: Vec<String>,
        /// Whether it may read its own policies (`acl = "read"` at least): without it, it
        /// cannot take a snapshot, which needs `acl = "write"`.
        reads_acls: bool,
    },
}

/// What the configuration asks of the cluster.
#[derive(Debug, Clone)]
pub struct Expect {
    pub cluster: String,
    /// `cluster.desired_servers`, when a configuration names it.
    pub desired_servers: Option<u32>,
    /// `rollout.stable_timeout`: how long a new server may take to become a healthy voter.
    pub stable_timeout: Duration,
    /// `rollout.snapshot_dir` set, and whether a failed snapshot stops the step.
    pub snapshots: Option<bool>,
}

fn text(e: ConsulError) -> String {
    e.to_string()
}

/// Reads every fact, stopping early only when Consul does not answer at all.
pub async fn gather(client: &Client, cluster: &str) -> ConsulFacts {
    let mut f = ConsulFacts::answered(client.address(), client.status_leader().await.map_err(text));
    if f.leader.is_err() {
        return f;
    }
    let opts = QueryOptions::default();
    f.agent_version = client
        .agent_self()
        .await
        .ok()
        .map(|a| a.config.version)
        .filter(|v| !v.is_empty());
    f.autopilot = Some(client.autopilot_configuration(&opts).await.map_err(text));
    f.health = Some(client.autopilot_health(&opts).await.map_err(text));
    f.voters = Some(
        client
            .raft_configuration(&opts)
            .await
            .map(|r| r.voters())
            .map_err(text),
    );
    f.member_servers = Some(
        client
            .agent_members(false)
            .await
            .map(|m| {
                m.iter()
                    .filter(|m| m.is_server())
                    .map(|m| {
                        let build = m.tags.get("build").cloned().unwrap_or_default();
                        (m.name.clone(), build)
                    })
                    .collect()
            })
            .map_err(text),
    );
    f.token = Some(read_token(client).await);
    let prefix = format!("rehydrator/{cluster}/");
    f.kv_read = Some(
        client
            .kv_keys(&prefix, None, &opts)
            .await
            .map(|_| ())
            .map_err(text),
    );
    let probe = KvPutOptions {
        cas: Some(PROBE_CAS),
        ..KvPutOptions::default()
    };
    f.kv_write = Some(
        match client
            .kv_put(&format!("{prefix}{PROBE_KEY}"), b"", &probe)
            .await
        {
            Ok(false) => Ok(()),
            Ok(true) => Err(format!(
                "the probe key {prefix}{PROBE_KEY} was written: it should have been refused on \
                 its index"
            )),
            Err(e) => Err(text(e)),
        },
    );
    f
}

async fn read_token(client: &Client) -> Result<TokenFacts, String> {
    match client.acl_token_self().await.map_err(text)? {
        TokenSelf::Disabled => Ok(TokenFacts::AclsDisabled),
        TokenSelf::Token(t) => {
            let reads_acls = match t.policies.first() {
                Some(p) => client.acl_policy_readable(&p.id).await.map_err(text)?,
                None => false,
            };
            Ok(TokenFacts::Token {
                management: t.is_management(),
                names: t
                    .policies
                    .iter()
                    .chain(&t.roles)
                    .map(|l| l.name.clone())
                    .chain(
                        t.service_identities
                            .iter()
                            .map(|s| format!("service identity {}", s.service_name)),
                    )
                    .collect(),
                reads_acls: reads_acls || t.is_management(),
            })
        }
    }
}

/// Every finding, in the order an operator fixes them.
pub fn check(f: &ConsulFacts, e: &Expect) -> Vec<Finding> {
    let mut out = Vec::new();
    match &f.leader {
        Err(why) => {
            out.push(not(
                "consul",
                Level::Fail,
                why.clone(),
                "point [consul] address (or CONSUL_HTTP_ADDR) at an agent of the cluster, \
                 with its TLS settings"
                    .into(),
            ));
            return out;
        }
        Ok(None) => out.push(not(
            "consul",
            Level::Fail,
            format!("{}: the cluster has no leader", f.address),
            "restore quorum first: a rollout never starts without a leader".into(),
        )),
        Ok(Some(leader)) => out.push(ok(
            "consul",
            format!("{} answers; the leader is {leader}", f.address),
        )),
    }
    out.extend(rights(f, e));
    out.extend(versions(f));
    out.extend(autopilot(f, e));
    out.extend(health(f, e));
    out
}

/// Versions, and the way leadership will move off a server to retire.
fn versions(f: &ConsulFacts) -> Vec<Finding> {
    // Autopilot's view first; right after an election it has judged no server yet, and the
    // servers' gossip tags say the same.
    let from_health: Vec<(&str, &str)> = match &f.health {
        Some(Ok(h)) => h
            .servers
            .iter()
            .map(|s| (s.name.as_str(), s.version.as_str()))
            .collect(),
        _ => Vec::new(),
    };
    let from_members: Vec<(&str, &str)> = match &f.member_servers {
        Some(Ok(m)) => m.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
        _ => Vec::new(),
    };
    let seen = if from_health.is_empty() {
        from_members
    } else {
        from_health
    };
    if seen.is_empty() {
        return Vec::new();
    }
    let parsed: Vec<(&str, Option<Version>)> =
        seen.iter().map(|(n, v)| (*n, Version::parse(v))).collect();
    let mut out = Vec::new();
    let mut listed: Vec<String> = parsed
        .iter()
        .map(|(n, v)| match v {
            Some(v) => format!("{n} {v}"),
            None => format!("{n} (version unknown)"),
        })
        .collect();
    listed.sort();
    let agent = f.agent_version.as_deref().unwrap_or("unknown");
    let old: Vec<&str> = parsed
        .iter()
        .filter(|(_, v)| v.is_none_or(|v| v < OLDEST_TESTED))
        .map(|(n, _)| *n)
        .collect();
    if old.is_empty() {
        out.push(ok(
            "version",
            format!("agent {agent}; servers: {}", listed.join(", ")),
        ));
    } else {
        out.push(not(
            "version",
            Level::Warning,
            format!(
                "agent {agent}; servers: {}; {} older than {OLDEST_TESTED} or unknown",
                listed.join(", "),
                old.join(", ")
            ),
            format!("rehydrator is tested from Consul {OLDEST_TESTED}: upgrade those first"),
        ));
    }
    let before_transfer: Vec<&str> = parsed
        .iter()
        .filter(|(_, v)| v.is_none_or(|v| v < TRANSFER_SINCE))
        .map(|(n, _)| *n)
        .collect();
    out.push(ok(
        "leadership",
        if before_transfer.is_empty() {
            format!(
                "every server is {TRANSFER_SINCE} or newer: leadership moves by \
                 transfer-leader before the leader is retired"
            )
        } else {
            format!(
                "{} older than {TRANSFER_SINCE}: a leader to retire leaves gracefully and the \
                 others elect (a few seconds without a leader)",
                before_transfer.join(", ")
            )
        },
    ));
    out
}

fn autopilot(f: &ConsulFacts, e: &Expect) -> Vec<Finding> {
    let c = match &f.autopilot {
        None => return Vec::new(),
        Some(Err(why)) => {
            return vec![not(
                "autopilot",
                Level::Fail,
                format!("its configuration could not be read: {why}"),
                "grant the token operator = \"read\"".into(),
            )]
        }
        Some(Ok(c)) => c,
    };
    let size = e
        .desired_servers
        .map(|d| d as usize)
        .or(f.voters.as_ref().and_then(|v| v.as_ref().ok().copied()));
    let mut out = Vec::new();
    out.push(if c.cleanup_dead_servers {
        ok(
            "autopilot.cleanup_dead_servers",
            "on: a server that dies is removed from Raft".into(),
        )
    } else {
        not(
            "autopilot.cleanup_dead_servers",
            Level::Warning,
            "off: a server that dies mid-rollout stays a voter and raises the quorum until \
             someone removes it"
                .into(),
            "consul operator autopilot set-config -cleanup-dead-servers=true".into(),
        )
    });
    if let Some(size) = size {
        let quorum = size / 2 + 1;
        let min = c.min_quorum as usize;
        out.push(if min == 0 {
            not(
                "autopilot.min_quorum",
                Level::Warning,
                format!(
                    "not set: dead-server cleanup may shrink the {size}-server cluster below \
                     the size it is meant to have"
                ),
                format!("consul operator autopilot set-config -min-quorum={size}"),
            )
        } else if min > size {
            not(
                "autopilot.min_quorum",
                Level::Warning,
                format!("{min} is more than the {size} servers: dead servers are never cleaned up"),
                format!("consul operator autopilot set-config -min-quorum={size}"),
            )
        } else if min < quorum {
            not(
                "autopilot.min_quorum",
                Level::Warning,
                format!("{min} is less than a quorum of {size} servers ({quorum})"),
                format!("consul operator autopilot set-config -min-quorum={size}"),
            )
        } else {
            ok("autopilot.min_quorum", format!("{min} for {size} servers"))
        });
    }
    let stabilization = c.server_stabilization_time;
    let needs = stabilization + PROMOTION_SLACK;
    let human = |d: Duration| humantime::format_duration(d).to_string();
    out.push(if e.stable_timeout <= stabilization {
        not(
            "autopilot.server_stabilization_time",
            Level::Fail,
            format!(
                "{}: no new server can become a voter within rollout.stable_timeout ({}), \
                 so every launch fails",
                human(stabilization),
                human(e.stable_timeout)
            ),
            format!(
                "set rollout.stable_timeout to at least {}",
                human(needs * 2)
            ),
        )
    } else if e.stable_timeout < needs {
        not(
            "autopilot.server_stabilization_time",
            Level::Warning,
            format!(
                "{}: with joining and health checks a new server needs about {}, more than \
                 rollout.stable_timeout ({})",
                human(stabilization),
                human(needs),
                human(e.stable_timeout)
            ),
            format!(
                "set rollout.stable_timeout to at least {}",
                human(needs * 2)
            ),
        )
    } else {
        ok(
            "autopilot.server_stabilization_time",
            format!(
                "{}, well within rollout.stable_timeout ({})",
                human(stabilization),
                human(e.stable_timeout)
            ),
        )
    });
    out
}

fn health(f: &ConsulFacts, e: &Expect) -> Vec<Finding> {
    let h = match &f.health {
        None => return Vec::new(),
        Some(Err(why)) => {
            return vec![not(
                "health",
                Level::Fail,
                format!("autopilot's health could not be read: {why}"),
                "grant the token operator = \"read\"".into(),
            )]
        }
        Some(Ok(h)) => h,
    };
    let voters = h.servers.iter().filter(|s| s.voter).count();
    let mut out = Vec::new();
    if h.servers.is_empty() {
        // Consul's autopilot judges the servers every few seconds after a leader is elected;
        // until then it reports unhealthy with no server, which is not news about the cluster.
        out.push(not(
            "health",
            Level::Warning,
            "autopilot has judged no server yet (it does within seconds of an election)".into(),
            "run rehydrator doctor again in a few seconds".into(),
        ));
        return out;
    }
    if !h.healthy {
        let sick: Vec<&str> = h
            .servers
            .iter()
            .filter(|s| !s.healthy)
            .map(|s| s.name.as_str())
            .collect();
        out.push(not(
            "health",
            Level::Fail,
            format!(
                "autopilot says the cluster is unhealthy (unhealthy: {}): a rollout waits \
                 until it is healthy",
                if sick.is_empty() {
                    "none named".to_owned()
                } else {
                    sick.join(", ")
                }
            ),
            "consul operator autopilot state (1.9+) or consul members: bring the servers back"
                .into(),
        ));
    } else if h.failure_tolerance == 0 && voters > 1 {
        out.push(not(
            "health",
            Level::Warning,
            format!("healthy, but {voters} voters tolerate no failure"),
            "run an odd number of servers, 3 or more".into(),
        ));
    } else {
        out.push(ok(
            "health",
            format!(
                "healthy; {voters} voters, failure tolerance {}",
                h.failure_tolerance
            ),
        ));
    }
    if let Some(desired) = e.desired_servers {
        if voters != desired as usize {
            out.push(not(
                "cluster.desired_servers",
                Level::Warning,
                format!("{desired} configured, {voters} voters in the cluster"),
                "set cluster.desired_servers to the cluster's size".into(),
            ));
        }
    }
    out
}

/// The token's rights, as far as they can be proved without changing anything.
fn rights(f: &ConsulFacts, e: &Expect) -> Vec<Finding> {
    let Some(token) = &f.token else {
        return Vec::new();
    };
    let facts = match token {
        Err(why) => {
            return vec![not(
                "acl.token",
                Level::Fail,
                why.clone(),
                "set [consul] token (or CONSUL_HTTP_TOKEN) to a token Consul knows".into(),
            )]
        }
        Ok(t) => t,
    };
    let policy = "grant the policy in deploy/consul-acl-policy.hcl";
    let mut out = Vec::new();
    let (management, reads_acls) = match facts {
        TokenFacts::AclsDisabled => {
            out.push(ok(
                "acl.token",
                "ACLs are off: every call is allowed".into(),
            ));
            (true, true)
        }
        TokenFacts::Token {
            management: true, ..
        } => {
            out.push(not(
                "acl.token",
                Level::Warning,
                "a management token: every call is allowed, and far more than rehydrator \
                 needs"
                    .into(),
                format!("{policy} to a token of its own"),
            ));
            (true, true)
        }
        TokenFacts::Token {
            names, reads_acls, ..
        } => {
            out.push(ok(
                "acl.token",
                format!(
                    "linked to {}",
                    if names.is_empty() {
                        "nothing".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
            (false, *reads_acls)
        }
    };
    let mut refused = Vec::new();
    if let Some(Ok(servers)) = &f.member_servers {
        if servers.is_empty() {
            refused.push(
                "node read (gossip members): no server listed, so node:read is missing".into(),
            );
        }
    }
    if let Some(Err(why)) = &f.member_servers {
        refused.push(format!("node read (gossip members): {why}"));
    }
    if let Some(Err(why)) = &f.voters {
        refused.push(format!("operator read (Raft configuration): {why}"));
    }
    let prefix = format!("rehydrator/{}/", e.cluster);
    if let Some(Err(why)) = &f.kv_read {
        refused.push(format!("key read under {prefix}: {why}"));
    }
    if let Some(Err(why)) = &f.kv_write {
        refused.push(format!("key write under {prefix}: {why}"));
    }
    if !refused.is_empty() {
        out.push(not(
            "acl.rights",
            Level::Fail,
            refused.join("; "),
            policy.to_owned(),
        ));
    } else if management {
        out.push(ok(
            "acl.rights",
            "every call rehydrator makes is allowed".into(),
        ));
    } else {
        out.push(not(
            "acl.rights",
            Level::Warning,
            format!(
                "operator and node reads and key writes under {prefix} are allowed; session \
                 write, service \"rehydrator\" write (the liveness check) and operator write \
                 (transfer-leader, from Consul 1.15) cannot be checked without making \
                 one"
            ),
            format!("make sure the token has them: {policy}"),
        ));
    }
    if let Some(required) = e.snapshots {
        if !management {
            let level = if required {
                Level::Fail
            } else {
                Level::Warning
            };
            let then = if required {
                "every step stops on it"
            } else {
                "the steps go on without one (rollout.snapshot_required = false)"
            };
            out.push(if reads_acls {
                not(
                    "acl.snapshot",
                    Level::Warning,
                    "a snapshot needs acl = \"write\"; the token reads ACLs, whether it \
                     writes them cannot be checked"
                        .into(),
                    "give the token acl = \"write\" (a snapshot needs it)".into(),
                )
            } else {
                not(
                    "acl.snapshot",
                    level,
                    format!(
                        "rollout.snapshot_dir is set, but the token cannot even read ACLs and \
                         a snapshot needs acl = \"write\": Consul will refuse it and {then}"
                    ),
                    "give the token acl = \"write\", or unset rollout.snapshot_dir".into(),
                )
            });
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::consul::ServerHealth;

    fn server(name: &str, version: &str, healthy: bool) -> ServerHealth {
        ServerHealth {
            name: name.into(),
            version: version.into(),
            healthy,
            voter: true,
            ..ServerHealth::default()
        }
    }

    fn healthy(versions: &[&str]) -> ConsulFacts {
        let servers: Vec<ServerHealth> = versions
            .iter()
            .enumerate()
            .map(|(i, v)| server(&format!("s{i}"), v, true))
            .collect();
        let n = servers.len();
        ConsulFacts {
            address: "http://127.0.0.1:8500".into(),
            leader: Ok(Some("10.0.0.1:8300".into())),
            agent_version: Some(versions[0].into()),
            autopilot: Some(Ok(AutopilotConfiguration {
                min_quorum: n as u32,
                ..AutopilotConfiguration::default()
            })),
            health: Some(Ok(AutopilotHealth {
                healthy: true,
                failure_tolerance: ((n - 1) / 2) as u32,
                servers,
            })),
            voters: Some(Ok(n)),
            member_servers: Some(Ok(versions
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("s{i}"), format!("{v}:")))
                .collect())),
            token: Some(Ok(TokenFacts::AclsDisabled)),
            kv_read: Some(Ok(())),
            kv_write: Some(Ok(())),
        }
    }

    fn expect() -> Expect {
        Expect {
            cluster: "prod".into(),
            desired_servers: Some(3),
            stable_timeout: Duration::from_secs(600),
            snapshots: None,
        }
    }

    fn level(findings: &[Finding], check: &str) -> Option<Level> {
        findings.iter().find(|f| f.check == check).map(|f| f.level)
    }

    fn worst(findings: &[Finding]) -> Level {
        if findings.iter().any(|f| f.level == Level::Fail) {
            Level::Fail
        } else if findings.iter().any(|f| f.level == Level::Warning) {
            Level::Warning
        } else {
            Level::Ok
        }
    }

    #[test]
    fn a_well_set_cluster_without_acls_is_all_ok() {
        let out = check(&healthy(&["1.8.7", "1.8.7", "1.8.7"]), &expect());
        assert_eq!(worst(&out), Level::Ok, "{out:#?}");
    }

    #[test]
    fn unreachable_consul_is_the_only_finding() {
        let f = ConsulFacts::answered("http://x", Err("Consul at http://x is unreachable".into()));
        let out = check(&f, &expect());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].level, Level::Fail);
    }

    #[test]
    fn the_leadership_path_follows_the_oldest_server() {
        let detail = |versions: &[&str]| {
            check(&healthy(versions), &expect())
                .into_iter()
                .find(|f| f.check == "leadership")
                .unwrap()
                .detail
        };
        assert!(detail(&["1.15.2", "1.16.0", "1.21.3"]).contains("transfer-leader"));
        let mixed = detail(&["1.15.2", "1.14.9", "1.16.0"]);
        assert!(mixed.contains("s1 older than 1.15.0"), "{mixed}");
        assert!(mixed.contains("leaves gracefully"), "{mixed}");
    }

    #[test]
    fn autopilot_settings_that_strand_a_rollout_are_named() {
        let mut f = healthy(&["1.8.7", "1.8.7", "1.8.7"]);
        if let Some(Ok(c)) = &mut f.autopilot {
            c.cleanup_dead_servers = false;
            c.min_quorum = 0;
        }
        let out = check(&f, &expect());
        assert_eq!(
            level(&out, "autopilot.cleanup_dead_servers"),
            Some(Level::Warning)
        );
        let min = out
            .iter()
            .find(|f| f.check == "autopilot.min_quorum")
            .unwrap();
        assert_eq!(min.level, Level::Warning);
        assert!(min.fix.as_deref().unwrap().contains("-min-quorum=3"));

        let short = Expect {
            stable_timeout: Duration::from_secs(10),
            ..expect()
        };
        assert_eq!(
            level(&check(&f, &short), "autopilot.server_stabilization_time"),
            Some(Level::Fail)
        );
        let tight = Expect {
            stable_timeout: Duration::from_secs(30),
            ..expect()
        };
        assert_eq!(
            level(&check(&f, &tight), "autopilot.server_stabilization_time"),
            Some(Level::Warning)
        );
    }

    #[test]
    fn before_autopilot_judges_versions_come_from_gossip_and_health_waits() {
        let mut f = healthy(&["1.8.7", "1.8.7", "1.8.7"]);
        if let Some(Ok(h)) = &mut f.health {
            h.healthy = false;
            h.servers.clear();
        }
        let out = check(&f, &expect());
        assert_eq!(level(&out, "health"), Some(Level::Warning));
        let path = out.iter().find(|f| f.check == "leadership").unwrap();
        assert!(
            path.detail.contains("s0, s1, s2 older than 1.15.0"),
            "{}",
            path.detail
        );
    }

    #[test]
    fn an_unhealthy_cluster_fails_and_names_the_sick_server() {
        let mut f = healthy(&["1.8.7", "1.8.7", "1.8.7"]);
        if let Some(Ok(h)) = &mut f.health {
            h.healthy = false;
            h.servers[2].healthy = false;
        }
        let out = check(&f, &expect());
        let h = out.iter().find(|f| f.check == "health").unwrap();
        assert_eq!(h.level, Level::Fail);
        assert!(h.detail.contains("s2"), "{}", h.detail);
    }

    #[test]
    fn a_filtered_member_list_and_a_refused_write_fail_the_rights() {
        let mut f = healthy(&["1.8.7", "1.8.7", "1.8.7"]);
        f.token = Some(Ok(TokenFacts::Token {
            management: false,
            names: vec!["rh".into()],
            reads_acls: false,
        }));
        f.member_servers = Some(Ok(Vec::new()));
        f.kv_write = Some(Err("Consul answered 403 ...: ACL token refused".into()));
        let out = check(&f, &expect());
        let r = out.iter().find(|f| f.check == "acl.rights").unwrap();
        assert_eq!(r.level, Level::Fail);
        assert!(r.detail.contains("node:read"), "{}", r.detail);
        assert!(r.detail.contains("key write under rehydrator/prod/"));
    }

    #[test]
    fn a_token_that_cannot_write_acls_fails_required_snapshots_only() {
        let mut f = healthy(&["1.8.7", "1.8.7", "1.8.7"]);
        f.token = Some(Ok(TokenFacts::Token {
            management: false,
            names: vec!["rh".into()],
            reads_acls: false,
        }));
        let with = |required| Expect {
            snapshots: Some(required),
            ..expect()
        };
        assert_eq!(
            level(&check(&f, &with(true)), "acl.snapshot"),
            Some(Level::Fail)
        );
        assert_eq!(
            level(&check(&f, &with(false)), "acl.snapshot"),
            Some(Level::Warning)
        );
        assert_eq!(level(&check(&f, &expect()), "acl.snapshot"), None);
        // Only the writes that cannot be proved are left to the operator.
        assert_eq!(
            level(&check(&f, &expect()), "acl.rights"),
            Some(Level::Warning)
        );
    }
}
