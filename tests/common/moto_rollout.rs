//! The rollout end to end through a moto-backed cloud (`ec2` or `ecs`), shared by
//! `tests/rollout_ec2.rs` and `tests/rollout_ecs.rs`: the replica's cloud is `Ec2Cloud` or
//! `EcsCloud` on moto's server (the real SDK clients), while Consul is the simulator. A
//! test-side bridge makes moto's machines real servers: every machine of the cluster the cloud
//! lists as running becomes a simulated server named after its instance ID (the launch
//! template's node_name convention), on its AMI; every machine gone from the list is terminated
//! in the simulator (its agent leaves). For `ecs`, `moto::registrar` plays the ECS agent, so a
//! machine runs once its instance registered and its Consul task runs.
//!
//! The cluster starts as N machines on AMI A launched through the cloud; the simulator's own
//! seed servers, which no machine backs, leave once those are voters. Then AMI B is registered,
//! `consul-rehydrate` fired, and the checks are those of `tests/rollout.rs`: every server on B,
//! N launches and N retirements, quorum never lost, at most one voter missing, at most N+1
//! machines, the leader never retired while leading. moto also shows no machine launched twice
//! (and, for `ecs`, one Consul task per machine, the retired ones stopped and deregistered).
//!
//! With `Fault::TerminateFirstLaunch` the test terminates the rollout's first new instance in
//! EC2 right after the record shows its launch: the rollout records it once as a failed launch
//! with EC2's reason, launches again with a new token, and completes with one instance more.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::moto::{
    asg_client, client, credentials, ecs_client, ecs_cluster, launch_template, moto, moto_ecs,
    register, registrar, server_group, server_group_sized, Moto, ECS_CLUSTER, GROUP, TASK_FAMILY,
};
use super::proxy::Mode;
use super::rig::send;
use rehydrator::cloud::ec2::CLUSTER_TAG;
use rehydrator::cloud::{Ec2Cloud, EcsCloud};
use rehydrator_actors::plan::{Rollout, RolloutState};
use rehydrator_actors::ports::{CloudPort, MachineState};
use rehydrator_actors::tree;
use rehydrator_config::{CloudSettings, Settings};
use rehydrator_sim::SimConfig;
use serde_json::{json, Value};

/// The cloud backend a rollout runs through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Ec2,
    Ecs,
    /// `ec2` with `cloud.auto_scaling_group`: the servers are a group's, seeded by the group.
    Asg,
    /// `ecs` whose container instances are a group's: seeded through the cloud, one step's
    /// launch at a time, so each gets its Consul task.
    EcsAsg,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Ec2 | Backend::Asg => "ec2",
            Backend::Ecs | Backend::EcsAsg => "ecs",
        }
    }
}

/// What the test does to the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// TerminateInstances on the first new instance as soon as the record lists it.
    TerminateFirstLaunch,
    /// Once the first launch is recorded, the replica's cloud (a proxy in front of moto; the
    /// bridge's stays direct) throttles every request, then fails it with a 500, then holds
    /// it past the step's timeout, then recovers.
    CloudOutage,
}

