//! The state store: each table of Consul's (`agent/consul/state`) as plain data with the rules
//! of its reads and writes, tested without HTTP. Nothing here locks, wakes or answers: writes
//! take their Raft index from the caller (`fsm`), and the HTTP handlers (`api`) read through
//! `State`.

pub mod catalog;
pub mod event;
pub mod kv;
pub mod session;
pub mod ttl;
