//! `/v1/event/fire` and `/v1/event/list` (`agent/event_endpoint.go`) over the agent's buffer
//! (`store::event`). rehydrator's `fire` command and the demo fire events here and watch the
//! list. The simulator has one agent, so the buffer is that agent's view.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::fsm::event::fire;
use crate::http::{
    blocking, only, ApiError, Consistency, Fresh, Params, QueryOptions, Read, MAX_WAIT,
};
use crate::state::Sim;
use crate::store::event::{list_index, Fire};
use crate::watch::Topic;

/// Registers `/v1/event/fire/{name}` (PUT) and `/v1/event/list` (GET).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/event/fire/{name:.*}", web::route().to(fire_endpoint))
        .route("/v1/event/list", web::route().to(list_endpoint));
}

async fn fire_endpoint(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let params = Params::from_request(&req);
    let raw = req
        .path()
        .strip_prefix("/v1/event/fire/")
        .unwrap_or_default();
    let name = percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned();
    if name.is_empty() {
        return Err(ApiError::bad_request("Missing name"));
    }
    let filter = |k: &str| params.get(k).unwrap_or_default().to_owned();
    let fire_req = Fire {
        name,
        payload: (!body.is_empty()).then(|| body.to_vec()),
        node_filter: filter("node"),
        service_filter: filter("service"),
        tag_filter: filter("tag"),
    };
    let mut st = sim.lock();
    if let Some(dc) = params.get("dc").filter(|d| !d.is_empty()) {
        if dc != st.config.datacenter {
            return Err(ApiError::internal("No path to datacenter"));
        }
    }
    let event = fire(&mut st, fire_req)?;
    Ok(HttpResponse::Ok().json(event))
}

async fn list_endpoint(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "GET")?;
    let params = Params::from_request(&req);
    let opts = list_options(&params)?;
    let name = params
        .get("name")
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let (meta, events) = blocking(&sim, &opts, Fresh::Different, |st| {
        let events = st.events.list(name.as_deref());
        Ok(Read {
            index: list_index(&events),
            value: events,
            topics: vec![Topic::Events],
        })
    })
    .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("X-Consul-Index", meta.index.to_string()))
        .json(events))
}

