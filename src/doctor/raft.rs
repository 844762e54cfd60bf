//! Raft against the cloud: the servers Raft counts that none of the cloud's machines accounts
//! for. A rollout is complete only once Raft lists no such server (each still counts towards
//! the quorum size), so one that never goes holds every rollout back.

use rehydrator_actors::ports::PeerHealth;

use super::{not, ok, Finding, Level};

/// The finding for `strays` (from `plan::unaccounted`), of `machines` live machines.
pub fn check(strays: &[&PeerHealth], machines: usize) -> Finding {
    if strays.is_empty() {
        return ok(
            "raft",
            format!("every server Raft lists is one of the cloud's {machines} live machines"),
        );
    }
    let named: Vec<String> = strays
        .iter()
        .take(5)
        .map(|p| format!("{} (ID {}, serf {})", p.name, p.id, p.serf_status))
        .collect();
    let more = strays.len().saturating_sub(named.len());
    not(
        "raft",
        Level::Warning,
        format!(
            "Raft lists {}{} that no machine of the cloud accounts for: each still counts \
             towards the quorum size, and a rollout waits for it to leave before it completes",
            named.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ),
        "a retired server still leaving goes by itself, and autopilot prunes a dead one \
         (CleanupDeadServers); one gone for good and never pruned: `consul operator raft \
         remove-peer -id=<ID>`. A live server the cloud does not manage (not tagged for the \
         cluster, or outside the group) is never rolled: bring it under the cloud or retire it"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, serf: &str) -> PeerHealth {
        PeerHealth {
            id: format!("id-{name}"),
            name: name.into(),
            address: "10.0.0.9:8300".into(),
            serf_status: serf.into(),
            leader: false,
            voter: true,
            healthy: false,
            stable_since_ms: None,
        }
    }

    #[test]
    fn none_is_ok_and_each_stray_is_named_with_its_id() {
        assert_eq!(check(&[], 3).level, Level::Ok);
        let gone = peer("old-1", "failed");
        let f = check(&[&gone], 3);
        assert_eq!(f.level, Level::Warning);
        assert!(
            f.detail.contains("old-1 (ID id-old-1, serf failed)"),
            "{}",
            f.detail
        );
        assert!(f
            .fix
            .is_some_and(|fix| fix.contains("remove-peer -id=<ID>")));
        let many: Vec<PeerHealth> = (0..7).map(|i| peer(&format!("s{i}"), "alive")).collect();
        let refs: Vec<&PeerHealth> = many.iter().collect();
        assert!(check(&refs, 3)
            .detail
            .contains("s4 (ID id-s4, serf alive) and 2 more"));
    }
}
