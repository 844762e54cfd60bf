//! Every end-to-end test of the root crate in one binary: each file beside this one is a module
//! (named as the file), sharing `common`. One binary links the AWS SDKs, actix and the
//! simulator once instead of once per file, which was most of CI's test build time and disk.
//! `hostile_agent` stays its own binary: it installs a global log subscriber and reads the
//! process's peak memory, which other tests in the same process would disturb.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod actors_watches;
mod cli_check_config;
mod cli_commands;
mod cli_demo;
mod cli_sim;
mod cloud_asg;
mod cloud_ec2;
mod cloud_ecs;
mod cloud_process;
mod cloud_sim;
mod consul_client;
mod consul_tls;
mod dashboard;
mod deploy;
mod doctor;
mod fault_matrix;
mod guard;
mod replicas;
mod rollout;
mod rollout_ec2;
mod rollout_ecs;
mod rollout_real_replicas;
mod rollout_replicas;
mod secrets;
mod sim_api_shapes;
mod sim_bad_input;
mod snapshots_s3;
mod status_endpoint;
mod triggers;