/// How `/v1/event/list` reads its query: Consul's handler parses only `wait` and `index` (so
/// `?stale&consistent` is no error here), waits its maximum when given an index and no wait,
/// and adds no jitter. The list is the local agent's memory: no leader, no datacenter. Stale
/// consistency keeps `blocking` from asking for a leader; only the index header is sent.
fn list_options(params: &Params) -> Result<QueryOptions, ApiError> {
    let mut opts = QueryOptions::parse_wait(params)?;
    opts.consistency = Consistency::Stale;
    opts.jitter = false;
    if opts.wait.is_zero() {
        opts.wait = MAX_WAIT;
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::event::*;

    fn list_opts(query: &str) -> Result<QueryOptions, String> {
        let req = actix_web::test::TestRequest::with_uri(&format!("/v1/event/list?{query}"))
            .to_http_request();
        list_options(&Params::from_request(&req)).map_err(|e| e.message)
    }

    #[test]
    fn the_list_reads_only_wait_and_index_and_waits_without_jitter() {
        let o = list_opts("index=5&stale&consistent&max_stale=bogus");
        assert_eq!(o.as_ref().map(|o| o.index).ok(), Some(5), "{:?}", o.err());
        assert_eq!(list_opts("index=5").map(|o| o.timeout()), Ok(MAX_WAIT));
        assert_eq!(
            list_opts("index=5&wait=7s").map(|o| o.timeout()),
            Ok(std::time::Duration::from_secs(7))
        );
        assert_eq!(
            list_opts("index=5&wait=1h").map(|o| o.timeout()),
            Ok(MAX_WAIT)
        );
        assert_eq!(list_opts("index=x").err().as_deref(), Some("Invalid index"));
    }

    fn ev(name: &str) -> UserEvent {
        UserEvent {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.into(),
            payload: None,
            node_filter: String::new(),
            service_filter: String::new(),
            tag_filter: String::new(),
            version: EVENT_VERSION,
            ltime: 0,
        }
    }

    #[test]
    fn ring_buffer_keeps_the_last_256_with_lamport_times() {
        let mut events = Events::default();
        for i in 0..300 {
            assert!(events.deliver(ev(&format!("e{i}")), "agent"));
        }
        let list = events.list(None);
        assert_eq!(list.len(), EVENT_BUFFER);
        assert_eq!(list.first().map(|e| e.name.as_str()), Some("e44"));
        assert_eq!(list.last().map(|e| e.name.as_str()), Some("e299"));
        assert_eq!(
            list.first().map(|e| e.ltime),
            Some(45),
            "serf's clock starts at 1"
        );
        assert_eq!(list.last().map(|e| e.ltime), Some(300));
        assert_eq!(events.list(Some("e299")).len(), 1);
    }

    #[test]
    fn index_is_the_uuid_folded_to_64_bits() {
        assert_eq!(list_index(&[]), 1);
        assert_eq!(
            uuid_to_u64("00000000-0000-0001-0000-000000000003"),
            1 ^ 3,
            "the first 16 hex digits XOR the last 16"
        );
        assert_eq!(
            uuid_to_u64("b54fe110-7af5-cafc-d1fb-afc8ba432b1c"),
            0xb54fe1107af5cafc ^ 0xd1fbafc8ba432b1c
        );
    }

    #[test]
    fn filters_decide_what_the_agent_keeps() {
        let mut events = Events::default();
        let mut e = ev("a");
        e.node_filter = "^sim-".into();
        assert!(events.deliver(e.clone(), "sim-agent"));
        e.node_filter = "^server".into();
        assert!(!events.deliver(e, "sim-agent"));
        let mut s = ev("b");
        s.service_filter = "web".into();
        assert!(
            !events.deliver(s, "sim-agent"),
            "the agent runs no services"
        );
        assert!(!events.deliver(ev(REMOTE_EXEC), "sim-agent"));
        assert_eq!(events.list(None).len(), 1);
    }

    #[test]
    fn the_regex_subset_matches_like_go() {
        let m = |p: &str, t: &str| Regex::parse(p).map(|r| r.is_match(t));
        assert_eq!(m("server", "consul-server-1"), Ok(true), "unanchored");
        assert_eq!(m("^server-[0-9]+$", "server-12"), Ok(true));
        assert_eq!(m("^server-[0-9]+$", "server-"), Ok(false));
        assert_eq!(m("a.*c", "abbbc"), Ok(true));
        assert_eq!(m("^(web|db)-\\d$", "db-1"), Ok(true));
        assert_eq!(m("^(web|db)-\\d$", "cache-1"), Ok(false));
        assert_eq!(m("colou?r", "color"), Ok(true));
        assert_eq!(m("[^a-z]", "abc"), Ok(false));
        assert_eq!(m("", "anything"), Ok(true));
        assert!(m("[abc", "a").is_err_and(|e| e == "missing closing ]: `[abc`"));
        assert!(m("(a", "a").is_err());
        assert!(m("a)", "a").is_err());
        assert!(m("*a", "a").is_err());
    }

    #[test]
    fn event_json_matches_consul() {
        let mut e = ev("deploy");
        e.id = "b54fe110-7af5-cafc-d1fb-afc8ba432b1c".into();
        let v = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"ID":"b54fe110-7af5-cafc-d1fb-afc8ba432b1c","Name":"deploy",
                "Payload":null,"NodeFilter":"","ServiceFilter":"","TagFilter":"",
                "Version":1,"LTime":0})
        );
        e.payload = Some(b"hi".to_vec());
        assert_eq!(
            serde_json::to_value(&e).unwrap_or_default()["Payload"],
            "aGk="
        );
    }
}

#[cfg(test)]
mod http_tests {
    use actix_web::http::Method;

    use crate::store::event::uuid_to_u64;
    use crate::testkit::{bounded, Api};

    #[actix_rt::test]
    async fn the_list_ignores_consistency_flags() {
        bounded(async {
            let api = Api::start(1.0);
            let r = api.get("/v1/event/list?stale&consistent").await;
            assert_eq!((r.status, r.index), (200, Some(1)), "{}", r.text());
        })
        .await;
    }

