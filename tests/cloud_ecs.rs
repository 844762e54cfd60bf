//! `EcsCloud`, the actors' `CloudPort` on ECS, against moto's server through the real
//! aws-sdk-ec2 and aws-sdk-ecs clients over loopback HTTP: a launch that waits for the instance
//! to join the ECS cluster and starts exactly one Consul task on it (a retry makes neither a
//! second instance nor a second task), a launch whose instance never registers, the machines'
//! states, and a retire that drains, stops the task, terminates and deregisters, in that order.
//!
//! moto registers no container instance by itself: `common::moto::registrar` plays the ECS
//! agent, registering every running instance of the cluster. moto's recorder shows the calls
//! retire made, in order. moto is a Python package (`moto[server]`); `scripts/test.sh` installs
//! it. Without it these tests fail saying so rather than pass without testing anything.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, Instant};

use crate::common::moto::{
    client, credentials, ecs_client, ecs_cluster, ecs_settings, launch_template, moto_ecs,
    recorded, register, register_container_instance, registrar, start_recording, Moto, ECS_CLUSTER,
};
use aws_sdk_ecs::types::{ContainerInstanceStatus, Task};
use rehydrator::cloud::ecs::started_by;
use rehydrator::cloud::EcsCloud;
use rehydrator_actors::ports::{CloudPort, ErrorKind, MachineState};

/// How often the cloud polls moto in these tests (5 s in production).
const POLL: Duration = Duration::from_millis(50);

struct Rig {
    moto: Moto,
    ec2: aws_sdk_ec2::Client,
    ecs: aws_sdk_ecs::Client,
    cloud: EcsCloud,
    /// The AMI the launch template names.
    ami: String,
}

/// moto with an AMI, the launch template, the ECS cluster and the Consul task definition, and
/// the cloud as `run` builds it (settings, endpoint override) with the test's static keys.
async fn rig(registration_timeout: Duration) -> Rig {
    let moto = moto_ecs();
    let (ec2, ecs) = (client(&moto.url), ecs_client(&moto.url));
    let ami = register(&ec2, "consul-server-1").await;
    launch_template(&ec2, &ami).await;
    ecs_cluster(&moto.url, &ecs).await;
    let cloud = EcsCloud::load(
        &ecs_settings(&moto.url, registration_timeout),
        "prod",
        Some(credentials()),
    )
    .await
    .unwrap()
    .with_poll_interval(POLL);
    Rig {
        moto,
        ec2,
        ecs,
        cloud,
        ami,
    }
}

impl Rig {
    /// Every task moto knows in the cluster, whatever its state.
    async fn tasks(&self) -> Vec<Task> {
        let arns = self
            .ecs
            .list_tasks()
            .cluster(ECS_CLUSTER)
            .send()
            .await
            .unwrap()
            .task_arns()
            .to_vec();
        if arns.is_empty() {
            return Vec::new();
        }
        self.ecs
            .describe_tasks()
            .cluster(ECS_CLUSTER)
            .set_tasks(Some(arns))
            .send()
            .await
            .unwrap()
            .tasks()
            .to_vec()
    }

    /// The container instance registered for EC2 instance `id`: (ARN, status).
    async fn container_instance(&self, id: &str) -> Option<(String, String)> {
        let arns = self
            .ecs
            .list_container_instances()
            .cluster(ECS_CLUSTER)
            .send()
            .await
            .unwrap()
            .container_instance_arns()
            .to_vec();
        if arns.is_empty() {
            return None;
        }
        let out = self
            .ecs
            .describe_container_instances()
            .cluster(ECS_CLUSTER)
            .set_container_instances(Some(arns))
            .send()
            .await
            .unwrap();
        out.container_instances()
            .iter()
            .find(|ci| ci.ec2_instance_id() == Some(id))
            .map(|ci| {
                (
                    ci.container_instance_arn().unwrap().to_owned(),
                    ci.status().unwrap().to_owned(),
                )
            })
    }

    /// How many instances moto holds, in any state.
    async fn instance_count(&self) -> usize {
        let all = self.ec2.describe_instances().send().await.unwrap();
        all.reservations().iter().map(|r| r.instances().len()).sum()
    }

    async fn instance_state(&self, id: &str) -> String {
        let out = self
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap();
        out.reservations()[0].instances()[0]
            .state()
            .and_then(|s| s.name())
            .unwrap()
            .as_str()
            .to_owned()
    }
}

