//! Configuration: raw TOML -> validated `Settings`.
//!
//! Empty until the actor-core issue: the foundation only lays out the workspace.
