//! The rollout's triggers end to end on the simulator: an `image` watch starts a rollout when a
//! new image is registered (no `consul-rehydrate` event), two replicas polling it still run it
//! once, and each step is posted to the `[notify]` webhook exactly once, with the bearer token;
//! a maintenance window that is closed now holds the rollout with the record saying when the
//! next one opens; and the `schedule` watch moves a waiting rollout once its window opens.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rehydrator::cloud::SimCloud;
use rehydrator_actors::plan::{Rollout, RolloutState};
use rehydrator_actors::ports::{CloudPort, Image, Machine, PortFuture};
use rehydrator_actors::tree::{self, Tree};
use serde_json::{json, Value};

/// How long each wait on the rollout may take (an image poll every 10 s, then the rollout).
const BOUND: Duration = Duration::from_secs(60);
const TOKEN: &str = "n0tify-t0ken";

/// The simulator's cloud, counting the image polls that came back: the first is the image
/// watch's baseline (it polls as soon as it starts; a rollout run asks for the image only after
/// its machines and autopilot's health, and no run happens before the first timer tick).
struct Counting {
    inner: SimCloud,
    images_seen: Rc<Cell<usize>>,
}

impl CloudPort for Counting {
    fn newest_image(&self) -> PortFuture<Option<Image>> {
        let (call, seen) = (self.inner.newest_image(), self.images_seen.clone());
        Box::pin(async move {
            let got = call.await;
            seen.set(seen.get() + 1);
            got
        })
    }
    fn machines(&self) -> PortFuture<Vec<Machine>> {
        self.inner.machines()
    }
    fn launch(&self, image: &str, token: &str) -> PortFuture<Machine> {
        self.inner.launch(image, token)
    }
    fn retire(&self, machine_id: &str) -> PortFuture<()> {
        self.inner.retire(machine_id)
    }
    fn machine(&self, machine_id: &str) -> PortFuture<Option<Machine>> {
        self.inner.machine(machine_id)
    }
}

/// The shared rig (a fast simulator, an HTTP client, a scratch directory) with replicas that
/// count their image polls.
struct Rig(common::rig::Rig);

