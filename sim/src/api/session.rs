//! The `/v1/session/...` endpoints (`agent/session_endpoint.go`): decode, apply through
//! `fsm::session` or read the table (`store::session`), answer as Consul does. rehydrator holds
//! its locks through a session.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::fsm::session::{create, destroy, renew};
use crate::http::{
    blocking, hold_for_leader, only, ApiError, Fresh, Params, QueryOptions, Read, ReadRequest,
};
use crate::state::Sim;
use crate::store::session::{CreateRequest, Session, Sessions};
use crate::watch::Topic;

/// Registers `/v1/session/...`; each route answers 405 for other methods, as Consul does.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/session/create", web::route().to(create_endpoint))
        .route(
            "/v1/session/destroy/{id:.*}",
            web::route().to(destroy_endpoint),
        )
        .route("/v1/session/renew/{id:.*}", web::route().to(renew_endpoint))
        .route("/v1/session/info/{id:.*}", web::route().to(info_endpoint))
        .route("/v1/session/node/{node:.*}", web::route().to(node_endpoint))
        .route("/v1/session/list", web::route().to(list_endpoint));
}

/// The decoded path after `prefix`, as Consul's `strings.TrimPrefix(req.URL.Path, ...)`.
fn tail(req: &HttpRequest, prefix: &str) -> String {
    let raw = req.path().strip_prefix(prefix).unwrap_or_default();
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

fn dc_of(params: &Params) -> QueryOptions {
    QueryOptions {
        index: 0,
        wait: Duration::ZERO,
        consistency: crate::http::Consistency::Default,
        dc: params
            .get("dc")
            .filter(|d| !d.is_empty())
            .map(str::to_owned),
        jitter: true,
    }
}

async fn create_endpoint(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let params = Params::from_request(&req);
    let agent_node = sim.lock().config.agent_node.clone();
    let create_req = if body.is_empty() {
        CreateRequest::defaults(&agent_node).fixup_checks()
    } else {
        CreateRequest::decode(&agent_node, &body)
            .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?
    };
    let opts = dc_of(&params);
    hold_for_leader(&sim, opts.dc.as_deref()).await;
    let mut st = sim.lock();
    opts.check_dc(&st)?;
    let id = create(&sim, &mut st, create_req)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .json(serde_json::json!({ "ID": id })))
}

async fn destroy_endpoint(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let params = Params::from_request(&req);
    let id = tail(&req, "/v1/session/destroy/");
    if id.is_empty() {
        return Err(ApiError::bad_request("Missing session"));
    }
    let opts = dc_of(&params);
    hold_for_leader(&sim, opts.dc.as_deref()).await;
    let mut st = sim.lock();
    opts.check_dc(&st)?;
    destroy(&mut st, &id)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body("true"))
}

async fn renew_endpoint(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let opts = QueryOptions::from_request(&req)?;
    let id = tail(&req, "/v1/session/renew/");
    if id.is_empty() {
        return Err(ApiError::bad_request("Missing session"));
    }
    hold_for_leader(&sim, opts.dc.as_deref()).await;
    let mut st = sim.lock();
    opts.check_dc(&st)?;
    match renew(&sim, &mut st, &id)? {
        Some(session) => Ok(HttpResponse::Ok().json(vec![session])),
        None => Err(ApiError::not_found(format!("Session id '{id}' not found"))),
    }
}

async fn info_endpoint(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let (ReadRequest { opts, .. }, id) =
        ReadRequest::named(&req, tail(&req, "/v1/session/info/"), "Missing session")?;
    read_sessions(&sim, &opts, |s| s.get(&id).cloned().into_iter().collect()).await
}

async fn node_endpoint(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let (ReadRequest { opts, .. }, node) =
        ReadRequest::named(&req, tail(&req, "/v1/session/node/"), "Missing node name")?;
    read_sessions(&sim, &opts, |s| s.for_node(&node)).await
}

async fn list_endpoint(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let ReadRequest { opts, .. } = ReadRequest::get(&req)?;
    read_sessions(&sim, &opts, Sessions::list).await
}

/// A blocking read of the sessions table; every such read answers at the table's index.
async fn read_sessions(
    sim: &Sim,
    opts: &QueryOptions,
    pick: impl Fn(&Sessions) -> Vec<Session>,
) -> Result<HttpResponse, ApiError> {
    let (meta, sessions) = blocking(sim, opts, Fresh::Greater, |st| {
        Ok(Read {
            index: st.sessions.index(),
            value: pick(&st.sessions),
            topics: vec![Topic::Sessions],
        })
    })
    .await?;
    Ok(meta.json(&sessions))
}

#[cfg(test)]
mod http_tests {
    use std::time::Duration;

    use actix_web::http::Method;

    use crate::testkit::{bounded, Api};

    async fn create(api: &Api, body: &str) -> String {
        let r = api.put("/v1/session/create", body.as_bytes()).await;
        assert_eq!(r.status, 200, "create {body}: {}", r.text());
        r.json()["ID"].as_str().unwrap_or_default().to_owned()
    }