#[actix_rt::test]
async fn newest_image_is_ec2s() {
    common::bounded(async {
        let rig = rig(Duration::from_secs(20)).await;
        // In the same second the name decides, and a later second makes it newer anyway.
        let newer = register(&rig.ec2, "consul-server-2").await;
        register(&rig.ec2, "other-image").await;
        let got = rig.cloud.newest_image().await.unwrap().unwrap();
        assert_eq!(got.id, newer, "not {}: {got:?}", rig.ami);
        assert_eq!(got.name, "consul-server-2");
    })
    .await;
}

#[actix_rt::test]
async fn launch_waits_for_registration_and_starts_one_task_even_when_retried() {
    common::bounded(async {
        let rig = rig(Duration::from_secs(20)).await;
        let agent = registrar(&rig.moto.url, "prod");
        assert!(rig.cloud.machines().await.unwrap().is_empty());
        let ami_b = register(&rig.ec2, "consul-server-2").await;

        let started = Instant::now();
        let m = rig.cloud.launch(&ami_b, "r1-o3-n3").await.unwrap();
        let took = started.elapsed();
        assert!(m.id.starts_with("i-"), "{m:?}");
        assert_eq!(m.image, ami_b);
        assert_eq!(m.node.as_deref(), Some(m.id.as_str()));
        assert_eq!(m.token.as_deref(), Some("r1-o3-n3"));
        assert!(m.address.is_some(), "{m:?}");
        assert_eq!(m.state, MachineState::Running, "{m:?}");

        // One task, of the Consul task definition, on this instance's container instance,
        // started by the token.
        let tasks = rig.tasks().await;
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        let task = &tasks[0];
        assert_eq!(task.started_by(), Some("r1-o3-n3"));
        assert_eq!(task.last_status(), Some("RUNNING"));
        assert!(
            task.task_definition_arn()
                .unwrap()
                .ends_with("task-definition/consul-server:1"),
            "{task:?}"
        );
        let (ci, status) = rig.container_instance(&m.id).await.unwrap();
        assert_eq!(status, "ACTIVE");
        assert_eq!(task.container_instance_arn(), Some(ci.as_str()));

        // The same token again: the same machine, and no second instance or task.
        let again = rig.cloud.launch(&ami_b, "r1-o3-n3").await.unwrap();
        assert_eq!(again, m);
        assert_eq!(rig.tasks().await.len(), 1);
        assert_eq!(rig.instance_count().await, 1);
        let listed = rig.cloud.machines().await.unwrap();
        assert_eq!(listed, vec![m.clone()]);

        // A token longer than ECS's startedBy takes (a UUID rollout ID): hashed, still
        // found on a retry.
        let long = "3f2b7c1e-8d4a-4c55-9e0f-1a2b3c4d5e6f-o2-n4";
        let second = rig.cloud.launch(&ami_b, long).await.unwrap();
        assert_ne!(second.id, m.id);
        let again = rig.cloud.launch(&ami_b, long).await.unwrap();
        assert_eq!(again.id, second.id);
        let tasks = rig.tasks().await;
        assert_eq!(tasks.len(), 2, "{tasks:?}");
        let by = started_by(long);
        assert!(by.len() <= 36, "{by}");
        assert_eq!(
            tasks
                .iter()
                .filter(|t| t.started_by() == Some(by.as_str()))
                .count(),
            1,
            "{tasks:?}"
        );
        assert_eq!(rig.cloud.machines().await.unwrap().len(), 2);
        assert!(agent.errors.borrow().is_empty(), "{:?}", agent.errors);
        println!("launch through ECS (moto), registration included: {took:.2?}");
    })
    .await;
}

