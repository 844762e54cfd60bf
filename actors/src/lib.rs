//! The actor tree (Watcher, Dispatcher, LockManager, executors) and the ports it talks through.
//!
//! Empty until the actor-core issue: the foundation only lays out the workspace.
