//! The simulator's own HTTP tests, one binary: each file beside this one is a module, named
//! as the file, sharing `common`.

mod common;

mod agent_service_http;
mod cloud_http;
mod cluster_http;
mod group_http;
mod stats_http;
mod timeline_http;
