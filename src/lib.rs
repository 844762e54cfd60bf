//! rehydrator's backends: the Consul HTTP client (`consul`), the cloud backends (`cloud`: EC2,
//! ECS, local Consul processes and the simulator), the cluster's status and its HTTP endpoint
//! (`status`), the demo and the container's health check. The actor tree lives in the
//! `rehydrator-actors` crate and reaches these through its ports.

pub mod cloud;
pub mod consul;
pub mod demo;
pub mod doctor;
pub mod gate;
pub mod healthcheck;
pub mod status;
pub mod webhook;
