//! The Consul client's decoding of answers (rehydrator-consul), through its real calls: a
//! loopback "agent" answers each call with the input's bytes as its HTTP answer, so status,
//! headers (`X-Consul-Index`, `Content-Length` that lies), bodies cut short or oversized, and
//! JSON of every shape all reach the client as they would from a hostile agent. The input is
//! a call's name up to the first newline (kv_get, txn, watch_services, …; see `ask`), then the
//! raw answer. Whatever comes back, the call returns (an error or a value), never panics, and
//! never names the client's token unless the answer itself carried it.
#![no_main]

use std::rc::Rc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rehydrator_config::WatchKind;
use rehydrator_consul::{
    AgentServiceRegistration, CheckState, Client, ConsulConfig, EventFilter, KvDeleteOptions,
    KvPutOptions, KvTxnOp, QueryOptions, RaftPeer, SessionRequest, Token,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOKEN: &str = "fuzz-secret-7f3a";
/// The most of a request the agent reads (the largest the client sends here is a txn).
const MAX_REQUEST: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let (name, answer) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => return,
    };
    let Ok(name) = std::str::from_utf8(name) else {
        return;
    };
    AGENT.with(|(rt, listener)| {
        let outcome = rt.block_on(exchange(listener.clone(), name.trim(), answer.to_vec()));
        let Some(outcome) = outcome else {
            return;
        };
        let echoed = answer.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes());
        if !echoed {
            assert!(!outcome.contains(TOKEN), "the token leaked: {outcome}");
        }
    });
});

thread_local! {
    /// One runtime and one listening socket for the whole run.
    static AGENT: (actix_rt::SystemRunner, Rc<TcpListener>) = {
        let rt = actix_rt::System::new();
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("a loopback port for the fake agent");
        (rt, Rc::new(listener))
    };
}

/// Serves `answer` to every connection while the client makes `name`'s call; the outcome as
/// text, or `None` for a name no call has.
async fn exchange(listener: Rc<TcpListener>, name: &str, answer: Vec<u8>) -> Option<String> {
    let address = format!("http://{}", listener.local_addr().ok()?);
    let mut config = ConsulConfig::with_address(&address).ok()?;
    config.token = Some(Token::new(TOKEN));
    config.timeout = Duration::from_secs(2);
    // A fresh client each time: a pooled connection the last answer closed would make the
    // outcome depend on the input before.
    let client = Client::new(config).ok()?;
    let answer = Rc::new(answer);
    let agent = actix_rt::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            actix_rt::spawn(serve(stream, answer.clone()));
        }
    });
    let outcome = ask(&client, name).await;
    agent.abort();
    outcome
}

/// Reads one request (headers, then as much body as it declares) and writes `answer` as the
/// reply, then closes: the client sees exactly those bytes and the end of the stream.
async fn serve(mut stream: TcpStream, answer: Rc<Vec<u8>>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let Ok(n) = stream.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let declared = content_length(&request[..end]);
            if request.len() >= end + 4 + declared {
                break;
            }
        }
        if request.len() > MAX_REQUEST {
            break;
        }
    }
    let _ = stream.write_all(&answer).await;
    let _ = stream.shutdown().await;
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