    #[actix_rt::test]
    async fn fire_then_list_with_lamport_times_and_the_id_index() {
        bounded(async {
            let api = Api::start(1.0);
            let r = api.get("/v1/event/list").await;
            assert_eq!((r.json(), r.index), (serde_json::json!([]), Some(1)));
            assert!(
                r.header("X-Consul-KnownLeader").is_none(),
                "only the index is sent"
            );
            let r = api.put("/v1/event/fire/deploy", b"v2").await;
            assert_eq!(r.status, 200);
            let fired = r.json();
            assert_eq!(fired["LTime"], 0, "the fire response precedes delivery");
            assert_eq!(fired["Payload"], "djI=");
            assert_eq!(fired["Version"], 1);
            let r = api.put("/v1/event/fire/other", b"").await;
            assert_eq!(r.json()["Payload"], serde_json::Value::Null);
            let r = api.get("/v1/event/list").await;
            let list = r.json();
            assert_eq!(list[0]["ID"], fired["ID"]);
            assert_eq!(
                (list[0]["LTime"].as_u64(), list[1]["LTime"].as_u64()),
                (Some(1), Some(2))
            );
            let last_id = list[1]["ID"].as_str().unwrap_or_default().to_owned();
            assert_eq!(r.index, Some(uuid_to_u64(&last_id)));
            let r = api.get("/v1/event/list?name=deploy").await;
            assert_eq!(r.json().as_array().map(Vec::len), Some(1));
            let first_id = fired["ID"].as_str().unwrap_or_default();
            assert_eq!(r.index, Some(uuid_to_u64(first_id)));
        })
        .await;
    }

    #[actix_rt::test]
    async fn blocking_list_returns_when_the_index_differs() {
        bounded(async {
            let api = Api::start(1.0);
            let uri = "/v1/event/list?name=mine&index=1&wait=30s";
            let mut read = Box::pin(api.get(uri));
            api.until_parked(&mut read, 1).await;
            // An event the name filter drops wakes the query, which parks again.
            api.put("/v1/event/fire/theirs", b"").await;
            api.until_parked(&mut read, 1).await;
            let (r, fired) = tokio::join!(read, api.put("/v1/event/fire/mine", b"x"));
            assert_eq!(r.json()[0]["ID"], fired.json()["ID"]);
            assert_ne!(r.index, Some(1));
        })
        .await;
    }

    #[actix_rt::test]
    async fn fire_needs_no_leader_and_checks_its_filters() {
        bounded(async {
            let api = Api::start(1.0);
            api.sim().lock().cluster.leader = None;
            let r = api.put("/v1/event/fire/gossip", b"").await;
            assert_eq!(r.status, 200, "events are gossip: {}", r.text());
            let r = api.get("/v1/event/list").await;
            assert_eq!(r.json().as_array().map(Vec::len), Some(1));
            let r = api.put("/v1/event/fire/x?tag=v1", b"").await;
            assert_eq!(
                (r.status, r.text()),
                (
                    500,
                    "Cannot provide tag filter without service filter".into()
                )
            );
            let r = api.put("/v1/event/fire/x?node=[", b"").await;
            assert_eq!(
                (r.status, r.text()),
                (
                    500,
                    "Invalid node filter: error parsing regexp: missing closing ]: `[`".into()
                )
            );
            let r = api.put("/v1/event/fire/x?node=^nomatch$", b"").await;
            assert_eq!(r.status, 200, "a filter the agent fails still fires");
            assert_eq!(
                api.get("/v1/event/list?name=x").await.json(),
                serde_json::json!([])
            );
            let r = api.put("/v1/event/fire/", b"").await;
            assert_eq!((r.status, r.text()), (400, "Missing name".into()));
            let r = api.call(Method::POST, "/v1/event/fire/x", b"").await;
            assert_eq!(r.status, 405);
            let r = api.put("/v1/event/fire/x?dc=dc9", b"").await;
            assert_eq!((r.status, r.text()), (500, "No path to datacenter".into()));
            let big = vec![b'p'; 1024];
            let r = api.put("/v1/event/fire/big", &big).await;
            assert_eq!(r.status, 500);
        })
        .await;
    }
}
