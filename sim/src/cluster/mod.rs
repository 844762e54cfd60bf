//! The simulated Consul servers: machines, serf membership, the Raft configuration, leadership,
//! autopilot (health, promotion of stable non-voters, dead-server cleanup), the simulated cloud's
//! machines (launched from registered images, with idempotency tokens; terminated) and the
//! invariants the tests and the demo read (how often quorum was lost, how many voters were missing
//! at worst, how often a leader was retired without a transfer first).
//!
//! Who talks to it: `http::Meta::read` (`has_leader`, `last_contact`), the status, operator,
//! agent and catalog endpoints (read and change Raft state), and the control API (`control.rs`),
//! which adds machines and injects faults. Every change ends in `reconcile`, which does what a
//! Consul leader does on a serf event — registers members in the catalog, removes left servers
//! from Raft, adds joined ones as non-voters — then autopilot's promotions and pruning, then
//! re-checks the invariants.
//!
//! `server` holds a server's data, `raft` the decisions over a set of them, `model` the cluster
//! `State` holds, `lifecycle` what changes it.
//! Timers (boot, failure detection, election, stabilization) run through `Sim::after_in` and
//! carry an epoch, so one that outlived the state it was set for does nothing.

pub mod group;
pub mod lifecycle;
pub mod model;
pub mod raft;
pub mod scaling;
pub mod server;

pub use lifecycle::*;
pub use model::*;
pub use raft::*;
pub use server::*;
