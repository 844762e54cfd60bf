//! What a finished rollout must show in the simulator's own record, as a list of broken
//! invariants (empty: it held). The demo's exit status comes from it, and the rollout tests
//! (`tests/common/rollout.rs`) assert it is empty, so the two check the same thing.
//!
//! Plain functions over the JSON the simulator serves (`/sim/invariants`, `/sim/servers`): the
//! simulator is the authority, not what the replicas say about themselves.

use serde_json::Value;

/// One broken invariant, worded for the operator reading the demo's last line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("quorum was lost {0} time(s)")]
    QuorumLost(u64),
    #[error("{0} voters were missing at once (at most 1 may be)")]
    VotersMissing(u64),
    #[error("the leader was retired while leading {0} time(s)")]
    LeaderRetired(u64),
    #[error("{found} machines existed at once; a rollout of {servers} launches one at a time, so {want}")]
    MaxServers {
        found: u64,
        want: u64,
        servers: usize,
    },
    #[error("the Raft configuration fell to {found} voters, below {want}")]
    MinVoters { found: u64, want: u64 },
    #[error("{found} servers are live at the end, not {want}")]
    LiveServers { found: usize, want: usize },
    #[error("{server} is live on {image}, not {target}")]
    NotOnTarget {
        server: String,
        image: String,
        target: String,
    },
    #[error("{0} is live but not a voter")]
    NotVoter(String),
    #[error("{found} machines were launched, not {want}")]
    Launches { found: usize, want: usize },
    #[error("{found} machines were terminated, not {want}")]
    Retirements { found: usize, want: usize },
    #[error("launch token {0} made more than one machine")]
    TokenReused(String),
    #[error("the simulator's record has no {0}")]
    Unreadable(&'static str),
    #[error("the rollout stopped: {0}")]
    Stopped(String),
    #[error("a new machine was failed, but the rollout record shows no failed launch")]
    FailedLaunchUnrecorded,
}

impl Violation {
    /// A short stable name for the invariant, for logs and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::QuorumLost(_) => "quorum_lost",
            Violation::VotersMissing(_) => "voters_missing",
            Violation::LeaderRetired(_) => "leader_retired",
            Violation::MaxServers { .. } => "max_servers",
            Violation::MinVoters { .. } => "min_voters",
            Violation::LiveServers { .. } => "live_servers",
            Violation::NotOnTarget { .. } => "not_on_target",
            Violation::NotVoter(_) => "not_voter",
            Violation::Launches { .. } => "launches",
            Violation::Retirements { .. } => "retirements",
            Violation::TokenReused(_) => "token_reused",
            Violation::Unreadable(_) => "unreadable",
            Violation::Stopped(_) => "stopped",
            Violation::FailedLaunchUnrecorded => "failed_launch_unrecorded",
        }
    }
}

/// What `/sim/invariants` must show after a rollout of `n` servers: quorum never lost, never
/// more than one voter missing, the leader never retired while leading, exactly one machine
/// beyond the desired count at worst (and at least one, or nothing was launched), never fewer
/// voters than desired.
pub fn check_invariants(inv: &Value, n: usize) -> Vec<Violation> {
    let mut out = Vec::new();
    let field = |name: &'static str| inv[name].as_u64().ok_or(Violation::Unreadable(name));
    match field("quorum_lost_count") {
        Ok(0) => {}
        Ok(c) => out.push(Violation::QuorumLost(c)),
        Err(e) => out.push(e),
    }
    match field("max_voters_missing") {
        Ok(m) if m <= 1 => {}
        Ok(m) => out.push(Violation::VotersMissing(m)),
        Err(e) => out.push(e),
    }
    match field("leader_retired") {
        Ok(0) => {}
        Ok(c) => out.push(Violation::LeaderRetired(c)),
        Err(e) => out.push(e),
    }
    let want = n as u64 + 1;
    match field("max_servers") {
        Ok(m) if m == want => {}
        Ok(found) => out.push(Violation::MaxServers {
            found,
            want,
            servers: n,
        }),
        Err(e) => out.push(e),
    }
    match field("min_voters") {
        Ok(m) if m >= n as u64 => {}
        Ok(found) => out.push(Violation::MinVoters {
            found,
            want: n as u64,
        }),
        Err(e) => out.push(e),
    }
    out
}

