//! Consul: the HTTP client (the `rehydrator-consul` crate, re-exported here so the binary
//! names it in one place) and its adapter to the actors' `ConsulPort` (port.rs), which joins
//! the client to the actors' types.

pub use rehydrator_consul::*;

pub mod port;
