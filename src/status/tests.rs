#![allow(clippy::unwrap_used)]

use rehydrator_actors::plan::{Rollout, RolloutState};
use rehydrator_actors::ports::{ClusterHealth, Machine, MachineState};
use rehydrator_actors::receipt::Receipt;

use crate::consul::KvPair;

use super::gather::*;
use super::model::*;
use super::render::*;
use rehydrator_actors::plan::StepRecord;
use rehydrator_actors::ports::PeerHealth;
use rehydrator_actors::receipt::Outcome;

fn machine(id: &str, image: &str, launched_at: u64) -> Machine {
    Machine {
        id: format!("i-{id}"),
        image: image.into(),
        launched_at,
        state: MachineState::Running,
        address: Some(format!("10.0.0.{launched_at}")),
        zone: None,
        node: Some(id.into()),
        token: None,
        reason: None,
    }
}

fn peer(name: &str, leader: bool, voter: bool) -> PeerHealth {
    PeerHealth {
        id: format!("raft-{name}"),
        name: name.into(),
        address: "10.9.9.9:8300".into(),
        serf_status: "alive".into(),
        leader,
        voter,
        healthy: voter,
        stable_since_ms: None,
    }
}

fn health() -> ClusterHealth {
    ClusterHealth {
        healthy: true,
        failure_tolerance: 1,
        servers: vec![
            peer("s1", false, true),
            peer("s2", true, true),
            peer("n1", false, false),
        ],
    }
}

#[test]
fn cloud_machines_join_their_peers_oldest_first() {
    let machines = vec![
        machine("n1", "B", 5_000),
        machine("s2", "A", 2_000),
        machine("s1", "A", 1_000),
    ];
    let servers = join_cloud(machines, &health(), Some("B"), 65_000);
    let nodes: Vec<&str> = servers.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(nodes, ["s1", "s2", "n1"]);
    assert_eq!(servers[0].machine.as_deref(), Some("i-s1"));
    assert_eq!(servers[0].age_secs, Some(64));
    assert_eq!(servers[0].outdated, Some(true));
    assert!(servers[1].leader && servers[1].voter);
    // The new one is in Raft, not yet a voter, on the newest image.
    assert!(servers[2].in_raft && !servers[2].voter);
    assert_eq!(servers[2].outdated, Some(false));
}

#[test]
fn a_peer_without_a_machine_and_a_machine_without_a_peer_both_show() {
    let machines = vec![machine("s1", "A", 1), machine("new", "B", 9)];
    let servers = join_cloud(machines, &health(), None, 10_000);
    let nodes: Vec<&str> = servers.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(nodes, ["s1", "new", "n1", "s2"]);
    let new = &servers[1];
    assert!(!new.in_raft && !new.healthy && new.serf_status.is_empty());
    let orphan = &servers[3];
    assert!(orphan.machine.is_none() && orphan.leader);
    assert!(servers.iter().all(|s| s.outdated.is_none()));
}

#[test]
fn catalog_nodes_take_their_image_from_node_meta() {
    let nodes = vec![
        ("s2".to_owned(), Some("A".to_owned())),
        ("s1".to_owned(), Some("B".to_owned())),
    ];
    let servers = join_catalog(&nodes, &health(), Some("B"));
    let nodes: Vec<&str> = servers.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(nodes, ["n1", "s1", "s2"]);
    assert_eq!(servers[1].outdated, Some(false));
    assert_eq!(servers[2].outdated, Some(true));
    assert!(servers[2].leader);
    assert_eq!(servers[0].image, None);
}

fn rollout(state: RolloutState) -> Rollout {
    let mut r = Rollout::start("r1".into(), "B", 1_700_000_000_000, 1);
    r.state = state;
    r.launches.push(StepRecord {
        machine: "i-n1".into(),
        at: 5,
        token: None,
        reason: None,
    });
    r.waiting = Some("new server n1 is not yet a stable voter".into());
    r
}