    #[actix_rt::test]
    async fn lock_contention_and_lock_index_over_http() {
        bounded(async {
            let api = Api::start(1.0);
            let s1 = create(&api, "").await;
            let s2 = create(&api, r#"{"Name":"second"}"#).await;
            let r = api.put(&format!("/v1/kv/lock?acquire={s1}"), b"one").await;
            assert_eq!(r.text(), "true");
            let r = api.put(&format!("/v1/kv/lock?acquire={s2}"), b"two").await;
            assert_eq!(r.text(), "false", "held by s1");
            let r = api.put(&format!("/v1/kv/lock?acquire={s1}"), b"one'").await;
            assert_eq!(r.text(), "true", "the holder re-acquires");
            let e = api.get("/v1/kv/lock").await.json()[0].clone();
            assert_eq!(
                (e["LockIndex"].as_u64(), e["Session"].as_str()),
                (Some(1), Some(s1.as_str()))
            );
            let r = api.put(&format!("/v1/kv/lock?release={s2}"), b"").await;
            assert_eq!(r.text(), "false", "only the holder releases");
            let r = api.put(&format!("/v1/kv/lock?release={s1}"), b"one'").await;
            assert_eq!(r.text(), "true");
            // An API release applies no lock-delay: s2 gets it at once, LockIndex moves on.
            let r = api.put(&format!("/v1/kv/lock?acquire={s2}"), b"two").await;
            assert_eq!(r.text(), "true");
            let e = api.get("/v1/kv/lock").await.json()[0].clone();
            assert_eq!(
                (e["LockIndex"].as_u64(), e["Session"].as_str()),
                (Some(2), Some(s2.as_str()))
            );
            let r = api.put("/v1/kv/lock?acquire=", b"").await;
            assert_eq!(
                (r.status, r.text()),
                (
                    500,
                    format!("{}{}", crate::http::RPC_PREFIX, "missing session")
                )
            );
        })
        .await;
    }

    #[actix_rt::test]
    async fn destroy_releases_the_lock_and_applies_lock_delay() {
        bounded(async {
            // 1s of lock-delay is 20ms of wall time at 50x.
            let api = Api::start(50.0);
            let s1 = create(&api, r#"{"LockDelay":"1s"}"#).await;
            let s2 = create(&api, "").await;
            api.put(&format!("/v1/kv/leader?acquire={s1}"), b"s1 data")
                .await;
            let r = api.put(&format!("/v1/session/destroy/{s1}"), b"").await;
            assert_eq!((r.status, r.text()), (200, "true".into()));
            let e = api.get("/v1/kv/leader").await.json()[0].clone();
            assert!(e.get("Session").is_none(), "released");
            assert_eq!(e["Value"], "czEgZGF0YQ==", "release keeps the value");
            let r = api.put(&format!("/v1/kv/leader?acquire={s2}"), b"s2").await;
            assert_eq!(r.text(), "false", "the key is under lock-delay");
            // Lock-delay is wall-clock time passing; poll with a bound.
            let mut acquired = false;
            for _ in 0..200 {
                if api
                    .put(&format!("/v1/kv/leader?acquire={s2}"), b"s2")
                    .await
                    .text()
                    == "true"
                {
                    acquired = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(acquired, "the lock-delay never lapsed");
            let r = api.get(&format!("/v1/session/info/{s1}")).await;
            assert_eq!(r.json(), serde_json::json!([]));
        })
        .await;
    }

    #[actix_rt::test]
    async fn behavior_delete_deletes_the_keys() {
        bounded(async {
            let api = Api::start(1.0);
            let s = create(&api, r#"{"Behavior":"delete","LockDelay":0}"#).await;
            api.put(&format!("/v1/kv/eph?acquire={s}"), b"x").await;
            api.put(&format!("/v1/session/destroy/{s}"), b"").await;
            assert_eq!(api.get("/v1/kv/eph").await.status, 404);
            let r = api
                .put("/v1/session/create", br#"{"Behavior":"keep"}"#)
                .await;
            assert_eq!(
                (r.status, r.text()),
                (
                    500,
                    format!(
                        "{}{}",
                        crate::http::RPC_PREFIX,
                        "Invalid Behavior setting 'keep'"
                    )
                )
            );
        })
        .await;
    }

    #[actix_rt::test]
    async fn ttl_expiry_releases_the_lock_no_sooner_than_twice_the_ttl() {
        bounded(async {
            // A 10s TTL runs a 20s timer: 400ms of wall time at 50x.
            let api = Api::start(50.0);
            let started = tokio::time::Instant::now();
            let s = create(&api, r#"{"TTL":"10s"}"#).await;
            let r = api.put(&format!("/v1/kv/ttl-lock?acquire={s}"), b"v").await;
            assert_eq!(r.text(), "true");
            let idx = api.get("/v1/kv/ttl-lock").await.index.unwrap_or(0);
            // The blocking read returns when the expiry releases the key.
            let r = api
                .get(&format!("/v1/kv/ttl-lock?index={idx}&wait=1m"))
                .await;
            assert!(
                started.elapsed() >= Duration::from_millis(400),
                "expired before 2×TTL"
            );
            assert!(r.json()[0].get("Session").is_none(), "{}", r.text());
            let r = api.put(&format!("/v1/session/renew/{s}"), b"").await;
            assert_eq!(r.status, 404);
        })
        .await;
    }

    #[actix_rt::test]
    async fn renew_keeps_a_ttl_session_alive() {
        bounded(async {
            let api = Api::start(50.0);
            let s = create(&api, r#"{"TTL":"10s"}"#).await;
            // Renew every 5s of simulated time (100ms) for 60s, well past 2×TTL.
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let r = api.put(&format!("/v1/session/renew/{s}"), b"").await;
                assert_eq!(r.status, 200, "renew failed: {}", r.text());
                assert_eq!(r.json()[0]["ID"], s.as_str());
                assert_eq!(r.json()[0]["TTL"], "10s");
            }
            // Left alone, it lapses; the session list unblocks when it goes.
            let idx = api.get("/v1/session/list").await.index.unwrap_or(0);
            let r = api.get(&format!("/v1/session/list?index={idx}")).await;
            assert_eq!(r.json(), serde_json::json!([]));
        })
        .await;
    }

    #[actix_rt::test]
    async fn invalidate_for_node_ends_sessions_bound_to_the_check() {
        bounded(async {
            let api = Api::start(1.0);
            let node = api.sim().lock().config.agent_node.clone();
            let bound = create(&api, r#"{"LockDelay":"0s"}"#).await;
            let unbound = create(&api, r#"{"NodeChecks":[]}"#).await;
            api.put(&format!("/v1/kv/k?acquire={bound}"), b"").await;
            {
                let sim = api.sim().clone();
                let mut st = sim.lock();
                crate::fsm::session::invalidate_for_node(
                    &sim,
                    &mut st,
                    &node,
                    Some("some-other-check"),
                );
                assert!(st.sessions.contains(&bound));
                crate::fsm::session::invalidate_for_node(
                    &sim,
                    &mut st,
                    &node.to_uppercase(),
                    Some("SERFHEALTH"),
                );
                assert!(!st.sessions.contains(&bound), "the check's sessions end");
                assert!(
                    st.sessions.contains(&unbound),
                    "a session without the check stays"
                );
            }
            assert!(api.get("/v1/kv/k").await.json()[0].get("Session").is_none());
            {
                let sim = api.sim().clone();
                let mut st = sim.lock();
                crate::fsm::session::invalidate_for_node(&sim, &mut st, &node, None);
                assert!(
                    !st.sessions.contains(&unbound),
                    "a failed node ends all its sessions"
                );
            }
        })
        .await;
    }

    #[actix_rt::test]
    async fn reads_and_errors_match_consul() {
        bounded(async {
            let api = Api::start(1.0);
            let node = api.sim().lock().config.agent_node.clone();
            let s = create(&api, r#"{"Name":"n","TTL":"15s"}"#).await;
            let r = api.get(&format!("/v1/session/info/{s}")).await;
            let e = r.json()[0].clone();
            assert_eq!(e["Node"], node.as_str());
            assert_eq!(e["LockDelay"], 15_000_000_000u64);
            assert_eq!(e["Behavior"], "release");
            assert_eq!(e["NodeChecks"], serde_json::json!(["serfHealth"]));
            assert!(e.get("Checks").is_none());
            assert_eq!(r.index, e["CreateIndex"].as_u64());
            let r = api.get(&format!("/v1/session/node/{node}")).await;
            assert_eq!(r.json().as_array().map(Vec::len), Some(1));
            let r = api.get("/v1/session/node/nobody").await;
            assert_eq!(r.json(), serde_json::json!([]));
            let r = api.put("/v1/session/create", br#"{"Node":"nobody"}"#).await;
            assert_eq!(
                (r.status, r.text()),
                (
                    500,
                    format!("{}Missing node registration", crate::http::RPC_PREFIX)
                )
            );
            let r = api
                .put("/v1/session/create", br#"{"NodeChecks":["nope"]}"#)
                .await;
            assert_eq!(
                (r.status, r.text()),
                (
                    500,
                    format!(
                        "{}Missing check 'nope' registration",
                        crate::http::RPC_PREFIX
                    )
                )
            );
            let r = api.put("/v1/session/create", b"[1]").await;
            assert_eq!(r.status, 400);
            let r = api.put("/v1/session/destroy/", b"").await;
            assert_eq!((r.status, r.text()), (400, "Missing session".into()));
            let r = api
                .call(Method::DELETE, &format!("/v1/session/destroy/{s}"), b"")
                .await;
            assert_eq!(
                (r.status, r.header("Allow")),
                (405, Some("OPTIONS,PUT".into()))
            );
            {
                // A short hold for a leader keeps this test quick; kv's tests time the hold.
                let mut st = api.sim().lock();
                st.config.rpc_hold_timeout = Duration::from_millis(10);
                st.cluster.leader = None;
            }
            let r = api.put("/v1/session/create", b"").await;
            assert_eq!((r.status, r.text()), (500, "No cluster leader".into()));
        })
        .await;
    }
}