impl std::ops::Deref for Rig {
    type Target = common::rig::Rig;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Rig {
    fn new(name: &str) -> Self {
        Self(common::rig::Rig::new(&format!("triggers-{name}"), 3))
    }

    /// A replica's configuration: spin-up and spin-down, triggered by `consul-rehydrate`, the
    /// servers' catalog entries, a 1 s timer and `extra` watches; `rollout` and `notify` are
    /// the bodies of those sections.
    fn config(&self, rollout: &str, notify: &str, extra: &str) -> String {
        format!(
            r#"[cluster]
name = "trig"
desired_servers = 3
[consul]
address = "{consul}"
[cloud]
type = "sim"
[lock]
session_ttl = "{ttl}s"
lock_delay = "{delay}s"
[rollout]
stable_timeout = "1m"
step_timeout = "20s"
{rollout}
[notify]
{notify}
[action.spin-up]
type = "spin-up"
[action.spin-down]
type = "spin-down"
{watches}{extra}"#,
            watches = common::rollout::WATCHES,
            consul = self.sim.url(),
            ttl = common::rollout::SESSION_TTL_SECS,
            delay = common::rollout::LOCK_DELAY_SECS,
        )
    }

    /// Starts replica `replica` on `config`; returns its tree and its image-poll counter.
    fn start(&self, replica: &str, config: &str) -> (Tree, Rc<Cell<usize>>) {
        let path = self.dir.join(format!("{replica}.toml"));
        std::fs::write(&path, config).unwrap();
        let env: HashMap<String, String> =
            [("REHYDRATOR_NOTIFY_TOKEN".to_owned(), TOKEN.to_owned())].into();
        let settings = rehydrator_config::load_with_env(&path, &env).unwrap();
        let seen = Rc::new(Cell::new(0));
        let cloud = Counting {
            inner: SimCloud::new(&self.sim.url()).unwrap(),
            images_seen: seen.clone(),
        };
        let ports = self.ports(Rc::new(cloud));
        (tree::start(&settings, replica, ports), seen)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.send_raw("GET", path, None).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn rollout(&self) -> Option<Rollout> {
        let (status, body) = self.get("/v1/kv/rehydrator/trig/rollout?raw").await;
        (status == 200)
            .then(|| serde_json::from_value(body).ok())
            .flatten()
    }

    async fn until(&self, what: &str, done: impl Fn(&Rollout) -> bool) -> Rollout {
        common::eventually(what, BOUND, || async {
            self.rollout().await.filter(|r| done(r))
        })
        .await
    }

    /// Waits until `n` of the replicas' watches are parked on the simulator.
    async fn parked(&self, n: u64) {
        common::eventually("the watches parking", BOUND, || async {
            let (_, stats) = self.get("/sim/stats").await;
            (stats["parked"].as_u64().unwrap_or(0) >= n).then_some(())
        })
        .await
    }
}

/// What the notification receiver saw: each body with its Authorization header.
#[derive(Default)]
struct Received {
    posts: Mutex<Vec<(Value, Option<String>)>>,
}

async fn receive(
    state: actix_web::web::Data<Received>,
    req: actix_web::HttpRequest,
    body: actix_web::web::Json<Value>,
) -> actix_web::HttpResponse {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state.posts.lock().unwrap().push((body.into_inner(), auth));
    actix_web::HttpResponse::NoContent().finish()
}

/// A webhook receiver on a loopback port: its URL, what it received, and its handle to stop it.
fn receiver() -> (String, Arc<Received>, actix_web::dev::ServerHandle) {
    let state = actix_web::web::Data::new(Received::default());
    let (url, handle) = common::serve_post("/notify", state.clone(), receive);
    (url, state.into_inner(), handle)
}

/// A window over every day from `from` to `to` minutes after `now`, in UTC (past midnight if
/// it must), as a `windows = [...]` line.
fn window_from(now: jiff::Timestamp, from: i64, to: i64) -> String {
    let hhmm = |minutes: i64| {
        let t = now + jiff::SignedDuration::from_mins(minutes);
        let z = t.to_zoned(jiff::tz::TimeZone::UTC);
        format!("{:02}:{:02}", z.hour(), z.minute())
    };
    format!(
        r#"windows = [{{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "{}", end = "{}", time_zone = "UTC" }}]"#,
        hhmm(from),
        hhmm(to)
    )
}

#[actix_rt::test]
async fn a_new_image_rolls_the_cluster_once_across_two_replicas_and_each_step_is_notified_once() {
    common::bounded_for(Duration::from_secs(120), async {
        let rig = Rig::new("image");
        let (url, received, receiver) = receiver();
        // The window is open now (and long after the test): the timer and the window compose.
        let config = rig.config(
            &window_from(jiff::Timestamp::now(), -60, 120),
            &format!("url = \"{url}\""),
            r#"
[[watch]]
name = "new-image"
type = "image"
interval = "10s"
actions = ["spin-up", "spin-down"]
"#,
        );
        let (one, seen_one) = rig.start("replica-1", &config);
        let (two, seen_two) = rig.start("replica-2", &config);
        common::eventually("both image watches' baselines", BOUND, || async {
            (seen_one.get() >= 1 && seen_two.get() >= 1).then_some(())
        })
        .await;

        rig.send("POST", "/sim/images", Some(json!({ "id": "image-b" })))
            .await;
        let r = rig
            .until("the rollout completing", |r| {
                matches!(r.state, RolloutState::Completed { .. })
            })
            .await;

        // Started by the image watch alone: no event was fired.
        let (_, events) = rig.get("/v1/event/list?name=consul-rehydrate").await;
        assert_eq!(events, json!([]), "no consul-rehydrate event");
        assert_eq!(r.target_image, "image-b");
        // The trigger is named after the image, so both replicas' fires were one job.
        let (status, receipt) = rig
            .get("/v1/kv/rehydrator/trig/receipts/spin-up/image-image-b?raw")
            .await;
        assert_eq!(status, 200, "the image trigger's receipt");
        assert_eq!(receipt["watch"], "new-image", "{receipt}");

        let (_, servers) = rig.get("/sim/servers").await;
        let servers = servers.as_array().unwrap();
        let live: Vec<&Value> = servers
            .iter()
            .filter(|s| s["machine"] != "terminated")
            .collect();
        assert_eq!(live.len(), 3, "{servers:#?}");
        assert!(live.iter().all(|s| s["image"] == "image-b"), "{servers:#?}");
        let launched = servers.iter().filter(|s| !s["token"].is_null()).count();
        assert_eq!(launched, 3, "exactly one launch per server: {servers:#?}");
        assert_eq!((r.launches.len(), r.retirements.len()), (3, 3));
        let (_, inv) = rig.get("/sim/invariants").await;
        common::rollout::assert_clean(&inv, 3);

        // The notifications: started, a launch and a retirement per server (and the leader's
        // leadership transfer), completed; each once, from whichever replica took the step.
        let posts = common::eventually("the completion notification", BOUND, || async {
            let posts = received.posts.lock().unwrap().clone();
            posts
                .iter()
                .any(|(b, _)| b["event"] == "rollout.completed")
                .then_some(posts)
        })
        .await;
        for (body, auth) in &posts {
            assert_eq!(auth.as_deref(), Some("Bearer n0tify-t0ken"), "{body}");
            assert_eq!(body["cluster"], "trig", "{body}");
            assert_eq!(body["rollout_id"], r.id.as_str(), "{body}");
            assert_eq!(body["target_image"], "image-b", "{body}");
            assert!(
                body["at"].as_str().is_some_and(|a| a.ends_with('Z')),
                "{body}"
            );
        }
        let events: Vec<&str> = posts
            .iter()
            .map(|(b, _)| b["event"].as_str().unwrap())
            .collect();
        assert_eq!(events.first(), Some(&"rollout.started"), "{events:?}");
        assert_eq!(events.last(), Some(&"rollout.completed"), "{events:?}");
        let count = |e: &str| events.iter().filter(|x| **x == e).count();
        assert_eq!(count("rollout.started"), 1, "{events:?}");
        assert_eq!(count("rollout.completed"), 1, "{events:?}");
        assert_eq!(count("rollout.stopped"), 0, "{events:?}");
        let steps = |kind: &str| -> Vec<String> {
            posts
                .iter()
                .filter(|(b, _)| b["event"] == "rollout.step" && b["step"]["kind"] == kind)
                .map(|(b, _)| b["step"]["machine"].as_str().unwrap_or_default().to_owned())
                .collect()
        };
        let (launches, retires) = (steps("launch"), steps("retire"));
        let recorded = |list: &[rehydrator_actors::plan::StepRecord]| -> BTreeSet<String> {
            list.iter().map(|s| s.machine.clone()).collect()
        };
        assert_eq!(launches.len(), 3, "one post per launch: {events:?}");
        assert_eq!(retires.len(), 3, "one post per retirement: {events:?}");
        assert_eq!(
            launches.into_iter().collect::<BTreeSet<_>>(),
            recorded(&r.launches)
        );
        assert_eq!(
            retires.into_iter().collect::<BTreeSet<_>>(),
            recorded(&r.retirements)
        );
        assert!(
            steps("leadership_transfer").len() <= 1,
            "leadership moves once, off the last old server: {events:?}"
        );

        one.shutdown().await;
        two.shutdown().await;
        receiver.stop(true).await;
    })
    .await;
}

#[actix_rt::test]
async fn outside_the_window_the_rollout_waits_and_says_when_the_next_opens() {
    common::bounded(async {
        let rig = Rig::new("window");
        // Opens in two hours, closes in three.
        let now = jiff::Timestamp::now();
        let opens = now + jiff::SignedDuration::from_mins(120);
        let config = rig.config(&window_from(now, 120, 180), "", "");
        let (tree, _) = rig.start("replica-1", &config);
        rig.send("POST", "/sim/images", Some(json!({ "id": "image-b" })))
            .await;
        rig.parked(2).await;
        // `send` fails the test unless Consul answers 2xx.
        rig.send("PUT", "/v1/event/fire/consul-rehydrate", None)
            .await;

        // The request is recorded (the rollout starts), but no server is touched.
        let r = rig
            .until("the rollout waiting for the window", |r| {
                r.waiting
                    .as_deref()
                    .is_some_and(|w| w.starts_with("outside the maintenance window"))
            })
            .await;
        assert!(r.is_active(), "{r:?}");
        let expected = opens
            .to_zoned(jiff::tz::TimeZone::UTC)
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .unwrap()
            .timestamp()
            .display_with_offset(jiff::tz::Offset::UTC)
            .to_string();
        assert_eq!(
            r.waiting.as_deref(),
            Some(format!("outside the maintenance window; the next opens at {expected}").as_str())
        );

        // Three more timer ticks later, still nothing launched.
        let ticks = |keys: Value| keys.as_array().map_or(0, Vec::len);
        let (_, before) = rig
            .get("/v1/kv/rehydrator/trig/receipts/spin-up/?keys")
            .await;
        let before = ticks(before);
        common::eventually("three more timer runs", BOUND, || async {
            let (_, now) = rig
                .get("/v1/kv/rehydrator/trig/receipts/spin-up/?keys")
                .await;
            (ticks(now) >= before + 3).then_some(())
        })
        .await;
        let r = rig.rollout().await.unwrap();
        assert!(r.launches.is_empty(), "no launch outside the window: {r:?}");
        let (_, servers) = rig.get("/sim/servers").await;
        assert_eq!(servers.as_array().unwrap().len(), 3, "{servers:#?}");
        assert!(servers
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["image"] == "image-a"));
        tree.shutdown().await;
    })
    .await;
}

#[actix_rt::test]
async fn a_waiting_rollout_moves_when_its_window_opens() {
    common::bounded_for(Duration::from_secs(150), async {
        let rig = Rig::new("opens");
        // The window opens at the start of a coming minute, 15 to 75 s from now, so the test
        // sees the rollout wait first.
        let now = jiff::Timestamp::now().as_second();
        let mut opens = (now / 60 + 1) * 60;
        if opens - now < 15 {
            opens += 60;
        }
        let opens = jiff::Timestamp::from_second(opens).unwrap();
        let hhmm = |t: jiff::Timestamp| {
            let z = t.to_zoned(jiff::tz::TimeZone::UTC);
            format!("{:02}:{:02}", z.hour(), z.minute())
        };
        let window = format!(
            r#"windows = [{{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "{}", end = "{}", time_zone = "UTC" }}]"#,
            hhmm(opens),
            hhmm(opens + jiff::SignedDuration::from_mins(30))
        );
        let (tree, _) = rig.start("replica-1", &rig.config(&window, "", ""));
        rig.send("POST", "/sim/images", Some(json!({ "id": "image-b" })))
            .await;
        rig.parked(2).await;
        // `send` fails the test unless Consul answers 2xx.
        rig.send("PUT", "/v1/event/fire/consul-rehydrate", None)
            .await;
        let expected = format!(
            "outside the maintenance window; the next opens at {}",
            opens.display_with_offset(jiff::tz::Offset::UTC)
        );
        let waiting = rig
            .until("the rollout waiting for the window", |r| {
                r.waiting.as_deref() == Some(expected.as_str())
            })
            .await;
        assert!(waiting.launches.is_empty(), "{waiting:?}");

        // The timer looks again each second; once the window opens the rollout goes through.
        let done = common::eventually(
            "the rollout completing after the window opened",
            Duration::from_secs(140),
            || async {
                rig.rollout()
                    .await
                    .filter(|r| matches!(r.state, RolloutState::Completed { .. }))
            },
        )
        .await;
        let opened_ms = opens.as_millisecond() as u64;
        assert_eq!(done.launches.len(), 3, "{done:?}");
        assert!(
            done.launches.iter().all(|l| l.at >= opened_ms),
            "every launch inside the window (opened at {opened_ms}): {done:?}"
        );
        let (_, inv) = rig.get("/sim/invariants").await;
        common::rollout::assert_clean(&inv, 3);
        tree.shutdown().await;
    })
    .await;
}

/// A key watch marked `request = true` asks for a rollout as `consul-rehydrate` does, in manual
/// mode: writing the key starts one, which completes. Unlike a user event, a key is never
/// dropped by Consul's 256-event buffer.
#[actix_rt::test]
async fn a_request_key_starts_a_rollout_in_manual_mode() {
    common::bounded_for(Duration::from_secs(90), async {
        let rig = Rig::new("request-key");
        let extra = r#"
[[watch]]
name = "request"
type = "key"
key = "rehydrator/trig/rehydrate"
actions = ["spin-up", "spin-down"]
request = true
"#;
        let (tree, _) = rig.start("replica-1", &rig.config("", "", extra));
        rig.register_image("image-b", false).await;
        // Three watches park: the event, the catalog and the key.
        rig.parked(3).await;
        assert!(
            rig.rollout().await.is_none(),
            "manual mode: nothing starts by itself"
        );
        rig.send(
            "PUT",
            "/v1/kv/rehydrator/trig/rehydrate",
            Some(json!({"image": "image-b"})),
        )
        .await;
        let r = rig
            .until("the rollout completing", |r| {
                matches!(r.state, RolloutState::Completed { .. })
            })
            .await;
        assert_eq!(r.target_image, "image-b");
        assert_eq!((r.launches.len(), r.retirements.len()), (3, 3));
        tree.shutdown().await;
    })
    .await;
}