#[test]
fn progress_counts_servers_on_the_target_and_says_why_it_waits() {
    let servers = join_cloud(
        vec![machine("s1", "A", 1), machine("n1", "B", 5)],
        &health(),
        Some("B"),
        10,
    );
    let p = progress(&rollout(RolloutState::Active), &servers, Some(2));
    assert_eq!((p.on_target, p.total, p.launches), (1, 3, 1));
    // n1 is on the target but does not vote yet: nothing is replaced.
    assert_eq!((p.replaced, p.desired), (0, 2));
    assert_eq!(p.state, "active");
    assert!(p.waiting.as_deref().is_some_and(|w| w.contains("n1")));
    let stopped = progress(
        &rollout(RolloutState::Stopped {
            at: 9,
            reason: "n1 never got healthy".into(),
        }),
        &servers,
        None,
    );
    assert_eq!(stopped.state, "stopped");
    assert_eq!(stopped.waiting.as_deref(), Some("n1 never got healthy"));
    let done = progress(&rollout(RolloutState::Completed { at: 9 }), &servers, None);
    assert_eq!((done.state.as_str(), done.waiting), ("completed", None));
}

#[test]
fn the_pause_key_is_read_as_json_or_as_text() {
    let json = br#"{"by":"ops@host","reason":"change freeze","at":5}"#;
    let p = parse_pause(json);
    assert_eq!(p.by.as_deref(), Some("ops@host"));
    assert_eq!(p.reason.as_deref(), Some("change freeze"));
    assert_eq!(
        parse_pause(b" hold on \n").reason.as_deref(),
        Some("hold on")
    );
    assert_eq!(parse_pause(b""), PauseInfo::default());
}

fn kv(key: &str, value: &[u8], session: Option<&str>) -> KvPair {
    KvPair {
        key: key.into(),
        value: value.to_vec(),
        session: session.map(str::to_owned),
        lock_index: 3,
        ..KvPair::default()
    }
}

#[test]
fn a_lock_names_its_replica_from_the_value_or_the_session_name() {
    let value = br#"{"replica":"r-a","action":"spin-up","trigger_id":"42"}"#;
    let held = kv("rehydrator/prod/locks/step", value, Some("sess"));
    let l = lock_status("prod", &held, Some(("rehydrator prod r-a", "node-1")));
    assert_eq!(l.name, "step");
    assert_eq!(l.held_since, None, "a value from before `since` existed");
    assert_eq!(
        (l.replica.as_deref(), l.action.as_deref(), l.node.as_deref()),
        (Some("r-a"), Some("spin-up"), Some("node-1"))
    );
    let odd = kv("rehydrator/prod/locks/step", b"not json", Some("sess"));
    let l = lock_status("prod", &odd, Some(("rehydrator prod r-b", "node-2")));
    assert_eq!(l.replica.as_deref(), Some("r-b"));
    // Released: the value stays, but nobody holds it.
    let free = kv("rehydrator/prod/locks/step", value, None);
    let l = lock_status("prod", &free, None);
    assert_eq!((l.session, l.replica), (None, None));
}

fn receipt(action: &str, finished_at: u64) -> Receipt {
    Receipt {
        action: action.into(),
        trigger_id: format!("t{finished_at}"),
        watch: "w".into(),
        outcome: Outcome::Launched("i-1".into()),
        by: "r-a".into(),
        started_at: finished_at - 1,
        finished_at,
        lock_index: 1,
        attempts: 1,
        position: None,
    }
}

#[test]
fn the_newest_receipts_come_first_and_bad_ones_are_counted() {
    let entries = vec![
        kv("a/1", &receipt("spin-up", 10).to_bytes(), None),
        kv("a/2", &receipt("spin-down", 30).to_bytes(), None),
        kv("a/3", b"{", None),
        kv("a/4", &receipt("spin-up", 20).to_bytes(), None),
    ];
    let (latest, bad) = latest_receipts(&entries, 2);
    let at: Vec<u64> = latest.iter().map(|r| r.finished_at).collect();
    assert_eq!((at, bad), (vec![30, 20], 1));
}