#[actix_rt::test]
async fn launch_gives_up_on_an_instance_that_never_registers_and_a_retry_resumes() {
    common::bounded(async {
        // No agent: nothing registers the instance.
        let rig = rig(Duration::from_secs(1)).await;
        let started = Instant::now();
        let e = rig.cloud.launch(&rig.ami, "r1-o3-n3").await.unwrap_err();
        let waited = started.elapsed();
        assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
        assert!(e.is_retryable(), "{e}");
        let listed = rig.cloud.machines().await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        let id = &listed[0].id;
        for part in [
            id.as_str(),
            "did not register",
            "\"consul\"",
            "ECS_CLUSTER=consul",
            "registration_timeout",
        ] {
            assert!(e.message.contains(part), "{part:?} in {e}");
        }
        assert!(waited >= Duration::from_secs(1), "{waited:?}");
        // Running in EC2, not yet a server: pending, and no task was started.
        assert_eq!(listed[0].state, MachineState::Pending);
        assert!(rig.tasks().await.is_empty());

        // The agent comes up late: registered but without its task, still pending; the
        // retried step finds the same instance and starts the task.
        register_container_instance(&rig.ecs, id).await.unwrap();
        assert_eq!(
            rig.cloud.machines().await.unwrap()[0].state,
            MachineState::Pending
        );
        let m = rig.cloud.launch(&rig.ami, "r1-o3-n3").await.unwrap();
        assert_eq!(&m.id, id);
        assert_eq!(m.state, MachineState::Running);
        assert_eq!(rig.tasks().await.len(), 1);
        assert_eq!(rig.instance_count().await, 1);
        assert_eq!(
            rig.cloud.machines().await.unwrap()[0].state,
            MachineState::Running
        );
        println!("launch gave up after {waited:.2?} (registration_timeout 1s)");
    })
    .await;
}

#[actix_rt::test]
async fn launch_gives_up_at_once_on_an_instance_that_dies_before_registering() {
    common::bounded(async {
        // No agent, and a deadline far beyond the test's bound: only the instance's end can
        // end the wait in time.
        let rig = rig(Duration::from_secs(600)).await;
        let cloud = rig.cloud.clone();
        let ami = rig.ami.clone();
        let launch = actix_rt::spawn(async move { cloud.launch(&ami, "r1-o3-n3").await });
        let id = common::eventually("the instance launched", Duration::from_secs(20), || async {
            rig.cloud
                .machines()
                .await
                .unwrap()
                .first()
                .map(|m| m.id.clone())
        })
        .await;
        let died = Instant::now();
        rig.ec2
            .terminate_instances()
            .instance_ids(&id)
            .send()
            .await
            .unwrap();
        let e = launch.await.unwrap().unwrap_err();
        let noticed = died.elapsed();
        assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
        for part in [id.as_str(), "Terminated", "never registered"] {
            assert!(e.message.contains(part), "{part:?} in {e}");
        }
        assert!(rig.tasks().await.is_empty());
        println!("a dead instance's launch failed {noticed:.2?} after it died");
    })
    .await;
}

/// The position of the first recorded call to `action` whose body contains every one of
/// `parts`, if any.
fn position(calls: &[(String, String)], action: &str, parts: &[&str]) -> Option<usize> {
    calls
        .iter()
        .position(|(a, body)| a == action && parts.iter().all(|p| body.contains(p)))
}

