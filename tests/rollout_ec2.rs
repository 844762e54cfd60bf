//! The rollout end to end through the EC2 backend: the replica's cloud is `Ec2Cloud` on moto's
//! EC2 server (the real SDK client), while Consul is the simulator, moto's instances bridged
//! into simulated servers. The rig, the bridge and the checks are `common::moto_rollout`'s,
//! shared with `tests/rollout_ecs.rs`.
#![allow(clippy::unwrap_used)]

use crate::common;

use crate::common::moto_rollout::{moto_rollout, moto_rollout_with, Backend, Fault, TEST_BOUND};

#[actix_rt::test]
async fn three_servers_roll_onto_the_new_ami_through_ec2() {
    common::bounded_for(TEST_BOUND, moto_rollout(Backend::Ec2, 3)).await;
}

#[actix_rt::test]
async fn a_new_instance_terminated_right_after_launch_is_launched_again_through_ec2() {
    common::bounded_for(
        TEST_BOUND,
        moto_rollout_with(Backend::Ec2, 3, Fault::TerminateFirstLaunch),
    )
    .await;
}

#[actix_rt::test]
async fn three_servers_of_a_group_roll_through_the_group() {
    common::bounded_for(TEST_BOUND, moto_rollout(Backend::Asg, 3)).await;
}

#[actix_rt::test]
async fn the_rollout_rides_out_a_cloud_that_throttles_fails_and_hangs() {
    // The held request lasts the step's timeout (20 s): a longer bound than the others.
    common::bounded_for(
        TEST_BOUND * 2,
        moto_rollout_with(Backend::Ec2, 3, Fault::CloudOutage),
    )
    .await;
}
