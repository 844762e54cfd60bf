//! Writes as Consul's leader applies them: the checks made before the Raft apply (lock-delay,
//! a session that must exist), one Raft index, the tables' rules (`store`), the writes one table
//! makes in another (an invalidated session releases its keys), the timers (session TTLs) and
//! the blocking queries woken for what changed. The HTTP handlers and the cluster's lifecycle
//! call these; they call nothing above them.

pub mod catalog;
pub mod event;
pub mod kv;
pub mod session;