/// An error answer as EC2's Query API gives it (XML), with `status` (e.g. `503 Service
/// Unavailable`).
fn ec2_error(status: &str, code: &str, message: &str) -> String {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
         <Message>{message}</Message></Error></Errors><RequestID>fault</RequestID></Response>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// How often the ECS cloud polls for a registration (5 s in production).
const ECS_POLL: Duration = Duration::from_millis(50);

/// The whole test: moto's start, the bootstrap, the rollout.
pub const TEST_BOUND: Duration = Duration::from_secs(120);
/// Any one wait inside it.
const WAIT_BOUND: Duration = Duration::from_secs(60);

/// How often the bridge mirrors moto into the simulator.
const BRIDGE_TICK: Duration = Duration::from_millis(50);

const CLUSTER: &str = "roll";

/// The shared rig (a fast simulator, an HTTP client, a scratch directory) with moto.
struct Rig {
    base: super::rig::Rig,
    backend: Backend,
    moto: Moto,
    ec2: aws_sdk_ec2::Client,
}

impl std::ops::Deref for Rig {
    type Target = super::rig::Rig;
    fn deref(&self) -> &Self::Target {
        &self.base
    }
}

impl Rig {
    async fn until<T, F, Fut>(&self, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(v) = f().await {
                return v;
            }
            assert!(
                start.elapsed() < WAIT_BOUND,
                "{what} did not happen within {WAIT_BOUND:?}: {:#?}",
                self.servers().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Autopilot healthy with `voters` voters, all of them `alive`.
    async fn healthy_with(&self, voters: usize) -> bool {
        let resp = self
            .http
            .get(format!("{}/v1/operator/autopilot/health", self.sim.url()))
            .send()
            .await;
        let Ok(mut resp) = resp else { return false };
        let Ok(health) = resp.json::<Value>().limit(1 << 20).await else {
            return false;
        };
        let servers = health["Servers"].as_array().cloned().unwrap_or_default();
        health["Healthy"] == true
            && servers.iter().filter(|s| s["Voter"] == true).count() == voters
            && servers.len() == voters
    }

    async fn rollout(&self) -> Option<Rollout> {
        let mut resp = self
            .http
            .get(format!(
                "{}/v1/kv/rehydrator/{CLUSTER}/rollout?raw",
                self.sim.url()
            ))
            .send()
            .await
            .ok()?;
        if resp.status() != 200 {
            return None;
        }
        serde_json::from_slice(&resp.body().await.ok()?).ok()
    }

    fn settings(&self, desired: usize) -> Settings {
        self.settings_at(desired, &self.moto.url)
    }

    /// The settings with the cloud's endpoint at `endpoint`.
    fn settings_at(&self, desired: usize, endpoint: &str) -> Settings {
        let launch = match self.backend {
            Backend::Asg | Backend::EcsAsg => format!("auto_scaling_group = \"{GROUP}\""),
            Backend::Ec2 | Backend::Ecs => "launch_template = \"consul-server\"".into(),
        };
        let mut cloud = format!(
            "type = \"{}\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n{launch}\nimage_name = \"consul-server-*\"",
            self.backend.name(),
            endpoint
        );
        if matches!(self.backend, Backend::Ecs | Backend::EcsAsg) {
            cloud.push_str(&format!(
                "\necs_cluster = \"{ECS_CLUSTER}\"\ntask_definition = \"{TASK_FAMILY}\"\nregistration_timeout = \"20s\""
            ));
        }
        let text = super::rollout::config(
            CLUSTER,
            desired,
            &self.sim.url(),
            &cloud,
            "stable_timeout = \"1m\"",
        );
        let path = self.dir.join("rehydrator.toml");
        std::fs::write(&path, text).unwrap();
        rehydrator_config::load_with_env(&path, &HashMap::new()).unwrap()
    }
}

/// Mirrors the cloud's running machines into simulated servers until aborted; what went wrong
/// is kept in `errors` (a panic in a spawned task would only end the task).
fn bridge(
    cloud: Rc<dyn CloudPort>,
    sim: String,
    known_images: BTreeSet<String>,
    errors: Rc<RefCell<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    actix_rt::spawn(async move {
        let http = awc::Client::default();
        let mut images = known_images;
        let mut mirrored = BTreeSet::<String>::new();
        loop {
            match cloud.machines().await {
                Ok(machines) => {
                    let live: BTreeSet<String> = machines.iter().map(|m| m.id.clone()).collect();
                    // Pending: no Consul agent yet (for ecs, its task is not running).
                    for m in machines.iter().filter(|m| m.state == MachineState::Running) {
                        if mirrored.contains(&m.id) {
                            continue;
                        }
                        if images.insert(m.image.clone()) {
                            if let Err(e) = send(
                                &http,
                                &sim,
                                "POST",
                                "/sim/images",
                                Some(json!({"id": m.image})),
                            )
                            .await
                            {
                                errors.borrow_mut().push(e);
                            }
                        }
                        let body = json!({"image": m.image, "name": m.id, "token": m.id});
                        match send(&http, &sim, "POST", "/sim/servers", Some(body)).await {
                            Ok(_) => {
                                mirrored.insert(m.id.clone());
                            }
                            Err(e) => errors.borrow_mut().push(e),
                        }
                    }
                    let gone: Vec<String> = mirrored.difference(&live).cloned().collect();
                    for id in gone {
                        let path = format!("/sim/servers/{id}/terminate");
                        match send(&http, &sim, "POST", &path, None).await {
                            Ok(_) => {
                                mirrored.remove(&id);
                            }
                            Err(e) => errors.borrow_mut().push(e),
                        }
                    }
                }
                Err(e) => errors.borrow_mut().push(format!("moto: {e}")),
            }
            tokio::time::sleep(BRIDGE_TICK).await;
        }
    })
}

/// A rollout of `n` servers from AMI A to AMI B through `backend` on moto.
pub async fn moto_rollout(backend: Backend, n: usize) {
    moto_rollout_with(backend, n, Fault::None).await;
}

/// A rollout of `n` servers from AMI A to AMI B through `backend` on moto, with `fault`.
pub async fn moto_rollout_with(backend: Backend, n: usize, fault: Fault) {
    let moto = match backend {
        Backend::Ec2 | Backend::Asg => moto(),
        Backend::Ecs | Backend::EcsAsg => moto_ecs(),
    };
    let ec2 = client(&moto.url);
    let ami_a = register(&ec2, "consul-server-a").await;
    launch_template(&ec2, &ami_a).await;
    let ecs = ecs_client(&moto.url);
    // Kept for the whole test: it stands in for the ECS agent of every instance launched.
    let agent = match backend {
        Backend::Ec2 | Backend::Asg => None,
        Backend::Ecs | Backend::EcsAsg => {
            ecs_cluster(&moto.url, &ecs).await;
            Some(registrar(&moto.url, CLUSTER))
        }
    };
    let base = super::rig::Rig::with(
        &format!("rollout-{}-{n}", backend.name()),
        SimConfig {
            image: ami_a.clone(),
            ..super::rig::fast_sim(n)
        },
    );
    let rig = Rig {
        base,
        backend,
        moto,
        ec2,
    };
    let settings = rig.settings(n);
    // The replica's cloud and the bridge's are built as `run` builds it, with test keys.
    let cloud: Rc<dyn CloudPort> = match &settings.cloud {
        // moto launches a group's instance at once: the group's waits shrink to fit.
        CloudSettings::Ec2(aws) => Rc::new(
            Ec2Cloud::load(aws, CLUSTER, Some(credentials()))
                .await
                .unwrap()
                .with_group_waits(WAIT_BOUND, ECS_POLL, ECS_POLL * 4),
        ),
        CloudSettings::Ecs(aws) => Rc::new(
            EcsCloud::load(aws, CLUSTER, Some(credentials()))
                .await
                .unwrap()
                .with_poll_interval(ECS_POLL),
        ),
        other => panic!("the config names a moto-backed cloud: {other:?}"),
    };
    if backend == Backend::Asg {
        // Before the bridge, which lists the group from its first tick.
        let n = i32::try_from(n).unwrap();
        server_group(&rig.ec2, &asg_client(&rig.moto.url), CLUSTER, n).await;
    }
    if backend == Backend::EcsAsg {
        let n = i32::try_from(n).unwrap();
        server_group_sized(&rig.ec2, &asg_client(&rig.moto.url), CLUSTER, 0, n).await;
    }
    let errors = Rc::new(RefCell::new(Vec::new()));
    let bridge = bridge(
        cloud.clone(),
        rig.sim.url(),
        BTreeSet::from([ami_a.clone()]),
        errors.clone(),
    );

    // The cluster's real servers: N instances on A, through moto and the bridge; a group's
    // are the group's own, launched when it is made.
    let mut seeds = Vec::new();
    if backend == Backend::Asg {
        seeds.extend(cloud.machines().await.unwrap().into_iter().map(|m| m.id));
    } else if backend == Backend::EcsAsg {
        let asg = asg_client(&rig.moto.url);
        for i in 0..n {
            seeds.push(cloud.launch(&ami_a, &format!("seed-{i}")).await.unwrap().id);
            // As a finished step leaves the group: its step record gone.
            forget_step(&asg).await;
        }
        // The usual layout from here: min = max = desired, nothing suspended, no record.
        let n = i32::try_from(n).unwrap();
        asg.update_auto_scaling_group()
            .auto_scaling_group_name(GROUP)
            .min_size(n)
            .max_size(n)
            .send()
            .await
            .unwrap();
        asg.resume_processes()
            .auto_scaling_group_name(GROUP)
            .scaling_processes("AZRebalance")
            .send()
            .await
            .unwrap();
        forget_record(&asg).await;
    } else {
        for i in 0..n {
            seeds.push(cloud.launch(&ami_a, &format!("seed-{i}")).await.unwrap().id);
        }
    }
    rig.until("the instances becoming voters", || async {
        let servers = rig.servers().await;
        let voters = servers
            .iter()
            .filter(|s| seeds.iter().any(|id| s["name"] == id.as_str()) && s["voter"] == true)
            .count();
        (voters == n).then_some(())
    })
    .await;
    // The simulator's own seed servers, which no instance backs, leave one at a time.
    let unbacked: Vec<String> = rig
        .servers()
        .await
        .iter()
        .filter(|s| s["token"].is_null())
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(unbacked.len(), n, "{unbacked:?}");
    for (left, name) in unbacked.iter().enumerate() {
        rig.send("POST", &format!("/sim/servers/{name}/terminate"), None)
            .await;
        let voters = 2 * n - left - 1;
        rig.until("the cluster healthy after a seed left", || async {
            rig.healthy_with(voters).await.then_some(())
        })
        .await;
    }
    assert!(rig.healthy_with(n).await);
    // The bootstrap retired the seed leader on purpose: the rollout starts from a clean record.
    rig.send("POST", "/sim/invariants/reset", Some(json!({})))
        .await;

    // With a cloud outage, the replica's cloud goes through a proxy the test makes faulty.
    let outage = match fault {
        Fault::CloudOutage => {
            let moto_addr = rig.moto.url.trim_start_matches("http://").parse().unwrap();
            let proxy = super::proxy::Proxy::start(moto_addr).await;
            let settings = rig.settings_at(n, &format!("http://{}", proxy.addr));
            let CloudSettings::Ec2(aws) = &settings.cloud else {
                panic!("the cloud outage is an ec2 rollout's");
            };
            let through: Rc<dyn CloudPort> = Rc::new(
                Ec2Cloud::load(aws, CLUSTER, Some(credentials()))
                    .await
                    .unwrap(),
            );
            Some((proxy, settings, through))
        }
        _ => None,
    };
    let tree = match &outage {
        Some((_, settings, through)) => {
            tree::start(settings, "replica-1", rig.ports(through.clone()))
        }
        None => tree::start(&settings, "replica-1", rig.ports(cloud.clone())),
    };
    // B is newer than A by date or, registered within the same second, by name.
    let ami_b = register(&rig.ec2, "consul-server-b").await;
    assert_eq!(cloud.newest_image().await.unwrap().unwrap().id, ami_b);
    let started = Instant::now();
    rig.until("the replica's watches parking", || async {
        (rig.send("GET", "/sim/stats", None).await["parked"]
            .as_u64()
            .unwrap_or(0)
            >= 2)
            .then_some(())
    })
    .await;
    rig.send("PUT", "/v1/event/fire/consul-rehydrate", None)
        .await;
    let victim = match fault {
        Fault::None => None,
        Fault::TerminateFirstLaunch => {
            let first = rig
                .until("the first launch", || async {
                    rig.rollout().await.filter(|r| !r.launches.is_empty())
                })
                .await;
            let id = first.launches[0].machine.clone();
            rig.ec2
                .terminate_instances()
                .instance_ids(&id)
                .send()
                .await
                .unwrap();
            Some(id)
        }
        Fault::CloudOutage => {
            rig.until("the first launch", || async {
                rig.rollout().await.filter(|r| !r.launches.is_empty())
            })
            .await;
            let (proxy, _, _) = outage.as_ref().unwrap();
            let mut figures = Vec::new();
            for (what, mode) in [
                (
                    "throttled",
                    ec2_error(
                        "503 Service Unavailable",
                        "RequestLimitExceeded",
                        "Request limit exceeded.",
                    ),
                ),
                (
                    "500",
                    ec2_error(
                        "500 Internal Server Error",
                        "InternalError",
                        "An internal error has occurred.",
                    ),
                ),
            ] {
                let (at, before) = (Instant::now(), proxy.answered());
                proxy.set(Mode::Answer(mode));
                // The SDK's retries and the step's: a few requests refused before it recovers.
                rig.until(&format!("four requests {what}"), || async {
                    (proxy.answered() >= before + 4).then_some(())
                })
                .await;
                figures.push(format!(
                    "{} {what} in {:.1?}",
                    proxy.answered() - before,
                    at.elapsed()
                ));
            }
            let at = Instant::now();
            proxy.set(Mode::Hold);
            rig.until("a held request given up (the step's timeout)", || async {
                (proxy.abandoned() >= 1).then_some(())
            })
            .await;
            figures.push(format!(
                "a request held until the client gave up after {:.1?}",
                at.elapsed()
            ));
            proxy.restore();
            println!("cloud outage: {}", figures.join(", "));
            None
        }
    };
    let r = rig
        .until("the rollout completing", || async {
            rig.rollout()
                .await
                .filter(|r| matches!(r.state, RolloutState::Completed { .. }))
        })
        .await;
    let took = started.elapsed();

    assert_eq!(r.target_image, ami_b);
    assert_eq!((r.launches.len(), r.retirements.len()), (n, n));
    let failed = usize::from(victim.is_some());
    assert_eq!(r.failed_launches.len(), failed, "{r:#?}");
    if let Some(victim) = &victim {
        let f = &r.failed_launches[0];
        assert_eq!(&f.machine, victim);
        assert!(
            f.reason.as_deref().is_some_and(|r| !r.is_empty()),
            "EC2's reason is recorded: {f:?}"
        );
        assert!(!r.launches.iter().any(|l| &l.machine == victim), "{r:#?}");
        println!(
            "failed launch {victim} recorded with EC2's reason: {:?}",
            f.reason
        );
    }
    // What moto saw: N seeds and N launches tagged with the cluster, the seeds all gone.
    let described = rig
        .ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{CLUSTER_TAG}"))
                .values(CLUSTER)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let instances: Vec<_> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .collect();
    assert_eq!(
        instances.len(),
        2 * n + failed,
        "N seeds, N launches and the failed one, no more"
    );
    let live = cloud.machines().await.unwrap();
    assert_eq!(live.len(), n, "{live:?}");
    assert!(live.iter().all(|m| m.image == ami_b), "{live:?}");
    assert!(live.iter().all(|m| !seeds.contains(&m.id)), "{live:?}");

    // What the simulator saw: the same servers, all B voters; and the invariants.
    tokio::time::sleep(BRIDGE_TICK * 4).await;
    let servers = rig.servers().await;
    let running: Vec<&Value> = servers
        .iter()
        .filter(|s| s["machine"] != "terminated")
        .collect();
    assert_eq!(running.len(), n, "{servers:#?}");
    assert!(
        running
            .iter()
            .all(|s| s["image"] == ami_b.as_str() && s["voter"] == true),
        "{servers:#?}"
    );
    super::rollout::assert_clean(&rig.send("GET", "/sim/invariants", None).await, n);
    assert!(
        errors.borrow().is_empty(),
        "the bridge failed: {:?}",
        errors.borrow()
    );
    if matches!(backend, Backend::Asg | Backend::EcsAsg) {
        assert_group_settled(&asg_client(&rig.moto.url), n, &ami_b).await;
    }
    if matches!(backend, Backend::Ecs | Backend::EcsAsg) {
        let live = live.iter().map(|m| m.id.clone()).collect();
        assert_ecs(&ecs, &live, n, victim.as_deref()).await;
        let agent = agent.as_ref().unwrap();
        assert!(
            agent.errors.borrow().is_empty(),
            "the registrar failed: {:?}",
            agent.errors
        );
    }
    println!(
        "rollout of {n} servers through {} (moto), fault {fault:?}: {took:.2?}",
        backend.name()
    );

    bridge.abort();
    tree.shutdown().await;
}

/// Deletes the group's tags named `keys`.
async fn delete_group_tags(asg: &aws_sdk_autoscaling::Client, keys: &[&str]) {
    let mut call = asg.delete_tags();
    for key in keys {
        call = call.tags(
            aws_sdk_autoscaling::types::Tag::builder()
                .resource_id(GROUP)
                .resource_type("auto-scaling-group")
                .key(*key)
                .build(),
        );
    }
    call.send().await.unwrap();
}

/// The group without the record of a step (its size before it, its token).
async fn forget_step(asg: &aws_sdk_autoscaling::Client) {
    use rehydrator::cloud::asg::{BASE_TAG, TOKEN_TAG};
    delete_group_tags(asg, &[BASE_TAG, TOKEN_TAG]).await;
}

/// The group without any of rehydrator's record.
async fn forget_record(asg: &aws_sdk_autoscaling::Client) {
    use rehydrator::cloud::asg::{BASE_TAG, MAX_TAG, PROCESSES_TAG, TEMPLATE_TAG, TOKEN_TAG};
    delete_group_tags(
        asg,
        &[BASE_TAG, MAX_TAG, PROCESSES_TAG, TEMPLATE_TAG, TOKEN_TAG],
    )
    .await;
}

/// The group after a rollout of `n`: back at its size, its record gone, AZRebalance running
/// again, launching the new image, and its servers protected from scale-in.
async fn assert_group_settled(asg: &aws_sdk_autoscaling::Client, n: usize, image: &str) {
    let out = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(GROUP)
        .send()
        .await
        .unwrap();
    let g = &out.auto_scaling_groups()[0];
    let n = i32::try_from(n).unwrap();
    assert_eq!(
        (g.min_size(), g.desired_capacity(), g.max_size()),
        (Some(n), Some(n), Some(n)),
        "{g:#?}"
    );
    let record: Vec<_> = g
        .tags()
        .iter()
        .filter(|t| t.key() != Some(CLUSTER_TAG))
        .collect();
    assert!(record.is_empty(), "the record is settled: {record:?}");
    assert!(g.suspended_processes().is_empty(), "{g:#?}");
    assert!(
        g.instances()
            .iter()
            .all(|i| i.protected_from_scale_in() == Some(true)),
        "{g:#?}"
    );
    println!(
        "group {GROUP} settled at {n}, launching {image} from template version {:?}",
        g.launch_template().and_then(|t| t.version())
    );
}

/// What ECS shows after a rollout of `n`: one Consul task per machine ever launched, the live
/// machines' running on their container instances, the retired ones' stopped, and only the live
/// machines still registered. A `failed` instance (terminated in EC2 by the test) keeps its
/// task and registration in moto, which does not tie ECS to EC2's instance states; real ECS
/// deregisters a terminated instance and stops its tasks.
async fn assert_ecs(
    ecs: &aws_sdk_ecs::Client,
    live: &BTreeSet<String>,
    n: usize,
    failed: Option<&str>,
) {
    let failed_count = usize::from(failed.is_some());
    let arns = ecs
        .list_tasks()
        .cluster(ECS_CLUSTER)
        .send()
        .await
        .unwrap()
        .task_arns()
        .to_vec();
    let tasks = ecs
        .describe_tasks()
        .cluster(ECS_CLUSTER)
        .set_tasks(Some(arns))
        .send()
        .await
        .unwrap()
        .tasks()
        .to_vec();
    assert_eq!(
        tasks.len(),
        2 * n + failed_count,
        "one task per machine launched: {tasks:#?}"
    );
    let running = tasks
        .iter()
        .filter(|t| t.last_status() == Some("RUNNING"))
        .count();
    assert_eq!(running, n + failed_count, "{tasks:#?}");
    let cis = ecs
        .list_container_instances()
        .cluster(ECS_CLUSTER)
        .send()
        .await
        .unwrap()
        .container_instance_arns()
        .to_vec();
    let registered: BTreeSet<String> = ecs
        .describe_container_instances()
        .cluster(ECS_CLUSTER)
        .set_container_instances(Some(cis))
        .send()
        .await
        .unwrap()
        .container_instances()
        .iter()
        .filter_map(|ci| ci.ec2_instance_id().map(str::to_owned))
        .collect();
    let mut expected = live.clone();
    expected.extend(failed.map(str::to_owned));
    assert_eq!(
        registered, expected,
        "only the live machines (and, in moto, the failed one) stay registered"
    );
}
