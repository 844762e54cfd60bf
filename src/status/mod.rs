//! The cluster's status as one model, [`StatusReport`], shared by `rehydrator status`, the
//! status endpoint's `/v1/status` and the demo: the servers (image, age, voter, leader,
//! health), autopilot's verdict, the newest image, the rollout record and its progress, who
//! holds the cluster's locks, the last receipts and the pause key.
//!
//! [`gather`] reads it all from Consul (and the cloud, when one is configured) in one pass;
//! everything after the reads (joining machines with Raft peers, ordering, progress, the
//! human rendering) is plain functions tested without a cluster.
//!
//! The JSON field names are snake_case and stable: scripts and the dashboard read them. Add
//! fields, never rename them.

mod gather;
mod model;
mod render;

pub mod endpoint;

pub use gather::*;
pub use model::*;
pub use render::*;

#[cfg(test)]
mod tests;
