//! rehydrator's backends: the Consul HTTP client (`consul`); later the cloud backends and the
//! status endpoint. The actor tree lives in the `rehydrator-actors` crate and reaches these
//! through its ports.

pub mod consul;
pub mod webhook;