#[test]
fn ages_show_the_two_largest_units() {
    assert_eq!(format_age(7), "7s");
    assert_eq!(format_age(366), "6m 6s");
    assert_eq!(format_age(3 * 3600 + 240), "3h 4m");
    assert_eq!(format_age(90_000), "1d 1h");
}

#[test]
fn the_human_view_shows_servers_rollout_locks_receipts_and_pause() {
    let servers = join_cloud(
        vec![machine("s1", "A", 1_000), machine("n1", "B", 5_000)],
        &health(),
        Some("B"),
        3_600_000,
    );
    let mut ro = rollout(RolloutState::Active);
    ro.waiting_since = Some(3_588_000);
    ro.snapshots = vec!["prod-r1-start-1.snap".into()];
    let report = StatusReport {
        cluster: "prod".into(),
        consul: "http://127.0.0.1:8500".into(),
        generated_at: 3_600_000,
        healthy: true,
        failure_tolerance: 1,
        leader: Some("s2".into()),
        newest_image: Some(ImageInfo {
            id: "B".into(),
            name: "b".into(),
            created: "2026-01-01T00:00:00Z".into(),
        }),
        source: ServerSource::Cloud,
        progress: Some(progress(&ro, &servers, None)),
        servers,
        rollout: Some(ro),
        rollout_error: None,
        locks: vec![lock_status(
            "prod",
            &kv(
                "rehydrator/prod/locks/step",
                br#"{"replica":"r-a","action":"spin-up","trigger_id":"42","since":3480000}"#,
                Some("sess"),
            ),
            Some(("rehydrator prod r-a", "node-1")),
        )],
        replicas: vec![
            ReplicaStatus {
                replica: "r-a".into(),
                node: "node-1".into(),
                check: "critical".into(),
                output: "TTL expired".into(),
            },
            ReplicaStatus {
                replica: "r-b".into(),
                node: "node-2".into(),
                check: "passing".into(),
                output: String::new(),
            },
        ],
        receipts: vec![receipt("spin-up", 1_700_000_000_000)],
        paused: true,
        pause: Some(PauseInfo {
            by: Some("ops".into()),
            // Text from Consul may carry terminal escapes: they are shown, not obeyed.
            reason: Some("freeze\u{1b}[2J\u{7}".into()),
            at: None,
        }),
        guard: Some(rehydrator_actors::guard::GuardRecord {
            at: 3_590_000,
            released: vec!["i-old1".into()],
            held: vec![(
                "i-old2".into(),
                "one at a time: i-old1 is still leaving Raft".into(),
            )],
        }),
        warnings: Vec::new(),
    };
    let text = render(&report);
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "control characters reach the terminal: {text:?}"
    );
    assert!(
        text.contains("paused: YES by ops: freeze\\u{1b}[2J\\u{7}"),
        "{text}"
    );
    for want in [
        "leader: s2",
        "newest image: B",
        "paused: YES by ops: freeze",
        "i-s1",
        "A (outdated)",
        "59m 59s",
        "rollout r1 to B: active",
        "1/3 servers on the target; 1 launched, 0 retired",
        "waiting (12s): new server n1 is not yet a stable voter",
        "step: held by r-a (node node-1) for 2m, running spin-up for trigger 42 [DEAD: liveness \
         check critical, TTL expired: Consul ends its session; another replica takes the lock \
         after lock-delay]",
        "replicas: r-a (DEAD: check critical, node node-1), r-b (alive, node node-2)",
        "last snapshot: prod-r1-start-1.snap (1 recorded; `consul snapshot restore` puts it back)",
        "2023-11-14T22:13:20Z  spin-up  t1700000000000  r-a  launched: i-1",
        "lifecycle guard (10s ago): released i-old1; holding",
        "  i-old2: one at a time: i-old1 is still leaving Raft",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // The JSON round-trips into the same report.
    let json = serde_json::to_string(&report).unwrap();
    let back: StatusReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, report);
}
