//! A Consul cluster simulator: Consul's HTTP API over a simulated datacenter of server nodes.
//!
//! The demo and the tests talk to it over real HTTP exactly as they would to a Consul agent.
//! `server::start` binds it; `Sim` is the shared state every handler and timer works on.
//! The control API under `/sim/...` (see `control`) injects faults and reads invariants.

pub mod api;
pub mod cluster;
pub mod config;
pub mod control;
pub mod fsm;
pub mod go_json;
pub mod group_control;
pub mod http;
pub mod images;
pub mod server;
pub mod state;
pub mod store;
#[cfg(test)]
pub(crate) mod testkit;
pub mod timeline;
pub mod watch;

pub use config::CONSUL_VERSION;
pub use config::{version_parts, SimConfig, TransferFault};
/// Go's duration syntax, shared with the Consul client.
pub use rehydrator_config::go_duration as duration;
pub use server::{start, RunningSim};
pub use state::Sim;
