//! The actor tree (Watcher, Dispatcher, LockManager, executors) and the ports it talks through.
//!
//! Nothing here knows HTTP or AWS: `ports` declares what the actors need from Consul and the
//! world, and the binary plugs in real backends (the Consul client on awc, pointed at a real
//! agent or at the simulator). Decisions are plain functions beside the actors, tested without
//! actix.

pub mod backoff;
pub mod dispatcher;
pub mod executor;
pub mod fault;
pub mod guard;
pub mod image_watch;
pub mod lock_manager;
pub mod metrics;
pub mod notify;
pub mod plan;
pub mod ports;
pub mod process_metrics;
pub mod receipt;
pub mod rollout;
pub mod snapshot;
pub mod tree;
pub mod watch_plan;
pub mod watcher;
pub mod watermark;
pub mod window;
