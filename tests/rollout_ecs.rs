//! The rollout end to end through the ECS backend: the replica's cloud is `EcsCloud` on moto's
//! EC2 and ECS servers (the real SDK clients), while Consul is the simulator. A test-side
//! registrar plays the ECS agent; a machine becomes a simulated server once its Consul task
//! runs. The rig, the bridge and the checks are `common::moto_rollout`'s, shared with
//! `tests/rollout_ec2.rs`; this one also checks ECS's side: one task per machine, the retired
//! machines' tasks stopped and their container instances deregistered.
#![allow(clippy::unwrap_used)]

use crate::common;

use crate::common::moto_rollout::{moto_rollout, moto_rollout_with, Backend, Fault, TEST_BOUND};

#[actix_rt::test]
async fn three_servers_roll_onto_the_new_ami_through_ecs() {
    common::bounded_for(TEST_BOUND, moto_rollout(Backend::Ecs, 3)).await;
}

#[actix_rt::test]
async fn a_new_instance_terminated_right_after_launch_is_launched_again_through_ecs() {
    common::bounded_for(
        TEST_BOUND,
        moto_rollout_with(Backend::Ecs, 3, Fault::TerminateFirstLaunch),
    )
    .await;
}

#[actix_rt::test]
async fn three_container_instances_of_a_group_roll_through_the_group() {
    common::bounded_for(TEST_BOUND, moto_rollout(Backend::EcsAsg, 3)).await;
}
