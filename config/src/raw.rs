//! The configuration exactly as written: every field optional, unknown fields refused.
//! Validation (`validate.rs`) decides what is required and what each default is.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub cluster: Option<RawCluster>,
    pub consul: Option<RawConsul>,
    pub lock: Option<RawLock>,
    pub cloud: Option<RawCloud>,
    pub status: Option<RawStatus>,
    pub rollout: Option<RawRollout>,
    pub notify: Option<RawNotify>,
    pub watch: Option<Vec<RawWatch>>,
    pub action: Option<BTreeMap<String, RawAction>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: Option<String>,
    pub desired_servers: Option<i64>,
    pub service: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsul {
    pub address: Option<String>,
    pub ssl: Option<bool>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub datacenter: Option<String>,
    pub ca_file: Option<String>,
    pub ca_path: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub tls_server_name: Option<String>,
    pub tls_verify: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLock {
    pub session_ttl: Option<String>,
    pub lock_delay: Option<String>,
    pub check_ttl: Option<String>,
    pub receipt_timeout: Option<String>,
    pub receipts_kept: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloud {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub launch_template: Option<String>,
    pub auto_scaling_group: Option<String>,
    pub image_name: Option<String>,
    pub image_owners: Option<Vec<String>>,
    pub ecs_cluster: Option<String>,
    pub task_definition: Option<String>,
    pub registration_timeout: Option<String>,
    pub url: Option<String>,
    pub consul_bin: Option<String>,
    pub data_dir: Option<String>,
    pub agent_hcl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    pub mode: Option<String>,
    pub dry_run: Option<bool>,
    pub stable_timeout: Option<String>,
    pub step_timeout: Option<String>,
    pub retire_failed_launch: Option<bool>,
    pub launch_attempts: Option<i64>,
    pub windows: Option<Vec<RawWindow>>,
    pub bake_time: Option<String>,
    pub snapshot_dir: Option<String>,
    pub snapshots_kept: Option<i64>,
    pub snapshot_required: Option<bool>,
    pub snapshot_max_mib: Option<i64>,
    pub gate_prometheus_url: Option<String>,
    pub gate_prometheus_query: Option<String>,
    pub gate_cloudwatch_alarms: Option<Vec<String>>,
}

/// One maintenance window: `{ days = ["mon"], start = "02:00", end = "05:00", time_zone = "Europe/Berlin" }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    pub days: Option<Vec<String>>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub time_zone: Option<String>,
}

/// `[notify]`: the rollout's webhook. Its token comes from the environment, never the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    pub listen: Option<String>,
    /// A file holding the bearer token `/v1/status` and the dashboard ask for.
    pub token_file: Option<String>,
}

/// One `[[watch]]`: the parameters are those of `consul watch` for its type.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWatch {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub key: Option<String>,
    pub prefix: Option<String>,
    pub service: Option<String>,
    pub tag: Option<Vec<String>>,
    pub passingonly: Option<bool>,
    pub state: Option<String>,
    pub event: Option<String>,
    pub every: Option<String>,
    pub interval: Option<String>,
    pub action: Option<String>,
    pub actions: Option<Vec<String>>,
    pub debounce: Option<String>,
    pub request: Option<bool>,
}

/// One `[action.<name>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub command: Option<Vec<String>>,
    pub url: Option<String>,
    pub timeout: Option<String>,
    pub lock: Option<String>,
}
