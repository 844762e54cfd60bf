//! rehydrator's backends: the Consul HTTP client (`consul`), the cloud backends (`cloud`: the
//! simulator's so far), the status endpoint (`endpoint`). The actor tree lives in the
//! `rehydrator-actors` crate and reaches these through its ports.

pub mod cloud;
pub mod consul;
pub mod demo;
pub mod endpoint;
pub mod healthcheck;
pub mod status;
pub mod webhook;