#[actix_rt::test]
async fn retire_drains_stops_terminates_deregisters_and_may_repeat() {
    common::bounded(async {
        let rig = rig(Duration::from_secs(20)).await;
        let agent = registrar(&rig.moto.url, "prod");
        let gone = rig.cloud.launch(&rig.ami, "r1-o3-n3").await.unwrap();
        let kept = rig.cloud.launch(&rig.ami, "r1-o2-n4").await.unwrap();
        let (ci, _) = rig.container_instance(&gone.id).await.unwrap();
        let task = rig
            .tasks()
            .await
            .into_iter()
            .find(|t| t.container_instance_arn() == Some(ci.as_str()))
            .unwrap();
        let task_arn = task.task_arn().unwrap().to_owned();

        start_recording(&rig.moto.url).await;
        let started = Instant::now();
        rig.cloud.retire(&gone.id).await.unwrap();
        let took = started.elapsed();
        let calls = recorded(&rig.moto.url).await;
        let names: Vec<&str> = calls
            .iter()
            .map(|(a, _)| a.as_str())
            .filter(|a| *a != "DescribeInstances")
            .collect();
        let drain = position(&calls, "UpdateContainerInstancesState", &[&ci, "DRAINING"])
            .unwrap_or_else(|| panic!("no drain in {names:?}"));
        let stop = position(&calls, "StopTask", &[&task_arn])
            .unwrap_or_else(|| panic!("no StopTask in {names:?}"));
        let terminate = position(&calls, "TerminateInstances", &[&gone.id])
            .unwrap_or_else(|| panic!("no TerminateInstances in {names:?}"));
        let deregister = position(
            &calls,
            "DeregisterContainerInstance",
            &[&ci, "\"force\":true"],
        )
        .unwrap_or_else(|| panic!("no forced DeregisterContainerInstance in {names:?}"));
        assert!(
            drain < stop && stop < terminate && terminate < deregister,
            "out of order: {names:?}"
        );
        assert_eq!(
            names.iter().filter(|a| **a == "StopTask").count(),
            1,
            "only the retired machine's task: {names:?}"
        );

        // The outcome: the task stopped with a reason, the instance terminated, the container
        // instance gone from the cluster; the other machine untouched.
        let tasks = rig.tasks().await;
        let stopped = tasks
            .iter()
            .find(|t| t.task_arn() == Some(task_arn.as_str()))
            .unwrap();
        assert_eq!(stopped.last_status(), Some("STOPPED"));
        assert_eq!(
            stopped.stopped_reason(),
            Some("rehydrator retired the machine")
        );
        assert_eq!(rig.instance_state(&gone.id).await, "terminated");
        assert_eq!(rig.container_instance(&gone.id).await, None);
        let listed = rig.cloud.machines().await.unwrap();
        assert_eq!(listed, vec![kept.clone()]);
        assert_eq!(listed[0].state, MachineState::Running);

        // Again: harmless, and nothing left to drain, stop or deregister.
        start_recording(&rig.moto.url).await;
        rig.cloud.retire(&gone.id).await.unwrap();
        let calls = recorded(&rig.moto.url).await;
        for action in [
            "UpdateContainerInstancesState",
            "StopTask",
            "DeregisterContainerInstance",
        ] {
            assert_eq!(position(&calls, action, &[]), None, "{action} again");
        }

        // Drained by someone else first: the machine is stopping, and retire skips the drain.
        rig.ecs
            .update_container_instances_state()
            .cluster(ECS_CLUSTER)
            .container_instances(rig.container_instance(&kept.id).await.unwrap().0)
            .status(ContainerInstanceStatus::Draining)
            .send()
            .await
            .unwrap();
        assert_eq!(
            rig.cloud.machines().await.unwrap()[0].state,
            MachineState::Stopping
        );
        start_recording(&rig.moto.url).await;
        rig.cloud.retire(&kept.id).await.unwrap();
        let calls = recorded(&rig.moto.url).await;
        assert_eq!(position(&calls, "UpdateContainerInstancesState", &[]), None);
        assert!(position(&calls, "StopTask", &[]).is_some());
        assert!(rig.cloud.machines().await.unwrap().is_empty());
        assert!(rig
            .tasks()
            .await
            .iter()
            .all(|t| t.last_status() == Some("STOPPED")));

        // An instance nobody launched is refused, as by Ec2Cloud.
        let e = rig.cloud.retire("i-0123456789abcdef0").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected, "{e}");
        assert!(e.message.contains("TerminateInstances"), "{e}");
        assert!(agent.errors.borrow().is_empty(), "{:?}", agent.errors);
        println!("retire through ECS (moto): {took:.2?}");
    })
    .await;
}

#[actix_rt::test]
async fn bad_configuration_and_refusals_are_named() {
    common::bounded(async {
        // Settings built by hand without the ECS fields: refused before any call.
        let mut aws = ecs_settings("http://127.0.0.1:9", Duration::from_secs(1));
        aws.task_definition = None;
        let e = EcsCloud::load(&aws, "prod", Some(credentials()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cloud.task_definition"), "{e}");
        aws.task_definition = Some("consul-server".into());
        aws.ecs_cluster = None;
        let e = EcsCloud::load(&aws, "prod", Some(credentials()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cloud.ecs_cluster"), "{e}");

        // A task definition ECS does not know: StartTask is refused, not retried forever,
        // and the retried step finds the instance it already launched.
        let rig = rig(Duration::from_secs(20)).await;
        let _agent = registrar(&rig.moto.url, "prod");
        let mut aws = ecs_settings(&rig.moto.url, Duration::from_secs(20));
        aws.task_definition = Some("no-such-task".into());
        let cloud = EcsCloud::load(&aws, "prod", Some(credentials()))
            .await
            .unwrap()
            .with_poll_interval(POLL);
        let e = cloud.launch(&rig.ami, "r1-o3-n3").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected, "{e}");
        assert!(e.message.contains("StartTask"), "{e}");
        assert!(!e.message.contains("testing"), "credentials leaked: {e}");
        let _ = cloud.launch(&rig.ami, "r1-o3-n3").await.unwrap_err();
        assert_eq!(rig.instance_count().await, 1);
        assert!(rig.tasks().await.is_empty());
    })
    .await;
}