/// What `/sim/servers` must show after a rollout of `n` servers onto `target` in which
/// `failed` launches failed (their machines died before they joined): `n` live servers, all
/// on `target` and voting; exactly `n + failed` launches (each token made one machine) and
/// `n + failed` machines terminated.
pub fn check_servers(servers: &[Value], n: usize, target: &str, failed: usize) -> Vec<Violation> {
    let mut out = Vec::new();
    let live: Vec<&Value> = servers
        .iter()
        .filter(|s| s["machine"] != "terminated")
        .collect();
    if live.len() != n {
        out.push(Violation::LiveServers {
            found: live.len(),
            want: n,
        });
    }
    for s in &live {
        let name = s["name"].as_str().unwrap_or("?").to_owned();
        let image = s["image"].as_str().unwrap_or("?");
        if image != target {
            out.push(Violation::NotOnTarget {
                server: name.clone(),
                image: image.to_owned(),
                target: target.to_owned(),
            });
        }
        if s["voter"] != true {
            out.push(Violation::NotVoter(name));
        }
    }
    let mut tokens: Vec<&str> = servers.iter().filter_map(|s| s["token"].as_str()).collect();
    if tokens.len() != n + failed {
        out.push(Violation::Launches {
            found: tokens.len(),
            want: n + failed,
        });
    }
    tokens.sort_unstable();
    for pair in tokens.windows(2) {
        if pair[0] == pair[1] {
            out.push(Violation::TokenReused(pair[0].to_owned()));
        }
    }
    let terminated = servers
        .iter()
        .filter(|s| s["machine"] == "terminated")
        .count();
    if terminated != n + failed {
        out.push(Violation::Retirements {
            found: terminated,
            want: n + failed,
        });
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn clean_invariants() -> Value {
        json!({
            "quorum_lost_count": 0, "max_voters_missing": 1, "leader_retired": 0,
            "max_servers": 4, "min_voters": 3
        })
    }

    fn server(name: &str, image: &str, machine: &str, voter: bool, token: Option<&str>) -> Value {
        json!({"name": name, "image": image, "machine": machine, "voter": voter, "token": token})
    }

    fn rolled() -> Vec<Value> {
        vec![
            server("s1", "a", "terminated", false, None),
            server("s2", "a", "terminated", false, None),
            server("s3", "a", "terminated", false, None),
            server("s4", "b", "running", true, Some("t1")),
            server("s5", "b", "running", true, Some("t2")),
            server("s6", "b", "running", true, Some("t3")),
        ]
    }

    #[test]
    fn a_clean_rollout_breaks_nothing() {
        assert_eq!(check_invariants(&clean_invariants(), 3), []);
        assert_eq!(check_servers(&rolled(), 3, "b", 0), []);
        // One failed launch: a fourth token, a fourth machine terminated.
        let mut with_failure = rolled();
        with_failure.push(server("s7", "b", "terminated", false, Some("t4")));
        assert_eq!(check_servers(&with_failure, 3, "b", 1), []);
        let kinds: Vec<&str> = check_servers(&with_failure, 3, "b", 0)
            .iter()
            .map(|v| v.kind())
            .collect();
        assert_eq!(kinds, ["launches", "retirements"]);
    }

    #[test]
    fn each_broken_invariant_is_named() {
        let mut inv = clean_invariants();
        inv["quorum_lost_count"] = json!(1);
        inv["max_voters_missing"] = json!(2);
        inv["leader_retired"] = json!(1);
        inv["max_servers"] = json!(5);
        inv["min_voters"] = json!(2);
        let kinds: Vec<&str> = check_invariants(&inv, 3).iter().map(|v| v.kind()).collect();
        assert_eq!(
            kinds,
            [
                "quorum_lost",
                "voters_missing",
                "leader_retired",
                "max_servers",
                "min_voters"
            ]
        );
        // Nothing launched at all is not a rollout either.
        inv = clean_invariants();
        inv["max_servers"] = json!(3);
        assert_eq!(
            check_invariants(&inv, 3)[0].to_string(),
            "3 machines existed at once; a rollout of 3 launches one at a time, so 4"
        );
    }

    #[test]
    fn a_missing_field_is_a_violation_not_a_pass() {
        assert_eq!(
            check_invariants(&json!({}), 3),
            [
                Violation::Unreadable("quorum_lost_count"),
                Violation::Unreadable("max_voters_missing"),
                Violation::Unreadable("leader_retired"),
                Violation::Unreadable("max_servers"),
                Violation::Unreadable("min_voters"),
            ]
        );
    }

    #[test]
    fn servers_left_behind_or_launched_twice_are_named() {
        let mut s = rolled();
        s[2] = server("s3", "a", "running", true, None);
        s.push(server("s7", "b", "booting", false, Some("t3")));
        let kinds: Vec<&str> = check_servers(&s, 3, "b", 0)
            .iter()
            .map(|v| v.kind())
            .collect();
        assert_eq!(
            kinds,
            [
                "live_servers",
                "not_on_target",
                "not_voter",
                "launches",
                "token_reused",
                "retirements"
            ]
        );
    }
}
