//! Decisions as plain functions over the servers: quorum, failure tolerance, who wins an
//! election, which dead servers autopilot may remove, where leadership may be transferred.
//! Tested without HTTP or timers.

use std::time::SystemTime;

use crate::cluster::server::{SerfStatus, Server};

/// Why a leadership transfer failed, worded as Consul / Raft word it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("No cluster leader")]
    NoLeader,
    #[error("Could not find address for server id {0}")]
    UnknownServer(String),
    #[error("cannot transfer leadership to itself")]
    ToItself,
    #[error("cannot find peer")]
    NoPeer,
    #[error("leadership transfer timeout")]
    Timeout,
}

/// Votes needed for a majority of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// Voters in the Raft configuration.
pub fn voters(servers: &[Server]) -> usize {
    servers.iter().filter(|s| s.in_raft && s.voter).count()
}

/// Voters that are not running or cannot be reached.
pub fn voters_missing(servers: &[Server]) -> usize {
    servers
        .iter()
        .filter(|s| s.in_raft && s.voter && !s.reachable())
        .count()
}

/// Enough live, reachable voters for a majority.
pub fn has_quorum(servers: &[Server]) -> bool {
    let v = voters(servers);
    v > 0 && servers.iter().filter(|s| s.live_voter()).count() >= quorum(v)
}

/// Autopilot's FailureTolerance: healthy voters beyond quorum.
pub fn failure_tolerance(servers: &[Server]) -> usize {
    let v = voters(servers);
    let healthy = servers.iter().filter(|s| s.voter && s.healthy()).count();
    healthy.saturating_sub(quorum(v))
}

/// Autopilot's overall health: every server in the configuration healthy.
pub fn cluster_healthy(servers: &[Server]) -> bool {
    servers.iter().filter(|s| s.in_raft).all(Server::healthy)
}

/// Who wins an election: a reachable voter with the longest log, if a quorum can vote.
pub fn elect(servers: &[Server]) -> Option<usize> {
    if !has_quorum(servers) {
        return None;
    }
    servers
        .iter()
        .enumerate()
        .filter(|(_, s)| s.live_voter())
        .max_by(|(ia, a), (ib, b)| a.last_index.cmp(&b.last_index).then(ib.cmp(ia)))
        .map(|(i, _)| i)
}

/// Which failed servers autopilot may remove, as raft-autopilot adjudicates: non-voters first,
/// then voters; never more than (potential voters − 1) / 2 voters per batch, never below
/// `min_quorum`.
pub fn prunable(servers: &[Server], min_quorum: usize) -> Vec<usize> {
    let mut potential = servers.iter().filter(|s| s.in_raft).count();
    let mut out = Vec::new();
    for want_voters in [false, true] {
        let mut batch: Vec<usize> = servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.in_raft && s.serf == SerfStatus::Failed && s.voter == want_voters)
            .map(|(i, _)| i)
            .collect();
        batch.sort_by(|a, b| servers[*a].id.cmp(&servers[*b].id));
        let initial = potential;
        let mut max_removal = initial.saturating_sub(1) / 2;
        let mut removed = 0;
        for i in batch {
            if initial.saturating_sub(removed + 1) < min_quorum {
                continue;
            }
            if servers[i].voter && max_removal < 1 {
                continue;
            }
            max_removal = max_removal.saturating_sub(1);
            removed += 1;
            out.push(i);
        }
        potential -= removed;
    }
    out
}

/// Where a leadership transfer goes: `id` if it can lead, else the best other live voter.
pub fn pick_transfer_target(
    servers: &[Server],
    leader: Option<&str>,
    id: Option<&str>,
) -> Result<String, TransferError> {
    let leader = leader.ok_or(TransferError::NoLeader)?;
    match id.filter(|i| !i.is_empty()) {
        Some(id) => {
            let s = servers
                .iter()
                .find(|s| s.id == id && s.in_raft && s.serf == SerfStatus::Alive)
                .ok_or_else(|| TransferError::UnknownServer(id.to_owned()))?;
            if s.name == leader {
                return Err(TransferError::ToItself);
            }
            if !s.live_voter() {
                return Err(TransferError::Timeout);
            }
            Ok(s.name.clone())
        }
        None => servers
            .iter()
            .filter(|s| s.live_voter() && s.name != leader)
            .max_by(|a, b| a.last_index.cmp(&b.last_index))
            .map(|s| s.name.clone())
            .ok_or(TransferError::NoPeer),
    }
}

/// Formats a wall-clock time as RFC 3339 in UTC (Go's `time.Time` JSON), whole seconds when
/// `round` (autopilot health rounds StableSince), else with nanoseconds trimmed of zeros.
pub fn rfc3339(t: SystemTime, round: bool) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut secs = d.as_secs() as i64;
    let mut nanos = d.subsec_nanos();
    if round {
        if nanos >= 500_000_000 {
            secs += 1;
        }
        nanos = 0;
    }
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    let frac = if nanos == 0 {
        String::new()
    } else {
        let f = format!("{nanos:09}");
        format!(".{}", f.trim_end_matches('0'))
    };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}{frac}Z")
}
