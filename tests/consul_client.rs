//! The Consul client over real HTTP, against the simulator (as its default Consul and as 1.8.7)
//! and real Consul (`CONSUL_BIN`: 3 servers and a client agent), the same checks for each
//! (`contract_suite!`): every endpoint round-trips, blocking queries wake on change and return
//! at their wait, locks contend, events wake watchers.
//! A few tests use a canned one-connection HTTP responder instead, for answers the simulator
//! cannot be made to give (an old Consul's 404, an agent that never answers).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rehydrator::consul::port::ConsulAdapter;
use rehydrator::consul::*;

use crate::common::target::Target;

// The destructive checks go last: on real Consul they share one cluster.
crate::contract_suite!(
    "client": kv_round_trips,
    blocking_kv_read_wakes_on_write_and_returns_at_wait,
    watch_state_drives_a_blocking_loop_against_the_simulator,
    sessions_round_trip,
    a_liveness_check_ends_its_session_when_no_longer_passed,
    a_snapshot_is_saved_whole_or_not_at_all,
    locks_contend_and_destroying_the_holder_releases,
    txn_acquires_checks_and_reads_in_one_round_trip,
    txn_answers_and_refusals,
    the_jobs_acquire_names_the_prior_holder,
    a_fenced_write_lands_only_while_its_lock_is_held,
    events_fire_list_and_wake_a_blocking_list,
    catalog_and_health_round_trip,
    agent_self_and_members,
    raft_status_and_autopilot,
    leadership_transfers_to_the_chosen_server,
    unknown_datacenter_is_a_status_error_naming_the_request,
    raft_peer_removal_by_address,
);

/// How long gossip (a fired event reaching the agent) or autopilot's first health pass may take.
const GOSSIP_BOUND: Duration = Duration::from_secs(10);

fn client_for(url: &str) -> Client {
    Client::new(ConsulConfig::with_address(url).unwrap()).unwrap()
}

fn plain() -> QueryOptions {
    QueryOptions::default()
}

// -------------------------------------------------------------------------------------------
// Canned responder

/// Serves up to `answers.len()` connections on an ephemeral loopback port, one canned raw
/// response each (sent after its delay), and sends back each request's text. Stops by itself
/// after the last answer or 10 seconds.
fn canned(answers: Vec<(Duration, String)>) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        for (delay, answer) in answers {
            let mut conn = loop {
                match listener.accept() {
                    Ok((conn, _)) => break conn,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => return,
                }
            };
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let request = read_request(&mut conn);
            let _ = tx.send(request);
            std::thread::sleep(delay);
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    (url, rx)
}

