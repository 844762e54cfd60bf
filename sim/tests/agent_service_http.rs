#![allow(clippy::unwrap_used)]
//! The agent's services and TTL checks (`/v1/agent/service/*`, `/v1/agent/check/*`): the
//! answers real Consul 1.8.7 gave for the same requests, and the agent removing a service whose
//! check stayed critical for its `DeregisterCriticalServiceAfter`. The happy path (a session
//! tied to a check, ended when it expires) is a client contract check run against real Consul
//! too (`tests/consul_client.rs`).

use serde_json::{json, Value};

use crate::common::{self, Api, LIMIT};

fn check_of<'a>(checks: &'a Value, id: &str) -> Option<&'a Value> {
    checks.as_array()?.iter().find(|c| c["CheckID"] == id)
}

#[actix_rt::test]
async fn refusals_are_consuls_and_a_critical_check_reaps_its_service() {
    let sim = common::start();
    let api = Api::new(&sim);
    actix_rt::time::timeout(LIMIT, async {
        let (status, body) = api
            .call("PUT", "/v1/agent/service/register", Some(json!({"ID": "y"})))
            .await;
        assert_eq!((status, body), (400, json!("Missing service name")));
        let http_check = json!({"Name": "h", "Check": {"HTTP": "http://127.0.0.1:1/", "Interval": "10s"}});
        let (status, body) = api.call("PUT", "/v1/agent/service/register", Some(http_check)).await;
        assert_eq!(status, 400);
        assert!(body.as_str().unwrap().contains("TTL checks only"), "{body}");
        let bad = json!({"Name": "b", "Check": {"TTL": "5s", "Status": "bogus"}});
        let (status, body) = api.call("PUT", "/v1/agent/service/register", Some(bad)).await;
        assert_eq!((status, body), (400, json!("Invalid check status: 'bogus'")));

        let (status, body) = api.call("PUT", "/v1/agent/check/pass/nope", None).await;
        assert_eq!(
            (status, body),
            (500, json!("CheckID \"nope\" does not have associated TTL"))
        );
        let (status, _) = api.call("GET", "/v1/agent/check/pass/nope", None).await;
        assert_eq!(status, 405);
        let (status, _) = api
            .call("PUT", "/v1/agent/service/deregister/nope", None)
            .await;
        assert_eq!(status, 200, "an unknown service is no error");

        // Without an ID or status: `service:<name>`, critical; reaped after the floor of 1m
        // (1.2 s at the tests' time scale) though it asked for 10s.
        let reaped = json!({"Name": "x", "Check": {"TTL": "3s", "DeregisterCriticalServiceAfter": "10s"}});
        let (status, _) = api.call("PUT", "/v1/agent/service/register", Some(reaped)).await;
        assert_eq!(status, 200);
        let (_, checks) = api.get("/v1/health/checks/x").await;
        let check = check_of(&checks, "service:x").expect("the default check ID");
        assert_eq!(check["Status"], "critical");
        assert_eq!(check["Name"], "Service 'x' check");
        let started = std::time::Instant::now();
        api.until("/v1/health/checks/x", "the service reaped", |_, v| {
            v.as_array().is_some_and(Vec::is_empty)
        })
        .await;
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(1000),
            "reaped before the 1m floor: {:?}",
            started.elapsed()
        );

        // A passed check expires with "TTL expired" when no update comes.
        let ttl = json!({"ID": "t", "Name": "t", "Check": {"CheckID": "t1", "TTL": "5s", "Status": "passing"}});
        let (status, _) = api.call("PUT", "/v1/agent/service/register", Some(ttl)).await;
        assert_eq!(status, 200);
        let (status, _) = api.call("PUT", "/v1/agent/check/warn/t1?note=slow", None).await;
        assert_eq!(status, 200);
        let (_, checks) = api.get("/v1/health/checks/t").await;
        let check = check_of(&checks, "t1").unwrap();
        assert_eq!((&check["Status"], &check["Output"]), (&json!("warning"), &json!("slow")));
        let expired = api
            .until("/v1/health/checks/t", "the TTL to expire", |_, v| {
                check_of(v, "t1").is_some_and(|c| c["Status"] == "critical")
            })
            .await;
        assert_eq!(check_of(&expired, "t1").unwrap()["Output"], "TTL expired");
    })
    .await
    .expect("bounded");
}