/// Makes the call named `name` (as the client's method is named) with arguments like
/// rehydrator's own; its outcome as text.
async fn ask(c: &Client, name: &str) -> Option<String> {
    let q = QueryOptions::default();
    let blocking = QueryOptions::blocking(7, Duration::from_secs(1));
    let blocking = &blocking;
    let watch =
        |kind: WatchKind| async move { format!("{:?}", c.watch_read(&kind, blocking).await) };
    Some(match name {
        "kv_get" => format!(
            "{:?}",
            c.kv_get("rehydrator/prod/locks/step", blocking).await
        ),
        "kv_list" => format!("{:?}", c.kv_list("rehydrator/prod/", &q).await),
        "kv_keys" => format!("{:?}", c.kv_keys("rehydrator/", Some("/"), &q).await),
        "kv_get_raw" => format!("{:?}", c.kv_get_raw("rehydrator/prod/rollout", &q).await),
        "kv_put" => format!(
            "{:?}",
            c.kv_put(
                "k",
                b"v",
                &KvPutOptions {
                    cas: Some(3),
                    ..KvPutOptions::default()
                }
            )
            .await
        ),
        "kv_acquire" => format!("{:?}", c.kv_acquire("k", b"v", "s-1").await),
        "kv_delete" => format!("{:?}", c.kv_delete("k", &KvDeleteOptions::default()).await),
        "txn" => {
            let ops = [
                KvTxnOp::GetTree {
                    prefix: "rehydrator/prod/locks/step".into(),
                },
                KvTxnOp::Lock {
                    key: "rehydrator/prod/locks/step".into(),
                    value: b"r1".to_vec(),
                    session: "s-1".into(),
                },
                KvTxnOp::Get {
                    key: "rehydrator/prod/rollout".into(),
                },
            ];
            format!("{:?}", c.txn(&ops).await)
        }
        "session_create" => format!("{:?}", c.session_create(&SessionRequest::default()).await),
        "session_renew" => format!("{:?}", c.session_renew("s-1").await),
        "session_destroy" => format!("{:?}", c.session_destroy("s-1").await),
        "session_info" => format!("{:?}", c.session_info("s-1", &q).await),
        "session_list" => format!("{:?}", c.session_list(&q).await),
        "session_node" => format!("{:?}", c.session_node("n1", &q).await),
        "agent_self" => format!("{:?}", c.agent_self().await),
        "agent_members" => format!("{:?}", c.agent_members(false).await),
        "agent_leave" => format!("{:?}", c.agent_leave().await),
        "agent_force_leave" => format!("{:?}", c.agent_force_leave("n1", true).await),
        "agent_service_register" => format!(
            "{:?}",
            c.agent_service_register(&AgentServiceRegistration::default())
                .await
        ),
        "agent_service_deregister" => format!("{:?}", c.agent_service_deregister("r").await),
        "agent_check_pass" => format!("{:?}", c.agent_check_pass("r:alive").await),
        "raft_configuration" => format!("{:?}", c.raft_configuration(&q).await),
        "raft_remove_peer" => {
            format!(
                "{:?}",
                c.raft_remove_peer(&RaftPeer::Address("10.0.0.1:8300".into()))
                    .await
            )
        }
        "autopilot_health" => format!("{:?}", c.autopilot_health(&q).await),
        "autopilot_state" => format!("{:?}", c.autopilot_state(&q).await),
        "autopilot_configuration" => format!("{:?}", c.autopilot_configuration(&q).await),
        "transfer_leader" => format!("{:?}", c.transfer_leader(None).await),
        "status_leader" => format!("{:?}", c.status_leader().await),
        "status_peers" => format!("{:?}", c.status_peers().await),
        "catalog_services" => format!("{:?}", c.catalog_services(&q).await),
        "catalog_service" => format!("{:?}", c.catalog_service("consul", None, &q).await),
        "catalog_nodes" => format!("{:?}", c.catalog_nodes(&q).await),
        "catalog_node" => format!("{:?}", c.catalog_node("n1", &q).await),
        "health_service" => format!("{:?}", c.health_service("consul", None, true, &q).await),
        "health_checks" => format!("{:?}", c.health_checks("consul", &q).await),
        "health_state" => format!("{:?}", c.health_state(CheckState::Critical, &q).await),
        "health_node" => format!("{:?}", c.health_node("n1", &q).await),
        "event_fire" => {
            format!(
                "{:?}",
                c.event_fire("rehydrate", b"x", &EventFilter::default())
                    .await
            )
        }
        "event_list" => format!("{:?}", c.event_list(Some("rehydrate"), &q).await),
        "acl_token_self" => format!("{:?}", c.acl_token_self().await),
        "acl_policy_readable" => format!("{:?}", c.acl_policy_readable("p-1").await),
        "snapshot" => format!(
            "{:?}",
            c.snapshot(1 << 20, Duration::from_secs(2))
                .await
                .map(|s| (s.index, s.archive.len()))
        ),
        "watch_key" => {
            watch(WatchKind::Key {
                key: "rehydrator/prod/request".into(),
            })
            .await
        }
        "watch_keyprefix" => {
            watch(WatchKind::Keyprefix {
                prefix: "rehydrator/".into(),
            })
            .await
        }
        "watch_services" => watch(WatchKind::Services).await,
        "watch_nodes" => watch(WatchKind::Nodes).await,
        "watch_service" => {
            watch(WatchKind::Service {
                service: "consul".into(),
                tag: vec!["a".into()],
                passingonly: true,
            })
            .await
        }
        "watch_checks" => {
            watch(WatchKind::Checks {
                service: None,
                state: Some("critical".into()),
            })
            .await
        }
        "watch_event" => {
            watch(WatchKind::Event {
                event: "rehydrate".into(),
            })
            .await
        }
        _ => return None,
    })
}