fn read_request(conn: &mut std::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = head_end {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn http(status: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out
}

// -------------------------------------------------------------------------------------------
// Real Consul's answers (fixtures from its docs and Go source) decode into the client's types

#[test]
fn consul_fixtures_decode_into_client_types() {
    fn decode<T: serde::de::DeserializeOwned>(name: &str, text: &str) -> T {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"))
    }
    let kv: Vec<KvPair> = decode("kv_get", include_str!("fixtures/consul/kv_get.json"));
    assert_eq!(kv[0].value, b"test");
    let keys: Vec<String> = decode("kv_keys", include_str!("fixtures/consul/kv_keys.json"));
    assert!(!keys.is_empty());
    let sessions: Vec<SessionEntry> = decode(
        "session_entry",
        include_str!("fixtures/consul/session_entry.json"),
    );
    assert_eq!(sessions[0].lock_delay, Duration::from_secs(15));
    assert_eq!(sessions[0].ttl, Some(Duration::from_secs(30)));
    let fired: UserEvent = decode(
        "event_fire",
        include_str!("fixtures/consul/event_fire.json"),
    );
    assert_eq!(fired.payload, None);
    let events: Vec<UserEvent> = decode(
        "event_list",
        include_str!("fixtures/consul/event_list.json"),
    );
    assert_eq!(events[0].payload.as_deref(), Some(&b"1609030"[..]));
    let services: std::collections::BTreeMap<String, Vec<String>> = decode(
        "catalog_services",
        include_str!("fixtures/consul/catalog_services.json"),
    );
    assert!(services.contains_key("consul"));
    let instances: Vec<CatalogService> = decode(
        "catalog_service",
        include_str!("fixtures/consul/catalog_service.json"),
    );
    assert!(!instances[0].service_name.is_empty());
    let nodes: Vec<Node> = decode(
        "catalog_nodes",
        include_str!("fixtures/consul/catalog_nodes.json"),
    );
    assert!(!nodes[0].node.is_empty());
    let node: CatalogNode = decode(
        "catalog_node",
        include_str!("fixtures/consul/catalog_node.json"),
    );
    assert!(!node.services.is_empty());
    for (name, text) in [
        (
            "health_checks",
            include_str!("fixtures/consul/health_checks.json"),
        ),
        (
            "health_state",
            include_str!("fixtures/consul/health_state.json"),
        ),
        (
            "health_node",
            include_str!("fixtures/consul/health_node.json"),
        ),
    ] {
        let checks: Vec<HealthCheck> = decode(name, text);
        assert!(!checks[0].check_id.is_empty(), "{name}");
    }
    let entries: Vec<ServiceEntry> = decode(
        "health_service",
        include_str!("fixtures/consul/health_service.json"),
    );
    assert!(!entries[0].checks.is_empty());
    let members: Vec<Member> = decode(
        "agent_members",
        include_str!("fixtures/consul/agent_members.json"),
    );
    assert_eq!(members[0].status(), MemberStatus::Alive);
    let me: AgentSelf = decode(
        "agent_self",
        include_str!("fixtures/consul/agent_self.json"),
    );
    assert!(!me.config.node_name.is_empty());
    let raft: RaftConfiguration = decode(
        "raft_configuration",
        include_str!("fixtures/consul/raft_configuration.json"),
    );
    assert!(raft.leader().is_some());
    let health: AutopilotHealth = decode(
        "autopilot_health",
        include_str!("fixtures/consul/autopilot_health.json"),
    );
    assert!(health.healthy);
    let state: AutopilotState = decode(
        "autopilot_state",
        include_str!("fixtures/consul/autopilot_state.json"),
    );
    assert!(state.servers.contains_key(&state.leader));
    let config: AutopilotConfiguration = decode(
        "autopilot_configuration",
        include_str!("fixtures/consul/autopilot_configuration.json"),
    );
    assert!(!config.server_stabilization_time.is_zero());
    let leader: String = decode(
        "status_leader",
        include_str!("fixtures/consul/status_leader.json"),
    );
    assert!(!leader.is_empty());
    let peers: Vec<String> = decode(
        "status_peers",
        include_str!("fixtures/consul/status_peers.json"),
    );
    assert!(!peers.is_empty());
}

// -------------------------------------------------------------------------------------------
// KV

async fn kv_round_trips(t: &Target) {
    let c = client_for(&t.url);

    let missing = c.kv_get("app/missing", &plain()).await.unwrap();
    assert_eq!(missing.value, None);
    assert!(missing.meta.index > 0, "a 404 still carries X-Consul-Index");

    let flags = KvPutOptions {
        flags: Some(42),
        ..KvPutOptions::default()
    };
    assert!(c.kv_put("app/config/a", b"alpha", &flags).await.unwrap());
    assert!(c
        .kv_put("app/config/b", b"", &KvPutOptions::default())
        .await
        .unwrap());
    assert!(c
        .kv_put("app/other key/ü", b"\x00\xff", &KvPutOptions::default())
        .await
        .unwrap());

    let a = c.kv_get("app/config/a", &plain()).await.unwrap();
    let pair = a.value.expect("app/config/a exists");
    assert_eq!(pair.key, "app/config/a");
    assert_eq!(pair.value, b"alpha");
    assert_eq!(pair.flags, 42);
    assert_eq!(pair.session, None);
    assert!(a.meta.index >= pair.modify_index);
    assert!(a.meta.known_leader);

    let odd = c.kv_get("app/other key/ü", &plain()).await.unwrap().value;
    assert_eq!(odd.map(|p| p.value), Some(vec![0x00, 0xff]));
    let raw = c.kv_get_raw("app/config/a", &plain()).await.unwrap();
    assert_eq!(raw.value.as_deref(), Some(&b"alpha"[..]));
    assert_eq!(
        c.kv_get_raw("app/missing", &plain()).await.unwrap().value,
        None
    );

    let listed = c.kv_list("app/config/", &plain()).await.unwrap().value;
    let names: Vec<_> = listed.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(names, ["app/config/a", "app/config/b"]);
    assert!(c
        .kv_list("nothing/here/", &plain())
        .await
        .unwrap()
        .value
        .is_empty());

    let keys = c.kv_keys("app/", Some("/"), &plain()).await.unwrap().value;
    assert_eq!(keys, ["app/config/", "app/other key/"]);
    let all = c.kv_keys("app/", None, &plain()).await.unwrap().value;
    assert_eq!(all.len(), 3);

    // Check-and-set: a stale index loses, the current one wins; 0 means "create only".
    let modify = pair.modify_index;
    let stale = KvPutOptions {
        cas: Some(modify + 1000),
        ..KvPutOptions::default()
    };
    assert!(!c.kv_put("app/config/a", b"lost", &stale).await.unwrap());
    let fresh = KvPutOptions {
        cas: Some(modify),
        ..KvPutOptions::default()
    };
    assert!(c.kv_put("app/config/a", b"won", &fresh).await.unwrap());
    let create_only = KvPutOptions {
        cas: Some(0),
        ..KvPutOptions::default()
    };
    assert!(!c.kv_put("app/config/a", b"x", &create_only).await.unwrap());
    let now = c
        .kv_get("app/config/a", &plain())
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(now.value, b"won");

    let wrong_cas = KvDeleteOptions {
        cas: Some(now.modify_index + 1000),
        ..KvDeleteOptions::default()
    };
    assert!(!c.kv_delete("app/config/a", &wrong_cas).await.unwrap());
    let right_cas = KvDeleteOptions {
        cas: Some(now.modify_index),
        ..KvDeleteOptions::default()
    };
    assert!(c.kv_delete("app/config/a", &right_cas).await.unwrap());
    assert_eq!(
        c.kv_get("app/config/a", &plain()).await.unwrap().value,
        None
    );

    let tree = KvDeleteOptions {
        recurse: true,
        ..KvDeleteOptions::default()
    };
    assert!(c.kv_delete("app/", &tree).await.unwrap());
    assert!(c.kv_list("app/", &plain()).await.unwrap().value.is_empty());
}

async fn blocking_kv_read_wakes_on_write_and_returns_at_wait(t: &Target) {
    let c = client_for(&t.url);
    assert!(c
        .kv_put("watch/me", b"v1", &KvPutOptions::default())
        .await
        .unwrap());
    let first = c.kv_get("watch/me", &plain()).await.unwrap();

    // Nothing changes: the query returns at its wait with the same index and value.
    let started = Instant::now();
    let idle = c
        .kv_get(
            "watch/me",
            &QueryOptions::blocking(first.meta.index, Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(idle.meta.index, first.meta.index);
    assert_eq!(idle.value.unwrap().value, b"v1");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "blocked {waited:?} for a 1s wait"
    );

    // A write while the query is parked wakes it with the new value and a higher index.
    let writer = c.clone();
    actix_rt::spawn(async move {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        writer
            .kv_put("watch/me", b"v2", &KvPutOptions::default())
            .await
            .unwrap();
    });
    let woken = c
        .kv_get(
            "watch/me",
            &QueryOptions::blocking(first.meta.index, Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert!(woken.meta.index > first.meta.index);
    assert_eq!(woken.value.unwrap().value, b"v2");

    // A watch on a key that does not exist yet wakes when it is created.
    let absent = c.kv_get("watch/later", &plain()).await.unwrap();
    let writer = c.clone();
    actix_rt::spawn(async move {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        writer
            .kv_put("watch/later", b"here", &KvPutOptions::default())
            .await
            .unwrap();
    });
    let created = c
        .kv_get(
            "watch/later",
            &QueryOptions::blocking(absent.meta.index, Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert_eq!(created.value.map(|p| p.value), Some(b"here".to_vec()));
}

async fn watch_state_drives_a_blocking_loop_against_the_simulator(t: &Target) {
    let c = client_for(&t.url);
    let policy = WatchPolicy {
        wait: Duration::from_secs(1),
        min_interval: Duration::from_millis(50),
        ..WatchPolicy::default()
    };
    let mut watch = WatchState::new(policy);
    let writer = c.clone();
    actix_rt::spawn(async move {
        for i in 0..3 {
            actix_rt::time::sleep(Duration::from_millis(400)).await;
            let value = format!("v{i}");
            writer
                .kv_put("loop/key", value.as_bytes(), &KvPutOptions::default())
                .await
                .unwrap();
        }
    });
    let mut seen = Vec::new();
    let mut calls = 0;
    while seen.last().map(Vec::as_slice) != Some(&b"v2"[..]) {
        calls += 1;
        assert!(calls < 40, "the watch did not see v2; saw {seen:?}");
        actix_rt::time::sleep(watch.delay(tokio::time::Instant::now())).await;
        watch.started(tokio::time::Instant::now());
        match c.kv_get("loop/key", &watch.options()).await {
            Ok(answer) => {
                if watch.observe(answer.meta.index).is_news() {
                    if let Some(pair) = answer.value {
                        seen.push(pair.value);
                    }
                }
            }
            Err(e) => {
                watch.failed();
                assert!(e.is_retryable(), "{e}");
            }
        }
    }
    assert!(watch.index() > 1);
    // Blocking, not polling: three writes need a handful of calls, not dozens.
    assert!(calls <= 12, "{calls} calls for 3 writes");
}

// -------------------------------------------------------------------------------------------
// Sessions and locks

fn session(name: &str, lock_delay: Duration) -> SessionRequest {
    SessionRequest {
        name: Some(name.into()),
        ttl: Some(Duration::from_secs(30)),
        lock_delay: Some(lock_delay),
        behavior: Some(SessionBehavior::Release),
        ..SessionRequest::default()
    }
}

async fn sessions_round_trip(t: &Target) {
    let c = client_for(&t.url);
    let id = c
        .session_create(&session("rehydrator-a", Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");

    let info = c.session_info(&id, &plain()).await.unwrap();
    let entry = info.value.expect("the new session exists");
    assert_eq!(entry.id, id);
    assert_eq!(entry.name, "rehydrator-a");
    assert_eq!(entry.ttl, Some(Duration::from_secs(30)));
    assert_eq!(entry.lock_delay, Duration::from_secs(15));
    assert_eq!(entry.behavior, SessionBehavior::Release);
    assert!(!entry.node.is_empty(), "defaults to the agent's node");
    assert!(info.meta.index > 0);

    let listed = c.session_list(&plain()).await.unwrap().value;
    assert!(listed.iter().any(|s| s.id == id));
    let on_node = c.session_node(&entry.node, &plain()).await.unwrap().value;
    assert!(on_node.iter().any(|s| s.id == id));
    assert!(c
        .session_node("no-such-node", &plain())
        .await
        .unwrap()
        .value
        .is_empty());

    let renewed = c.session_renew(&id).await.unwrap();
    assert_eq!(renewed.map(|s| s.id), Some(id.clone()));

    assert!(c.session_destroy(&id).await.unwrap());
    assert_eq!(
        c.session_renew(&id).await.unwrap(),
        None,
        "gone: renew says so"
    );
    assert_eq!(c.session_info(&id, &plain()).await.unwrap().value, None);
}

/// The replica's liveness check through the port, as the LockManager uses it: registered
/// passing, a session tied to it, kept alive past its TTL by passes, and ended with the lock it
/// holds once the passes stop: long before the session's own TTL (30 s) could end it.
async fn a_liveness_check_ends_its_session_when_no_longer_passed(t: &Target) {
    use rehydrator_actors::ports::{ConsulPort, LivenessSpec, SessionSpec};
    let c = client_for(&t.url);
    let port = ConsulAdapter::new(c.clone(), WatchPolicy::default());
    let ttl = Duration::from_secs(3);
    let spec = LivenessSpec {
        id: "rehydrator-test-r1-0000abcd".into(),
        cluster: "test".into(),
        replica: "r1 (host)".into(),
        ttl,
    };
    port.liveness_register(&spec).await.unwrap();
    let session = SessionSpec {
        name: "rehydrator test r1".into(),
        ttl: Duration::from_secs(30),
        lock_delay: Duration::ZERO,
        check: Some(spec.id.clone()),
    };
    let id = port.session_create(&session).await.unwrap();
    let entry = c.session_info(&id, &plain()).await.unwrap().value.unwrap();
    assert_eq!(
        entry.node_checks,
        vec!["serfHealth".to_owned()],
        "{}",
        t.name
    );
    assert_eq!(
        entry
            .service_checks
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        vec![spec.id.as_str()],
        "{}",
        t.name
    );
    let key = "rehydrator/test/locks/liveness";
    assert!(c.kv_acquire(key, b"r1", &id).await.unwrap());

    // Passed at a sixth of its TTL for twice its TTL: the session outlives the TTL. A sixth,
    // not the LockManager's third, so that a loaded machine stalling this loop for most of a
    // TTL does not let the check lapse; the widest gap between passes is reported either way.
    let alive_until = Instant::now() + 2 * ttl;
    let mut last_pass = Instant::now();
    let mut widest_gap = Duration::ZERO;
    while Instant::now() < alive_until {
        assert!(port.liveness_pass(&spec.id).await.unwrap(), "{}", t.name);
        widest_gap = widest_gap.max(last_pass.elapsed());
        last_pass = Instant::now();
        actix_rt::time::sleep(ttl / 6).await;
    }
    assert!(
        c.session_info(&id, &plain()).await.unwrap().value.is_some(),
        "{}: a passed check keeps its session (widest gap between passes {widest_gap:?}, \
         check TTL {ttl:?})",
        t.name
    );

    // No more passes: the check turns critical and takes the session and its lock.
    let bound = Instant::now() + Duration::from_secs(15);
    while c.session_info(&id, &plain()).await.unwrap().value.is_some() {
        if Instant::now() >= bound {
            // What the agent and the catalog say of the check, to tell a check that never
            // turned critical from a critical check that did not end its session.
            let mut said = Vec::new();
            for path in ["/v1/agent/checks", "/v1/health/state/critical"] {
                let body = match awc::Client::default()
                    .get(format!("{}{path}", t.url))
                    .send()
                    .await
                {
                    Ok(mut r) => r.body().await.map_or_else(
                        |e| e.to_string(),
                        |b| String::from_utf8_lossy(&b).into_owned(),
                    ),
                    Err(e) => e.to_string(),
                };
                said.push(format!("{path}: {body}"));
            }
            panic!(
                "{}: the session outlived its check by {:?} after the last pass\n{}",
                t.name,
                last_pass.elapsed(),
                said.join("\n")
            );
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let gone_after = last_pass.elapsed();
    println!(
        "{}: session gone {gone_after:?} after the last pass",
        t.name
    );
    assert!(gone_after >= ttl, "{}: gone before the check's TTL", t.name);
    let held = c.kv_get(key, &plain()).await.unwrap().value.unwrap();
    assert_eq!(held.session, None, "{}: the lock went with it", t.name);

    // A critical check cannot back a new session; registering again (which passes it) can.
    let refused = port.session_create(&session).await.unwrap_err();
    assert!(
        refused.message.contains("critical"),
        "{}: {refused}",
        t.name
    );
    // Registered again as `passing` but not passed: the agent keeps it critical.
    c.agent_service_register(&AgentServiceRegistration {
        id: spec.id.clone(),
        name: "rehydrator".into(),
        check: Some(AgentCheck {
            check_id: spec.id.clone(),
            name: "again".into(),
            ttl,
            status: "passing".into(),
            deregister_critical_service_after: Duration::from_secs(60),
            ..AgentCheck::default()
        }),
        ..AgentServiceRegistration::default()
    })
    .await
    .unwrap();
    let refused = port.session_create(&session).await.unwrap_err();
    assert!(
        refused.message.contains("critical"),
        "{}: {refused}",
        t.name
    );
    port.liveness_register(&spec).await.unwrap();
    let again = port.session_create(&session).await.unwrap();
    c.session_destroy(&again).await.unwrap();

    // Gone from the agent: a pass says so, and removing it twice is no error.
    port.liveness_deregister(&spec.id).await.unwrap();
    assert!(!port.liveness_pass(&spec.id).await.unwrap(), "{}", t.name);
    port.liveness_deregister(&spec.id).await.unwrap();
    c.kv_delete(key, &KvDeleteOptions::default()).await.unwrap();
}

/// The rollout's snapshot through the port: the whole archive in the file, nothing left
/// aside; one larger than allowed leaves no file at all. Real Consul's is a gzipped tar.
/// Saved whole or not at all, and restored (the simulator restores only its own archives).
async fn a_snapshot_is_saved_whole_or_not_at_all(t: &Target) {
    use rehydrator_actors::ports::ConsulPort;
    let c = client_for(&t.url);
    c.kv_put("rehydrator/test/snap", b"before", &KvPutOptions::default())
        .await
        .unwrap();
    let port = ConsulAdapter::new(c.clone(), WatchPolicy::default());
    let dir = std::env::temp_dir().join(format!(
        "rehydrator-snap-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let dest = dir.join("test.snap");
    let bytes = port.snapshot(&dest, 64 << 20).await.unwrap();
    let archive = std::fs::read(&dest).unwrap();
    assert_eq!(archive.len() as u64, bytes, "{}", t.name);
    assert!(bytes > 0, "{}", t.name);
    if t.real {
        assert_eq!(archive[..2], [0x1f, 0x8b], "{}: a gzip archive", t.name);
    }
    // Restored (what the docs' restore procedure does): the key is back as it was saved.
    c.kv_put("rehydrator/test/snap", b"after", &KvPutOptions::default())
        .await
        .unwrap();
    let http = awc::Client::default();
    let url = format!("{}/v1/snapshot", t.url);
    let mut restored = http.put(&url).send_body(archive.clone()).await.unwrap();
    assert_eq!(
        restored.status(),
        200,
        "{}: {:?}",
        t.name,
        restored.body().await
    );
    assert!(restored.body().await.unwrap().is_empty(), "{}", t.name);
    let back = c
        .kv_get("rehydrator/test/snap", &plain())
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(back.value, b"before", "{}", t.name);
    // An archive it cannot read: Consul's 500, saying so.
    let mut refused = http.put(&url).send_body("garbage").await.unwrap();
    let text = String::from_utf8_lossy(&refused.body().await.unwrap()).into_owned();
    assert_eq!(refused.status(), 500, "{}: {text}", t.name);
    assert!(
        text.starts_with("failed to decompress snapshot"),
        "{}: {text}",
        t.name
    );
    let small = dir.join("small.snap");
    let err = port.snapshot(&small, 16).await.unwrap_err();
    assert!(
        !small.exists(),
        "{}: a refused snapshot left a file: {err}",
        t.name
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["test.snap"], "{}: nothing aside", t.name);
    std::fs::remove_dir_all(&dir).unwrap();
    c.kv_delete("rehydrator/test/snap", &KvDeleteOptions::default())
        .await
        .unwrap();
}

async fn locks_contend_and_destroying_the_holder_releases(t: &Target) {
    let c = client_for(&t.url);
    let key = "rehydrator/test/locks/step";
    let a = c
        .session_create(&session("replica-a", Duration::ZERO))
        .await
        .unwrap();
    let b = c
        .session_create(&session("replica-b", Duration::ZERO))
        .await
        .unwrap();

    assert!(c.kv_acquire(key, b"replica-a", &a).await.unwrap());
    assert!(!c.kv_acquire(key, b"replica-b", &b).await.unwrap());
    let held = c.kv_get(key, &plain()).await.unwrap();
    let pair = held.value.clone().unwrap();
    assert_eq!(pair.session.as_deref(), Some(a.as_str()));
    assert_eq!(pair.value, b"replica-a");
    assert_eq!(pair.lock_index, 1);

    // Only the holder can release.
    assert!(!c.kv_release(key, b"", &b).await.unwrap());

    // B waits on the key; destroying A's session frees the lock and wakes B.
    let destroyer = c.clone();
    let a_id = a.clone();
    actix_rt::spawn(async move {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        assert!(destroyer.session_destroy(&a_id).await.unwrap());
    });
    let freed = c
        .kv_get(
            key,
            &QueryOptions::blocking(held.meta.index, Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert!(freed.meta.index > held.meta.index);
    let pair = freed.value.expect("release behavior keeps the key");
    assert_eq!(pair.session, None);

    // A lock-delay of 0 lets B take it at once.
    assert!(c.kv_acquire(key, b"replica-b", &b).await.unwrap());
    assert!(c.kv_release(key, b"", &b).await.unwrap());
    let after = c.kv_get(key, &plain()).await.unwrap().value.unwrap();
    assert_eq!(after.session, None);
    assert_eq!(after.lock_index, 2);
}

// -------------------------------------------------------------------------------------------
// Transactions: how a job takes its lock (`/v1/txn`)

/// The ops a job's acquire sends (see `port::ConsulAdapter::kv_acquire`).
fn acquire_ops(receipt: &str, lock: &str, session: &str, marks: &str) -> Vec<KvTxnOp> {
    vec![
        KvTxnOp::CheckNotExists {
            key: receipt.into(),
        },
        KvTxnOp::Lock {
            key: lock.into(),
            value: session.as_bytes().to_vec(),
            session: session.into(),
        },
        KvTxnOp::GetTree {
            prefix: marks.into(),
        },
    ]
}

fn failures(outcome: &TxnOutcome) -> Vec<(usize, String)> {
    match outcome {
        TxnOutcome::RolledBack(errors) => errors
            .iter()
            .map(|e| (e.op_index, e.what.clone()))
            .collect(),
        TxnOutcome::Committed(r) => panic!("expected a roll-back, got {r:?}"),
    }
}

async fn txn_acquires_checks_and_reads_in_one_round_trip(t: &Target) {
    let c = client_for(&t.url);
    let (receipt, lock, marks) = ("txn/receipts/a/1", "txn/locks/a", "txn/watermarks/a");
    let a = c
        .session_create(&session("txn-a", Duration::from_secs(2)))
        .await
        .unwrap();
    let b = c
        .session_create(&session("txn-b", Duration::ZERO))
        .await
        .unwrap();
    // Another key sharing the watermarks' prefix: get-tree lists it too.
    assert!(c
        .kv_put("txn/watermarks/a-2", b"{}", &KvPutOptions::default())
        .await
        .unwrap());

    // Free lock, no receipt: held, with LockIndex and Session in the lock's result (its value
    // blanked, as for every write), then what get-tree read.
    let TxnOutcome::Committed(results) =
        c.txn(&acquire_ops(receipt, lock, &a, marks)).await.unwrap()
    else {
        panic!("the first acquire commits ({})", t.name)
    };
    assert_eq!(results[0].key, lock, "{}", t.name);
    assert_eq!(results[0].lock_index, 1, "{}", t.name);
    assert_eq!(results[0].session.as_deref(), Some(a.as_str()));
    assert!(results[0].value.is_empty(), "{}: {:?}", t.name, results[0]);
    let read: Vec<&str> = results[1..].iter().map(|p| p.key.as_str()).collect();
    assert_eq!(read, ["txn/watermarks/a-2"], "{}", t.name);
    let stored = c.kv_get(lock, &plain()).await.unwrap().value.unwrap();
    assert_eq!(stored.value, a.as_bytes(), "the lock's value is written");

    // Held by A: B is refused at the lock, and nothing is written.
    let refused = c.txn(&acquire_ops(receipt, lock, &b, marks)).await.unwrap();
    assert_eq!(
        failures(&refused),
        [(
            1,
            format!("failed to lock key {lock:?}, lock is already held")
        )],
        "{}",
        t.name
    );
    // A re-acquiring its own lock: still held, LockIndex unchanged.
    let TxnOutcome::Committed(again) = c.txn(&acquire_ops(receipt, lock, &a, marks)).await.unwrap()
    else {
        panic!("the holder re-acquires ({})", t.name)
    };
    assert_eq!(again[0].lock_index, 1);

    // A receipt: the check fails (and B's lock too, reported alongside); nothing changes.
    assert!(c
        .kv_put(receipt, b"done", &KvPutOptions::default())
        .await
        .unwrap());
    let done = c.txn(&acquire_ops(receipt, lock, &b, marks)).await.unwrap();
    assert_eq!(
        failures(&done),
        [
            (0, format!("key {receipt:?} exists")),
            (
                1,
                format!("failed to lock key {lock:?}, lock is already held")
            ),
        ],
        "{}",
        t.name
    );
    assert!(c
        .kv_delete(receipt, &KvDeleteOptions::default())
        .await
        .unwrap());

    // A's session goes while it holds the lock: its 2 s lock-delay refuses B at the pre-check,
    // then B gets it, the lock's second holder.
    assert!(c.session_destroy(&a).await.unwrap());
    let delayed = c.txn(&acquire_ops(receipt, lock, &b, marks)).await.unwrap();
    assert_eq!(
        failures(&delayed),
        [(1, format!("failed to lock key {lock:?} due to lock delay"))],
        "{}",
        t.name
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let results = loop {
        match c.txn(&acquire_ops(receipt, lock, &b, marks)).await.unwrap() {
            TxnOutcome::Committed(r) => break r,
            TxnOutcome::RolledBack(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{}: still refused: {e:?}",
                    t.name
                );
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(results[0].lock_index, 2, "{}", t.name);
    assert_eq!(results[0].session.as_deref(), Some(b.as_str()));

    // An unknown session is refused by name.
    let ghost = "00000000-0000-0000-0000-000000000000";
    let gone = c
        .txn(&[KvTxnOp::Lock {
            key: "txn/locks/other".into(),
            value: Vec::new(),
            session: ghost.into(),
        }])
        .await
        .unwrap();
    assert_eq!(
        failures(&gone),
        [(0, format!("invalid session {ghost:?}"))],
        "{}",
        t.name
    );
    assert!(c.session_destroy(&b).await.unwrap());
}

/// The job's acquire as the LockManager sends it (`ConsulAdapter::kv_acquire`, one txn): held,
/// with the lock's value from before the acquire: a dead holder's record of the job it held
/// (its session's release keeps the value), nothing after a clean release (which writes an
/// empty value); busy while another session holds it; present once the receipt exists.
async fn the_jobs_acquire_names_the_prior_holder(t: &Target) {
    use rehydrator_actors::ports::{Acquire, Acquired, ConsulPort as _};

    let c = client_for(&t.url);
    let port = ConsulAdapter::new(c.clone(), WatchPolicy::default());
    let (receipt, lock) = ("prior/receipts/a/1", "prior/locks/a");
    let a = c
        .session_create(&session("prior-a", Duration::ZERO))
        .await
        .unwrap();
    let b = c
        .session_create(&session("prior-b", Duration::ZERO))
        .await
        .unwrap();
    // A key the lock's name prefixes: the read of the prior value must not take it for the lock.
    assert!(c
        .kv_put("prior/locks/a-2", b"other", &KvPutOptions::default())
        .await
        .unwrap());
    let acquire = |session: &str, value: &[u8]| Acquire {
        key: lock.into(),
        value: value.to_vec(),
        session: session.into(),
        unless: Some(receipt.into()),
        read: Some("prior/watermarks/a".into()),
    };

    let first = port.kv_acquire(&acquire(&a, b"job-1 by a")).await.unwrap();
    assert!(
        matches!(
            &first,
            Acquired::Held {
                lock_index: 1,
                prior: None,
                ..
            }
        ),
        "{}: {first:?}",
        t.name
    );
    let busy = port.kv_acquire(&acquire(&b, b"job-1 by b")).await.unwrap();
    assert_eq!(busy, Acquired::Busy, "{}", t.name);
    // A dies holding it, no receipt written: B gets the lock, and A's record of the job.
    assert!(c.session_destroy(&a).await.unwrap());
    let second = port.kv_acquire(&acquire(&b, b"job-1 by b")).await.unwrap();
    assert!(
        matches!(
            &second,
            Acquired::Held { lock_index: 2, prior: Some(v), .. } if v == b"job-1 by a"
        ),
        "{}: {second:?}",
        t.name
    );
    // B lets go cleanly: the next holder finds an empty value, no job named.
    assert!(port.kv_release(lock, &b).await.unwrap());
    let a2 = c
        .session_create(&session("prior-a2", Duration::ZERO))
        .await
        .unwrap();
    let third = port
        .kv_acquire(&acquire(&a2, b"job-1 by a2"))
        .await
        .unwrap();
    assert!(
        matches!(
            &third,
            Acquired::Held { lock_index: 3, prior: Some(v), .. } if v.is_empty()
        ),
        "{}: {third:?}",
        t.name
    );
    // The receipt written: the job is done, whoever asks.
    assert!(c
        .kv_put(receipt, b"done", &KvPutOptions::default())
        .await
        .unwrap());
    let done = port.kv_acquire(&acquire(&b, b"job-1 by b")).await.unwrap();
    assert_eq!(done, Acquired::Present, "{}", t.name);
    assert!(c.session_destroy(&a2).await.unwrap());
    assert!(c.session_destroy(&b).await.unwrap());
}

/// The rollout record's write (`ConsulAdapter::kv_put_fenced`, one txn): it lands while the
/// writer's session holds the lock and the record is at the index asked for; a moved index is
/// `Changed`; once the session is gone (a replica frozen past its TTL) it is `LockLost` and
/// nothing is written, whatever the index.
async fn a_fenced_write_lands_only_while_its_lock_is_held(t: &Target) {
    use rehydrator_actors::ports::{ConsulPort as _, Fence, Fenced};

    let c = client_for(&t.url);
    let port = ConsulAdapter::new(c.clone(), WatchPolicy::default());
    let (record, lock) = ("fenced/rollout", "fenced/locks/step");
    let a = c
        .session_create(&session("fenced-a", Duration::ZERO))
        .await
        .unwrap();
    assert!(c.kv_acquire(lock, b"a", &a).await.unwrap());
    let fence = Fence {
        lock: lock.into(),
        session: a.clone(),
    };
    let put = |value: &'static [u8], cas: Option<u64>, fence: Fence| {
        let port = &port;
        async move {
            port.kv_put_fenced(record, value.to_vec(), cas, &fence)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        put(b"one", Some(0), fence.clone()).await,
        Fenced::Written,
        "{}",
        t.name
    );
    let at = c.kv_get(record, &plain()).await.unwrap().value.unwrap();
    assert_eq!(at.value, b"one", "{}", t.name);
    assert_eq!(
        put(b"two", Some(0), fence.clone()).await,
        Fenced::Changed,
        "{}",
        t.name
    );
    let stale = at.modify_index;
    assert_eq!(
        put(b"two", Some(stale), fence.clone()).await,
        Fenced::Written,
        "{}",
        t.name
    );
    // Without an index (the guard's record): whatever the key holds, still under the lock.
    assert_eq!(
        put(b"three", None, fence.clone()).await,
        Fenced::Written,
        "{}",
        t.name
    );
    let three = c.kv_get(record, &plain()).await.unwrap().value.unwrap();
    assert_eq!(three.value, b"three", "{}", t.name);
    assert_eq!(
        put(b"two", Some(three.modify_index), fence.clone()).await,
        Fenced::Written,
        "{}",
        t.name
    );
    let now = c.kv_get(record, &plain()).await.unwrap().value.unwrap();
    // Another session's fence does not hold the lock.
    let b = c
        .session_create(&session("fenced-b", Duration::ZERO))
        .await
        .unwrap();
    let other = Fence {
        lock: lock.into(),
        session: b.clone(),
    };
    assert_eq!(
        put(b"by b", Some(now.modify_index), other.clone()).await,
        Fenced::LockLost,
        "{}",
        t.name
    );
    assert_eq!(
        put(b"by b", None, other).await,
        Fenced::LockLost,
        "{}",
        t.name
    );
    // A's session ends: its next write, at the right index, is refused and writes nothing.
    assert!(c.session_destroy(&a).await.unwrap());
    assert_eq!(
        put(b"late", Some(now.modify_index), fence.clone()).await,
        Fenced::LockLost,
        "{}",
        t.name
    );
    assert_eq!(
        put(b"late", None, fence).await,
        Fenced::LockLost,
        "{}",
        t.name
    );
    let after = c.kv_get(record, &plain()).await.unwrap().value.unwrap();
    assert_eq!(after.value, b"two", "{}", t.name);
    assert_eq!(after.modify_index, now.modify_index, "{}", t.name);
    assert!(c.session_destroy(&b).await.unwrap());
}

async fn txn_answers_and_refusals(t: &Target) {
    let c = client_for(&t.url);
    // Writes and reads in order, each seeing the ones before; a get of a missing key fails
    // the whole transaction, and every failure is listed.
    let TxnOutcome::Committed(r) = c
        .txn(&[
            KvTxnOp::Set {
                key: "txn2/a".into(),
                value: b"1".to_vec(),
            },
            KvTxnOp::Get {
                key: "txn2/a".into(),
            },
            KvTxnOp::Delete {
                key: "txn2/none".into(),
            },
        ])
        .await
        .unwrap()
    else {
        panic!("{}: set and get commit", t.name)
    };
    assert_eq!(r.len(), 2, "{}: the delete adds no result", t.name);
    assert!(r[0].value.is_empty(), "a write's result has no value");
    assert_eq!(r[1].value, b"1");
    assert_eq!(r[0].modify_index, r[1].modify_index);
    let index = r[1].modify_index;
    let failed = c
        .txn(&[
            KvTxnOp::Set {
                key: "txn2/b".into(),
                value: b"2".to_vec(),
            },
            KvTxnOp::CheckIndex {
                key: "txn2/a".into(),
                index: index + 1000,
            },
            KvTxnOp::Get {
                key: "txn2/missing".into(),
            },
            KvTxnOp::Cas {
                key: "txn2/a".into(),
                value: Vec::new(),
                index: 1,
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        failures(&failed),
        [
            (
                1,
                format!(
                    "failed index check for key \"txn2/a\", current modify index {index} != {}",
                    index + 1000
                )
            ),
            (2, "key \"txn2/missing\" doesn't exist".to_owned()),
            (3, "failed to set key \"txn2/a\", index is stale".to_owned()),
        ],
        "{}",
        t.name
    );
    assert_eq!(
        c.kv_get("txn2/b", &plain()).await.unwrap().value,
        None,
        "{}: nothing of a failed transaction is written",
        t.name
    );

    // What the client does not send, straight to the endpoint.
    let http = awc::Client::default();
    let raw = |method: &str, body: String| {
        let req = http.request(
            awc::http::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}/v1/txn", t.url),
        );
        async move {
            let mut resp = req.send_body(body).await.unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let text = String::from_utf8_lossy(&resp.body().await.unwrap()).into_owned();
            (status, headers, text)
        }
    };
    let (status, _, _) = raw("GET", String::new()).await;
    assert_eq!(status, 405, "{}", t.name);
    let too_many: Vec<_> = (0..65)
        .map(|i| serde_json::json!({"KV": {"Verb": "get-tree", "Key": format!("x{i}")}}))
        .collect();
    let (status, _, text) = raw("PUT", serde_json::to_string(&too_many).unwrap()).await;
    assert_eq!(
        (status, text.trim()),
        (413, "Transaction contains too many operations (65 > 64)"),
        "{}",
        t.name
    );
    for (body, says) in [
        ("[{", "Failed to parse body: unexpected EOF"),
        (
            "{}",
            "Failed to parse body: json: cannot unmarshal object into Go value of type api.TxnOps",
        ),
        (
            r#"[{"KV":{"Verb":"get","Key":"a","Frob":1}}]"#,
            "Failed to parse body: json: unknown field \"Frob\"",
        ),
    ] {
        let (status, _, text) = raw("PUT", body.into()).await;
        assert_eq!((status, text.trim()), (400, says), "{}: {body}", t.name);
    }
    // A read-only transaction is answered as a read: its meta in the body, no index.
    let (status, headers, text) =
        raw("PUT", r#"[{"kv":{"verb":"get","key":"txn2/a"}}]"#.into()).await;
    assert_eq!(status, 200, "{}: {text}", t.name);
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["Results"][0]["KV"]["Value"], "MQ==", "{}", t.name);
    assert_eq!(body["Index"], 0, "{}", t.name);
    assert_eq!(body["KnownLeader"], true, "{}", t.name);
    assert_eq!(body["ConsistencyLevel"], "", "{}", t.name);
    assert!(headers.get("x-consul-index").is_none(), "{}", t.name);
    assert_eq!(
        headers
            .get("x-consul-knownleader")
            .map(|v| v.to_str().unwrap()),
        Some("true"),
        "{}",
        t.name
    );
}

// -------------------------------------------------------------------------------------------
// Events

async fn events_fire_list_and_wake_a_blocking_list(t: &Target) {
    let c = client_for(&t.url);
    let fired = c
        .event_fire(
            "consul-rehydrate",
            b"{\"reason\":\"ami\"}",
            &EventFilter::default(),
        )
        .await
        .unwrap();
    assert_eq!(fired.name, "consul-rehydrate");
    assert_eq!(fired.payload.as_deref(), Some(&b"{\"reason\":\"ami\"}"[..]));
    assert_eq!(fired.id.len(), 36);

    let filtered = c
        .event_fire(
            "deploy",
            b"",
            &EventFilter {
                node: Some("consul-server-.*".into()),
                service: Some("consul".into()),
                tag: Some("v1".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(filtered.payload, None);
    assert_eq!(filtered.node_filter, "consul-server-.*");
    assert_eq!(filtered.service_filter, "consul");
    assert_eq!(filtered.tag_filter, "v1");

    let agent = c.agent_self().await.unwrap().config.node_name;
    let mine = c
        .event_fire(
            "deploy",
            b"here",
            &EventFilter {
                node: Some(format!("{agent}.*")),
                ..EventFilter::default()
            },
        )
        .await
        .unwrap();

    // The list is what the answering agent received: an event filtered to other nodes (and
    // to a service it does not run) never reached it. Events arrive by gossip, the answering
    // agent's own too: wait for the two it should have.
    let all = common::eventually("the fired events listed", GOSSIP_BOUND, || async {
        let all = c.event_list(None, &plain()).await.unwrap();
        let has = |id: &str| all.value.iter().any(|e| e.id == id);
        (has(&fired.id) && has(&mine.id)).then_some(all)
    })
    .await;
    let ids: Vec<_> = all.value.iter().map(|e| e.id.as_str()).collect();
    assert!(ids.contains(&fired.id.as_str()), "{ids:?}");
    assert!(ids.contains(&mine.id.as_str()), "{ids:?}");
    assert!(!ids.contains(&filtered.id.as_str()), "{ids:?}");
    let named = c
        .event_list(Some("consul-rehydrate"), &plain())
        .await
        .unwrap();
    assert!(named.value.iter().all(|e| e.name == "consul-rehydrate"));
    assert_eq!(named.value.len(), 1);

    // A watcher blocked on the list wakes when an event fires; the index is a hash, so the
    // watch only asks that it changed.
    let mut watch = WatchState::with_order(
        WatchPolicy {
            wait: Duration::from_secs(20),
            ..WatchPolicy::default()
        },
        IndexOrder::Hashed,
    );
    let first = c
        .event_list(Some("consul-rehydrate"), &watch.options())
        .await
        .unwrap();
    assert_eq!(watch.observe(first.meta.index), IndexUpdate::Initial);
    let firer = c.clone();
    actix_rt::spawn(async move {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        firer
            .event_fire("consul-rehydrate", b"second", &EventFilter::default())
            .await
            .unwrap();
    });
    let woken = c
        .event_list(Some("consul-rehydrate"), &watch.options())
        .await
        .unwrap();
    assert_eq!(watch.observe(woken.meta.index), IndexUpdate::Changed);
    let newest = woken.value.last().expect("events listed");
    assert_eq!(newest.payload.as_deref(), Some(&b"second"[..]));
    assert!(newest.ltime > fired.ltime);
}

// -------------------------------------------------------------------------------------------
// Catalog and health

fn web(node: &str, address: &str, id: &str, tag: &str, status: &str) -> CatalogRegistration {
    CatalogRegistration {
        node: node.into(),
        address: address.into(),
        node_meta: [("image".to_string(), "ami-1".to_string())].into(),
        service: Some(ServiceRegistration {
            id: Some(id.into()),
            service: "web".into(),
            tags: vec![tag.into()],
            port: Some(8080),
            ..ServiceRegistration::default()
        }),
        check: Some(CheckRegistration {
            node: node.into(),
            check_id: format!("service:{id}"),
            name: "web alive".into(),
            status: status.into(),
            service_id: Some(id.into()),
            ..CheckRegistration::default()
        }),
        ..CatalogRegistration::default()
    }
}

async fn catalog_and_health_round_trip(t: &Target) {
    let c = client_for(&t.url);
    c.catalog_register(&web("app-1", "10.0.0.51", "web-1", "v1", "passing"))
        .await
        .unwrap();
    c.catalog_register(&web("app-2", "10.0.0.52", "web-2", "v2", "critical"))
        .await
        .unwrap();

    let services = c.catalog_services(&plain()).await.unwrap();
    assert!(
        services.value.contains_key("consul"),
        "the servers' service"
    );
    let mut web_tags = services.value["web"].clone();
    web_tags.sort();
    assert_eq!(web_tags, ["v1", "v2"]);
    assert!(services.meta.index > 0);

    let v1 = c
        .catalog_service("web", Some("v1"), &plain())
        .await
        .unwrap()
        .value;
    assert_eq!(v1.len(), 1);
    assert_eq!(v1[0].service_id, "web-1");
    assert_eq!(v1[0].node, "app-1");
    assert_eq!(v1[0].service_port, 8080);
    assert_eq!(v1[0].node_meta["image"], "ami-1");
    let servers = c.catalog_service("consul", None, &plain()).await.unwrap();
    assert_eq!(servers.value.len(), 3);
    let server = servers.value[0].node.clone();

    let nodes = c.catalog_nodes(&plain()).await.unwrap().value;
    let names: Vec<_> = nodes.iter().map(|n| n.node.as_str()).collect();
    assert!(
        names.contains(&"app-1") && names.contains(&"app-2"),
        "{names:?}"
    );
    assert!(names.contains(&server.as_str()), "{names:?}");

    let app1 = c
        .catalog_node("app-1", &plain())
        .await
        .unwrap()
        .value
        .unwrap();
    assert_eq!(app1.node.address, "10.0.0.51");
    assert_eq!(app1.services["web-1"].port, 8080);
    assert_eq!(app1.services["web-1"].tags, ["v1"]);
    assert_eq!(
        c.catalog_node("no-such-node", &plain())
            .await
            .unwrap()
            .value,
        None
    );

    let healthy = c.health_service("web", None, true, &plain()).await.unwrap();
    let ids: Vec<_> = healthy
        .value
        .iter()
        .map(|e| e.service.id.as_str())
        .collect();
    assert_eq!(ids, ["web-1"]);
    let all = c
        .health_service("web", None, false, &plain())
        .await
        .unwrap();
    assert_eq!(all.value.len(), 2);
    assert!(all.value.iter().all(|e| !e.checks.is_empty()));
    let tagged = c
        .health_service("web", Some("v2"), false, &plain())
        .await
        .unwrap()
        .value;
    assert_eq!(tagged.len(), 1);
    assert_eq!(tagged[0].node.node, "app-2");

    let checks = c.health_checks("web", &plain()).await.unwrap().value;
    let mut check_ids: Vec<_> = checks.iter().map(|c| c.check_id.as_str()).collect();
    check_ids.sort();
    assert_eq!(check_ids, ["service:web-1", "service:web-2"]);
    let critical = c
        .health_state(CheckState::Critical, &plain())
        .await
        .unwrap()
        .value;
    assert!(critical.iter().any(|c| c.check_id == "service:web-2"));
    assert!(critical.iter().all(|c| c.status == "critical"));
    let passing = c
        .health_state(CheckState::Passing, &plain())
        .await
        .unwrap()
        .value;
    assert!(passing.iter().any(|c| c.check_id == "service:web-1"));
    let any = c
        .health_state(CheckState::Any, &plain())
        .await
        .unwrap()
        .value;
    assert!(any.len() >= passing.len() + critical.len());
    let node_checks = c.health_node("app-1", &plain()).await.unwrap().value;
    assert_eq!(node_checks.len(), 1);
    assert!(node_checks[0].is_passing());
    let server_checks = c.health_node(&server, &plain()).await.unwrap().value;
    assert!(server_checks.iter().any(|c| c.check_id == "serfHealth"));

    // A watcher on the service wakes when an instance goes away.
    let before = c
        .health_service("web", None, false, &plain())
        .await
        .unwrap();
    let remover = c.clone();
    actix_rt::spawn(async move {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        remover
            .catalog_deregister(&CatalogDeregistration {
                node: "app-2".into(),
                ..CatalogDeregistration::default()
            })
            .await
            .unwrap();
    });
    let after = c
        .health_service(
            "web",
            None,
            false,
            &QueryOptions::blocking(before.meta.index, Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert!(after.meta.index > before.meta.index);
    assert_eq!(after.value.len(), 1);

    c.catalog_deregister(&CatalogDeregistration {
        node: "app-1".into(),
        service_id: Some("web-1".into()),
        ..CatalogDeregistration::default()
    })
    .await
    .unwrap();
    let gone = c.catalog_services(&plain()).await.unwrap().value;
    assert!(!gone.contains_key("web"));
    assert!(c
        .catalog_node("app-1", &plain())
        .await
        .unwrap()
        .value
        .is_some());
}

// -------------------------------------------------------------------------------------------
// Agent

async fn agent_self_and_members(t: &Target) {
    let c = client_for(&t.url);
    let me = c.agent_self().await.unwrap();
    assert_eq!(me.config.datacenter, "dc1");
    assert!(
        !me.config.server,
        "every target answers through a client agent"
    );
    assert_eq!(me.member.name, me.config.node_name);
    assert_eq!(me.member.status(), MemberStatus::Alive);

    let lan = c.agent_members(false).await.unwrap();
    let servers: Vec<_> = lan.iter().filter(|m| m.is_server()).collect();
    assert_eq!(servers.len(), 3, "{lan:?}");
    assert!(servers.iter().all(|m| m.status() == MemberStatus::Alive));
    assert!(lan
        .iter()
        .any(|m| m.name == me.config.node_name && !m.is_server()));
    // A client agent is in no WAN pool: real Consul answers an empty list there, and servers
    // only where there is one.
    let wan = c.agent_members(true).await.unwrap();
    assert!(wan.iter().all(Member::is_server), "{wan:?}");
}

/// Force-leave answers 200, prune or not. On the simulator only: it leaves a live member as it
/// was, while real Consul 1.8.7 drops a live server from the member list (and then Raft), which
/// would break the checks that share its cluster. rehydrator force-leaves only a server it
/// retired that serf calls failed (`cloud_process::a_dead_server_is_out_of_raft_once_force_left`
/// runs that on real Consul).
#[actix_rt::test]
async fn agent_force_leave_is_accepted() {
    common::bounded(async {
        let t = Target::sim();
        let c = client_for(&t.url);
        c.agent_force_leave("consul-server-3", false).await.unwrap();
        c.agent_force_leave("consul-server-3", true).await.unwrap();
    })
    .await;
}

#[actix_rt::test]
async fn agent_leave_invalidates_the_agents_sessions() {
    common::bounded(async {
        let sim = common::sim();
        let c = client_for(&sim.url());
        let id = c
            .session_create(&session("on-the-agent", Duration::ZERO))
            .await
            .unwrap();
        c.agent_leave().await.unwrap();
        // The agent's node leaves the catalog, and the sessions tied to it die with it.
        let mut renewed = c.session_renew(&id).await.unwrap();
        for _ in 0..50 {
            if renewed.is_none() {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
            renewed = c.session_renew(&id).await.unwrap();
        }
        assert_eq!(renewed, None, "the session outlived its node");
        sim.stop().await;
    })
    .await
}

// -------------------------------------------------------------------------------------------
// Operator and status

async fn raft_status_and_autopilot(t: &Target) {
    let c = client_for(&t.url);
    let raft = c.raft_configuration(&plain()).await.unwrap();
    assert_eq!(raft.servers.len(), 3);
    assert_eq!(raft.voters(), 3);
    let leader = raft.leader().expect("a leader").clone();
    let stale = c.raft_configuration(&QueryOptions::stale()).await.unwrap();
    assert_eq!(stale.servers.len(), 3);

    assert_eq!(
        c.status_leader().await.unwrap(),
        Some(leader.address.clone())
    );
    let mut peers = c.status_peers().await.unwrap();
    peers.sort();
    let mut addresses: Vec<_> = raft.servers.iter().map(|s| s.address.clone()).collect();
    addresses.sort();
    assert_eq!(peers, addresses);

    // Real autopilot reports unhealthy with no servers until its first pass after boot.
    let health = common::eventually("autopilot healthy", GOSSIP_BOUND, || async {
        c.autopilot_health(&plain())
            .await
            .ok()
            .filter(|h| h.healthy)
    })
    .await;
    assert_eq!(health.failure_tolerance, 1);
    assert_eq!(health.servers.len(), 3);
    assert!(health.servers.iter().all(|s| s.voter && s.healthy));
    assert_eq!(
        health.servers.iter().filter(|s| s.leader).count(),
        1,
        "{health:?}"
    );

    if t.at_least(1, 9) {
        let state = c.autopilot_state(&plain()).await.unwrap();
        assert!(state.healthy);
        assert_eq!(state.leader, leader.id);
        assert_eq!(state.voters.len(), 3);
        assert_eq!(state.servers[&leader.id].status, "leader");
    } else {
        // Added in 1.9.
        let err = c.autopilot_state(&plain()).await.unwrap_err();
        assert!(
            matches!(err, ConsulError::Status { status: 404, .. }),
            "{err}"
        );
    }

    let config = c.autopilot_configuration(&plain()).await.unwrap();
    assert_eq!(config.server_stabilization_time, t.stabilization);
    let changed = AutopilotConfiguration {
        cleanup_dead_servers: !config.cleanup_dead_servers,
        ..config.clone()
    };
    assert!(c
        .autopilot_set_configuration(&changed, Some(config.modify_index))
        .await
        .unwrap());
    assert!(
        !c.autopilot_set_configuration(&config, Some(config.modify_index))
            .await
            .unwrap(),
        "a stale cas must lose"
    );
    let now = c.autopilot_configuration(&plain()).await.unwrap();
    assert_eq!(now.cleanup_dead_servers, changed.cleanup_dead_servers);
    assert!(now.modify_index > config.modify_index);
}

async fn leadership_transfers_to_the_chosen_server(t: &Target) {
    let c = client_for(&t.url);
    let raft = c.raft_configuration(&plain()).await.unwrap();
    let target = raft
        .servers
        .iter()
        .find(|s| !s.leader)
        .expect("a follower")
        .clone();
    let outcome = c.transfer_leader(Some(&target.id)).await.unwrap();
    if !t.at_least(1, 15) {
        // Added in 1.15: before, a bare 404.
        assert_eq!(outcome, LeaderTransfer::Unsupported);
        return;
    }
    assert_eq!(outcome, LeaderTransfer::Transferred);
    let mut leader = None;
    for _ in 0..50 {
        leader = c.status_leader().await.unwrap();
        if leader.as_deref() == Some(target.address.as_str()) {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(leader, Some(target.address.clone()));
}

async fn raft_peer_removal_by_address(t: &Target) {
    let c = client_for(&t.url);
    let raft = c.raft_configuration(&plain()).await.unwrap();
    let victim = raft.servers.iter().find(|s| !s.leader).unwrap().clone();
    c.raft_remove_peer(&RaftPeer::Address(victim.address.clone()))
        .await
        .unwrap();
    // The peer is out of the voters at once; a server that is still alive may be added back
    // by the leader's reconciliation, as a non-voter until autopilot promotes it.
    let after = c.raft_configuration(&plain()).await.unwrap();
    assert!(
        after
            .servers
            .iter()
            .all(|s| s.address != victim.address || !s.voter),
        "{after:?}"
    );
    // The simulator's index grows with the change; real 1.8.7 answers Index 0 throughout.
    // rehydrator reads neither.
    assert!(after.index >= raft.index, "{raft:?} then {after:?}");
    assert_eq!(after.voters(), 2);
    let missing = c
        .raft_remove_peer(&RaftPeer::Id("no-such-id".into()))
        .await
        .unwrap_err();
    assert_eq!(missing.kind(), "status_5xx", "{missing}");
}

// -------------------------------------------------------------------------------------------
// Errors, transport and answers the simulator cannot give

async fn unknown_datacenter_is_a_status_error_naming_the_request(t: &Target) {
    let mut config = ConsulConfig::with_address(&t.url).unwrap();
    config.token = Some(Token::new("very-secret"));
    let c = Client::new(config).unwrap().with_datacenter("nowhere");
    let err = c.kv_get("a", &plain()).await.unwrap_err();
    let ConsulError::Status {
        status,
        message,
        request,
    } = &err
    else {
        panic!("expected a status error, got {err:?}");
    };
    assert_eq!(*status, 500);
    assert!(message.contains("No path to datacenter"), "{message}");
    assert_eq!(request, "GET /v1/kv/a?dc=nowhere");
    assert!(err.is_retryable());
    assert!(!format!("{err} {err:?}").contains("very-secret"));
}

#[actix_rt::test]
async fn token_goes_in_the_header_and_old_consul_has_no_transfer_leader() {
    common::bounded(async {
        let (url, requests) = canned(vec![(
            Duration::ZERO,
            http(
                "404 Not Found",
                &[],
                "Invalid URL path: not a recognized HTTP API endpoint",
            ),
        )]);
        let mut config = ConsulConfig::with_address(&url).unwrap();
        config.token = Some(Token::new("very-secret"));
        let c = Client::new(config).unwrap();
        let outcome = c.transfer_leader(Some("abc")).await.unwrap();
        assert_eq!(outcome, LeaderTransfer::Unsupported);
        let request = requests.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            request.starts_with("POST /v1/operator/raft/transfer-leader?id=abc HTTP/1.1"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("x-consul-token: very-secret"),
            "{request}"
        );
    })
    .await
}

/// Consul's API never redirects: a 302 is refused with an error naming only where it pointed
/// (scheme and host), and the token never goes there.
#[actix_rt::test]
async fn a_redirect_is_refused_and_the_token_stays_home() {
    common::bounded(async {
        let (elsewhere, stolen) = canned(vec![(Duration::ZERO, http("200 OK", &[], "\"x\""))]);
        let location = format!("{elsewhere}/v1/status/leader?sig=s3cr3t-sig");
        let (url, requests) = canned(vec![(
            Duration::ZERO,
            http("302 Found", &[("Location", &location)], ""),
        )]);
        let mut config = ConsulConfig::with_address(&url).unwrap();
        config.token = Some(Token::new("very-secret"));
        let c = Client::new(config).unwrap();
        let err = c.status_leader().await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, ConsulError::Status { status: 302, .. }),
            "{err:?}"
        );
        assert!(
            text.contains("redirect") && text.contains(&elsewhere),
            "{text}"
        );
        assert!(!text.contains("s3cr3t-sig"), "{text}");
        assert!(requests.recv_timeout(Duration::from_secs(5)).is_ok());
        // The call has returned: had it followed the redirect, the request would be there.
        assert!(stolen.try_recv().is_err(), "the redirect was followed");
    })
    .await
}

#[actix_rt::test]
async fn unhealthy_autopilot_429_is_an_answer_and_gone_session_renews_to_none() {
    common::bounded(async {
        let unhealthy = r#"{"Healthy":false,"FailureTolerance":0,"Servers":[
            {"ID":"a","Name":"consul-server-1","Address":"10.0.0.1:8300","SerfStatus":"alive",
             "Leader":true,"LastContact":"0s","Healthy":true,"Voter":true},
            {"ID":"b","Name":"consul-server-2","Address":"10.0.0.2:8300","SerfStatus":"failed",
             "Leader":false,"LastContact":"12.5s","Healthy":false,"Voter":true}]}"#;
        let (url, _requests) = canned(
            [
                http(
                    "429 Too Many Requests",
                    &[("Content-Type", "application/json")],
                    unhealthy,
                ),
                http(
                    "404 Not Found",
                    &[],
                    "Session id '9a3e1b1e-0000-0000-0000-000000000000' not found",
                ),
                http("500 Internal Server Error", &[], "No cluster leader"),
            ]
            .into_iter()
            .map(|a| (Duration::ZERO, a))
            .collect(),
        );
        let c = client_for(&url);
        let health = c.autopilot_health(&plain()).await.unwrap();
        assert!(!health.healthy);
        assert_eq!(health.failure_tolerance, 0);
        assert_eq!(
            health.servers[1].last_contact,
            Some(Duration::from_millis(12_500))
        );
        assert_eq!(
            c.session_renew("9a3e1b1e-0000-0000-0000-000000000000")
                .await
                .unwrap(),
            None
        );
        let err = c.kv_get("k", &plain()).await.unwrap_err();
        assert!(err.is_no_leader(), "{err}");
        assert!(err.is_retryable());
    })
    .await
}

#[actix_rt::test]
async fn silent_agent_times_out_and_blocking_reads_get_their_wait_on_top() {
    common::bounded(async {
        let (url, _requests) = canned(vec![
            (
                Duration::from_millis(600),
                http("200 OK", &[("X-Consul-Index", "5")], "[]"),
            ),
            (
                Duration::from_millis(800),
                http("200 OK", &[("X-Consul-Index", "6")], "[]"),
            ),
        ]);
        let mut config = ConsulConfig::with_address(&url).unwrap();
        config.timeout = Duration::from_millis(300);
        let c = Client::new(config).unwrap();
        // A plain read gets the 300ms timeout: the agent's 600ms is too slow.
        let err = c.event_list(None, &plain()).await.unwrap_err();
        assert_eq!(err.kind(), "timeout", "{err}");
        assert!(err.is_retryable());
        // A blocking read with a 2s wait may take up to its wait and more: the agent's answer
        // a second later is fine.
        let answer = c
            .event_list(None, &QueryOptions::blocking(5, Duration::from_secs(2)))
            .await
            .unwrap();
        assert!(answer.value.is_empty());
        assert_eq!(answer.meta.index, 6);
    })
    .await
}
