//! Consul's JSON bodies as Rust types, with Consul's PascalCase field names.
//!
//! Answers are read leniently (`#[serde(default)]`, unknown fields ignored): Consul versions add
//! fields and send `null` for empty lists, and a watcher must not fail on either. Requests are
//! written sparingly (`skip_serializing_if`) so that Consul applies its own defaults.
//! The endpoint modules (kv.rs, session.rs, ...) return these; the actors' ConsulApi adapter maps
//! them to its own plain types.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::duration;

/// `null` where Consul's Go code has a nil slice or map: read as empty.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A base64 string or null (Consul's `[]byte`), decoded to bytes; null is empty.
fn base64_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    Ok(base64_opt(d)?.unwrap_or_default())
}

fn base64_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// KV

/// One key of the KV store (`GET /v1/kv/:key`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct KvPair {
    pub key: String,
    pub create_index: u64,
    /// The index to pass as `cas` to change this key only if nobody else did.
    pub modify_index: u64,
    /// How many times the key's lock was acquired.
    pub lock_index: u64,
    pub flags: u64,
    /// The value, decoded from base64; empty for a key stored without data.
    #[serde(deserialize_with = "base64_bytes")]
    pub value: Vec<u8>,
    /// The session holding the key's lock, if any.
    pub session: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Sessions

/// What happens to a session's locks when it is invalidated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    /// The locks are released; the keys stay.
    #[default]
    Release,
    /// The locked keys are deleted.
    Delete,
}

/// A service health check a session is tied to (Consul 1.7+).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceCheck {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// The body of `PUT /v1/session/create`. Unset fields take Consul's defaults (the agent's node,
/// a 15s lock-delay, `release`, no TTL, the `serfHealth` check).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(with = "duration::go_opt", skip_serializing_if = "Option::is_none")]
    pub lock_delay: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behavior: Option<SessionBehavior>,
    /// Between 10s and 24h in Consul; renew before it runs out.
    #[serde(
        rename = "TTL",
        with = "duration::go_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// Node check IDs (deprecated by Consul in favour of `node_checks`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<String>>,
    /// Node check IDs; `Some(vec![])` means none at all, not even `serfHealth`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_checks: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_checks: Option<Vec<ServiceCheck>>,
}

/// The body of `PUT /v1/agent/service/register`, as far as rehydrator registers services: an
/// instance with one check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentServiceRegistration {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<AgentCheck>,
}

/// A check in a service registration. Only TTL checks: rehydrator never asks an agent to run
/// anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentCheck {
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub notes: String,
    #[serde(rename = "TTL", with = "duration::go")]
    pub ttl: Duration,
    /// The status it starts in (`passing`); Consul's default for a TTL check is `critical`.
    pub status: String,
    /// How long the check may stay critical before the agent removes the service (Consul's
    /// floor is 1m).
    #[serde(with = "duration::go")]
    pub deregister_critical_service_after: Duration,
}

/// A session as Consul reports it (`/v1/session/info`, `list`, `node`, `renew`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SessionEntry {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub node: String,
    /// Sent back as integer nanoseconds (`1.5e+10`), unlike the `"15s"` it was created with.
    #[serde(with = "duration::go")]
    pub lock_delay: Duration,
    pub behavior: SessionBehavior,
    /// `""` in Consul's answer when the session has no TTL.
    #[serde(rename = "TTL", with = "duration::go_opt")]
    pub ttl: Option<Duration>,
    #[serde(deserialize_with = "null_as_default")]
    pub checks: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub node_checks: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub service_checks: Vec<ServiceCheck>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// `PUT /v1/session/create` answers `{"ID": "..."}`.
#[derive(Debug, Deserialize)]
pub(crate) struct SessionCreated {
    #[serde(rename = "ID")]
    pub id: String,
}

// ---------------------------------------------------------------------------------------------
// Events

/// A user event (`/v1/event/fire`, `/v1/event/list`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UserEvent {
    /// A UUID, the same on every agent that received the event.
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    /// Decoded from base64; `None` when fired without a body.
    #[serde(deserialize_with = "base64_opt")]
    pub payload: Option<Vec<u8>>,
    pub node_filter: String,
    pub service_filter: String,
    pub tag_filter: String,
    pub version: u32,
    /// The event's Lamport time in the gossip pool.
    #[serde(rename = "LTime")]
    pub ltime: u64,
}

// ---------------------------------------------------------------------------------------------
// Catalog and health

/// A node of the catalog (`/v1/catalog/nodes`, and inside other answers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    #[serde(deserialize_with = "null_as_default")]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A service instance as the agent and `/v1/catalog/node/:node` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentService {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    #[serde(deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    pub address: String,
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    pub port: u16,
    pub enable_tag_override: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A service instance with its node (`/v1/catalog/service/:service`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CatalogService {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    #[serde(deserialize_with = "null_as_default")]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    pub node_meta: BTreeMap<String, String>,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    pub service_address: String,
    #[serde(deserialize_with = "null_as_default")]
    pub service_tags: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub service_meta: BTreeMap<String, String>,
    pub service_port: u16,
    pub service_enable_tag_override: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A node with its services (`/v1/catalog/node/:node`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CatalogNode {
    pub node: Node,
    #[serde(deserialize_with = "null_as_default")]
    pub services: BTreeMap<String, AgentService>,
}

/// A health check's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckState {
    /// Only a filter for `/v1/health/state/any`; no check is ever in it.
    Any,
    Passing,
    Warning,
    Critical,
}

impl CheckState {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Any => "any",
            CheckState::Passing => "passing",
            CheckState::Warning => "warning",
            CheckState::Critical => "critical",
        }
    }
}

/// A health check (`/v1/health/checks`, `state`, `node`, and inside `/v1/health/service`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthCheck {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    /// `passing`, `warning` or `critical` (Consul's strings, kept as they come).
    pub status: String,
    pub notes: String,
    pub output: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub service_tags: Vec<String>,
    #[serde(rename = "Type")]
    pub check_type: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl HealthCheck {
    pub fn is_passing(&self) -> bool {
        self.status == "passing"
    }
}

/// A service instance with its node and checks (`/v1/health/service/:service`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceEntry {
    pub node: Node,
    pub service: AgentService,
    #[serde(deserialize_with = "null_as_default")]
    pub checks: Vec<HealthCheck>,
}

/// A service to register in the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    #[serde(rename = "ID", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub service: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A check to register in the catalog (no agent runs it; its status is what is written).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckRegistration {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub notes: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output: String,
    #[serde(rename = "ServiceID", skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
}

/// The body of `PUT /v1/catalog/register`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogRegistration {
    #[serde(rename = "ID", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub node: String,
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub node_meta: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRegistration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckRegistration>,
    /// Leave the node's address and meta as they are when registering a service.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skip_node_update: bool,
}

/// The body of `PUT /v1/catalog/deregister`: the node, or one service or check on it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogDeregistration {
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    #[serde(rename = "ServiceID", skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    #[serde(rename = "CheckID", skip_serializing_if = "Option::is_none")]
    pub check_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Agent

/// Serf's member status as `/v1/agent/members` numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberStatus {
    None,
    Alive,
    Leaving,
    Left,
    Failed,
    Other(i64),
}

impl MemberStatus {
    pub fn from_code(code: i64) -> Self {
        match code {
            0 => MemberStatus::None,
            1 => MemberStatus::Alive,
            2 => MemberStatus::Leaving,
            3 => MemberStatus::Left,
            4 => MemberStatus::Failed,
            other => MemberStatus::Other(other),
        }
    }
}

/// A gossip pool member (`/v1/agent/members`, and `Member` in `/v1/agent/self`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Member {
    pub name: String,
    pub addr: String,
    pub port: u16,
    /// Serf tags; servers carry `role=consul`, and `build`, `dc`, `id`, ...
    #[serde(deserialize_with = "null_as_default")]
    pub tags: BTreeMap<String, String>,
    /// Serf's status code; see [`Member::status`].
    #[serde(rename = "Status")]
    pub status_code: i64,
}

impl Member {
    pub fn status(&self) -> MemberStatus {
        MemberStatus::from_code(self.status_code)
    }

    /// Whether the member is a Consul server (serf tag `role=consul`).
    pub fn is_server(&self) -> bool {
        self.tags.get("role").map(String::as_str) == Some("consul")
    }
}

/// The parts of `/v1/agent/self` the client uses; the rest of that large answer is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentSelf {
    pub config: AgentConfig,
    pub member: Member,
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
}

/// `Config` in `/v1/agent/self`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentConfig {
    pub datacenter: String,
    pub node_name: String,
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub server: bool,
    pub version: String,
    pub revision: String,
}

// ---------------------------------------------------------------------------------------------
// Operator

/// A server in the Raft configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RaftServer {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub leader: bool,
    pub protocol_version: String,
    pub voter: bool,
}

/// `/v1/operator/raft/configuration`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RaftConfiguration {
    #[serde(deserialize_with = "null_as_default")]
    pub servers: Vec<RaftServer>,
    /// The Raft index of this configuration.
    pub index: u64,
}

impl RaftConfiguration {
    pub fn leader(&self) -> Option<&RaftServer> {
        self.servers.iter().find(|s| s.leader)
    }

    pub fn voters(&self) -> usize {
        self.servers.iter().filter(|s| s.voter).count()
    }
}

/// Which Raft peer to remove (`DELETE /v1/operator/raft/peer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RaftPeer {
    /// The server's Raft ID (a UUID since Raft protocol 3).
    Id(String),
    /// The server's Raft address, `ip:port`.
    Address(String),
}

/// One server in `/v1/operator/autopilot/health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServerHealth {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub address: String,
    /// `alive`, `leaving`, `left`, `failed`, `none`.
    pub serf_status: String,
    pub version: String,
    pub leader: bool,
    /// A Go duration string ("0s", "12ms"), or nanoseconds from some versions; None where
    /// Consul has no contact with the server and says `"-1ns"` (a failed one).
    #[serde(with = "duration::go_signed")]
    pub last_contact: Option<Duration>,
    pub last_term: u64,
    pub last_index: u64,
    pub healthy: bool,
    pub voter: bool,
    /// RFC 3339 time since when `healthy` has held.
    pub stable_since: String,
}

/// `/v1/operator/autopilot/health` (answered with 200 when healthy, 429 when not).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AutopilotHealth {
    pub healthy: bool,
    /// How many servers could fail without losing quorum.
    pub failure_tolerance: u32,
    #[serde(deserialize_with = "null_as_default")]
    pub servers: Vec<ServerHealth>,
}

/// One server in `/v1/operator/autopilot/state`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AutopilotServer {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub address: String,
    pub node_status: String,
    pub version: String,
    /// None where Consul has no contact with the server (a negative duration).
    #[serde(with = "duration::go_signed")]
    pub last_contact: Option<Duration>,
    pub last_term: u64,
    pub last_index: u64,
    pub healthy: bool,
    pub stable_since: String,
    pub read_replica: bool,
    /// `leader`, `voter`, `non-voter` or `staging`.
    pub status: String,
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    pub node_type: String,
}

/// `/v1/operator/autopilot/state` (Consul 1.9+).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AutopilotState {
    pub healthy: bool,
    pub failure_tolerance: u32,
    pub optimistic_failure_tolerance: u32,
    /// Keyed by Raft ID.
    #[serde(deserialize_with = "null_as_default")]
    pub servers: BTreeMap<String, AutopilotServer>,
    /// The leader's Raft ID.
    pub leader: String,
    #[serde(deserialize_with = "null_as_default")]
    pub voters: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub read_replicas: Vec<String>,
}

/// `/v1/operator/autopilot/configuration`, read and written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AutopilotConfiguration {
    pub cleanup_dead_servers: bool,
    #[serde(with = "duration::go")]
    pub last_contact_threshold: Duration,
    pub max_trailing_logs: u64,
    pub min_quorum: u32,
    /// How long a new server must be healthy before autopilot makes it a voter.
    #[serde(with = "duration::go")]
    pub server_stabilization_time: Duration,
    pub redundancy_zone_tag: String,
    pub disable_upgrade_migration: bool,
    pub upgrade_version_tag: String,
    /// Read-only; pass it as `cas` to update only an unchanged configuration.
    #[serde(skip_serializing)]
    pub create_index: u64,
    #[serde(skip_serializing)]
    pub modify_index: u64,
}

impl Default for AutopilotConfiguration {
    /// Consul's documented defaults.
    fn default() -> Self {
        Self {
            cleanup_dead_servers: true,
            last_contact_threshold: Duration::from_millis(200),
            max_trailing_logs: 250,
            min_quorum: 0,
            server_stabilization_time: Duration::from_secs(10),
            redundancy_zone_tag: String::new(),
            disable_upgrade_migration: false,
            upgrade_version_tag: String::new(),
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// What `POST /v1/operator/raft/transfer-leader` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderTransfer {
    /// Leadership moved.
    Transferred,
    /// Consul answered, but reported that it did not transfer.
    NotTransferred,
    /// The servers predate the endpoint (Consul before 1.15 answers 404): the caller must fall
    /// back to letting the leader leave and waiting out the election.
    Unsupported,
}

/// The transfer-leader answer; Consul's struct has no JSON tags, but accept lower case too.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct TransferLeaderReply {
    #[serde(rename = "Success", alias = "success")]
    pub success: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kv_pair_from_docs_example() {
        let body = r#"[{"CreateIndex":100,"ModifyIndex":200,"LockIndex":200,"Key":"zip",
            "Flags":0,"Value":"dGVzdA==","Session":"adf4238a-882b-9ddc-4a9d-5b6758e4159e"}]"#;
        let pairs: Vec<KvPair> = serde_json::from_str(body).unwrap();
        assert_eq!(pairs[0].key, "zip");
        assert_eq!(pairs[0].value, b"test");
        assert_eq!(pairs[0].modify_index, 200);
        assert_eq!(pairs[0].lock_index, 200);
        assert_eq!(
            pairs[0].session.as_deref(),
            Some("adf4238a-882b-9ddc-4a9d-5b6758e4159e")
        );
        let empty: KvPair =
            serde_json::from_str(r#"{"Key":"dir/","Value":null,"Flags":0}"#).unwrap();
        assert!(empty.value.is_empty());
        assert_eq!(empty.session, None);
        assert!(serde_json::from_str::<KvPair>(r#"{"Key":"k","Value":"!!"}"#).is_err());
    }

    #[test]
    fn session_entry_from_docs_example() {
        // LockDelay comes back in nanoseconds, TTL as a Go duration string.
        let body = r#"[{"ID":"adf4238a-882b-9ddc-4a9d-5b6758e4159e","Name":"test-session",
            "Node":"raja-laptop-02","LockDelay":1.5e+10,"Behavior":"release","TTL":"30s",
            "NodeChecks":["serfHealth"],"ServiceChecks":null,
            "CreateIndex":1086449,"ModifyIndex":1086449}]"#;
        let s: Vec<SessionEntry> = serde_json::from_str(body).unwrap();
        assert_eq!(s[0].lock_delay, Duration::from_secs(15));
        assert_eq!(s[0].ttl, Some(Duration::from_secs(30)));
        assert_eq!(s[0].behavior, SessionBehavior::Release);
        assert_eq!(s[0].node_checks, vec!["serfHealth".to_string()]);
        assert!(s[0].service_checks.is_empty());
        let no_ttl: SessionEntry =
            serde_json::from_str(r#"{"ID":"x","TTL":"","Behavior":"delete","LockDelay":0}"#)
                .unwrap();
        assert_eq!(no_ttl.ttl, None);
        assert_eq!(no_ttl.behavior, SessionBehavior::Delete);
    }

    #[test]
    fn session_request_writes_go_durations_and_skips_unset() {
        let req = SessionRequest {
            name: Some("rehydrator".into()),
            ttl: Some(Duration::from_secs(15)),
            lock_delay: Some(Duration::from_secs(15)),
            behavior: Some(SessionBehavior::Release),
            node_checks: Some(vec![]),
            service_checks: Some(vec![ServiceCheck {
                id: "web".into(),
                namespace: String::new(),
            }]),
            ..SessionRequest::default()
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            json!({"Name": "rehydrator", "TTL": "15s", "LockDelay": "15s",
                   "Behavior": "release", "NodeChecks": [], "ServiceChecks": [{"ID": "web"}]})
        );
        assert_eq!(
            serde_json::to_value(SessionRequest::default()).unwrap(),
            json!({})
        );
    }

    #[test]
    fn user_event_from_docs_example() {
        let body = r#"{"ID":"b54fe110-7af5-cafc-d1fb-afc8ba432b1c","Name":"deploy",
            "Payload":null,"NodeFilter":"","ServiceFilter":"","TagFilter":"",
            "Version":1,"LTime":0}"#;
        let e: UserEvent = serde_json::from_str(body).unwrap();
        assert_eq!(e.name, "deploy");
        assert_eq!(e.payload, None);
        assert_eq!(e.version, 1);
        let e: UserEvent =
            serde_json::from_str(r#"{"ID":"x","Name":"n","Payload":"aGk=","LTime":19}"#).unwrap();
        assert_eq!(e.payload.as_deref(), Some(&b"hi"[..]));
        assert_eq!(e.ltime, 19);
    }

    #[test]
    fn catalog_and_health_from_docs_examples() {
        let body = r#"[{"ID":"40e4a748-2192-161a-0510-9bf59fe950b5","Node":"foobar",
            "Address":"192.168.10.10","Datacenter":"dc1",
            "TaggedAddresses":{"lan":"192.168.10.10","wan":"10.0.10.10"},
            "NodeMeta":{"somekey":"somevalue"},"CreateIndex":51,"ModifyIndex":51,
            "ServiceAddress":"172.17.0.3","ServiceEnableTagOverride":false,
            "ServiceID":"32a2a47f7992:nodea:5000","ServiceName":"foobar","ServicePort":5000,
            "ServiceTags":["tacos"],"ServiceMeta":{"foobar_meta_value":"baz"},
            "ServiceKind":"","ServiceProxy":{}}]"#;
        let s: Vec<CatalogService> = serde_json::from_str(body).unwrap();
        assert_eq!(s[0].service_id, "32a2a47f7992:nodea:5000");
        assert_eq!(s[0].service_port, 5000);
        assert_eq!(s[0].tagged_addresses["wan"], "10.0.10.10");

        let node: CatalogNode = serde_json::from_str(
            r#"{"Node":{"ID":"n1","Node":"foobar","Address":"10.1.10.12","Datacenter":"dc1",
              "TaggedAddresses":null,"Meta":{"image":"ami-1"}},
              "Services":{"consul":{"ID":"consul","Service":"consul","Tags":null,"Port":8300}}}"#,
        )
        .unwrap();
        assert_eq!(node.node.meta["image"], "ami-1");
        assert_eq!(node.services["consul"].port, 8300);
        assert!(node.services["consul"].tags.is_empty());

        let entries: Vec<ServiceEntry> = serde_json::from_str(
            r#"[{"Node":{"Node":"foobar","Address":"10.1.10.12"},
                 "Service":{"ID":"redis","Service":"redis","Tags":["primary"],"Port":8000},
                 "Checks":[{"Node":"foobar","CheckID":"service:redis","Name":"Service 'redis' check",
                   "Status":"passing","Notes":"","Output":"","ServiceID":"redis",
                   "ServiceName":"redis","ServiceTags":["primary"],"Type":"ttl"},
                  {"Node":"foobar","CheckID":"serfHealth","Name":"Serf Health Status",
                   "Status":"passing","ServiceID":"","ServiceName":"","ServiceTags":null}]}]"#,
        )
        .unwrap();
        assert_eq!(entries[0].checks.len(), 2);
        assert!(entries[0].checks.iter().all(HealthCheck::is_passing));
        assert_eq!(entries[0].checks[0].check_type, "ttl");
    }

    #[test]
    fn catalog_registration_shape() {
        let reg = CatalogRegistration {
            node: "consul-4".into(),
            address: "10.0.0.4".into(),
            node_meta: [("image".to_string(), "ami-2".to_string())].into(),
            service: Some(ServiceRegistration {
                service: "consul".into(),
                port: Some(8300),
                ..ServiceRegistration::default()
            }),
            ..CatalogRegistration::default()
        };
        assert_eq!(
            serde_json::to_value(&reg).unwrap(),
            json!({"Node": "consul-4", "Address": "10.0.0.4", "NodeMeta": {"image": "ami-2"},
                   "Service": {"Service": "consul", "Port": 8300}})
        );
        let dereg = CatalogDeregistration {
            node: "consul-4".into(),
            service_id: Some("consul".into()),
            ..CatalogDeregistration::default()
        };
        assert_eq!(
            serde_json::to_value(&dereg).unwrap(),
            json!({"Node": "consul-4", "ServiceID": "consul"})
        );
    }

    #[test]
    fn members_and_agent_self() {
        let m: Vec<Member> = serde_json::from_str(
            r#"[{"Name":"foobar","Addr":"10.1.10.12","Port":8301,
                 "Tags":{"bootstrap":"1","dc":"dc1","port":"8300","role":"consul"},
                 "Status":1,"ProtocolMin":1,"ProtocolMax":2,"ProtocolCur":2,
                 "DelegateMin":1,"DelegateMax":3,"DelegateCur":3}]"#,
        )
        .unwrap();
        assert_eq!(m[0].status(), MemberStatus::Alive);
        assert!(m[0].is_server());
        let s: AgentSelf = serde_json::from_str(
            r#"{"Config":{"Datacenter":"dc1","NodeName":"foobar","NodeID":"9d754d17",
                 "Server":true,"Revision":"deadbeef","Version":"1.15.2"},
                "DebugConfig":{"Bootstrap":true},"Coord":{"Adjustment":0},
                "Member":{"Name":"foobar","Addr":"10.1.10.12","Port":8301,"Status":1,"Tags":{}},
                "Meta":{"instance_type":"i2.xlarge"}}"#,
        )
        .unwrap();
        assert_eq!(s.config.node_name, "foobar");
        assert!(s.config.server);
        assert_eq!(s.member.status(), MemberStatus::Alive);
        assert_eq!(MemberStatus::from_code(4), MemberStatus::Failed);
    }

    #[test]
    fn operator_answers_from_docs_examples() {
        let raft: RaftConfiguration = serde_json::from_str(
            r#"{"Servers":[
                {"ID":"127.0.0.1:8300","Node":"alice","Address":"127.0.0.1:8300","Leader":true,
                 "Voter":true,"ProtocolVersion":"3"},
                {"ID":"127.0.0.2:8300","Node":"bob","Address":"127.0.0.2:8300","Leader":false,
                 "Voter":false}],"Index":22}"#,
        )
        .unwrap();
        assert_eq!(raft.index, 22);
        assert_eq!(raft.leader().map(|s| s.node.as_str()), Some("alice"));
        assert_eq!(raft.voters(), 1);

        let health: AutopilotHealth = serde_json::from_str(
            r#"{"Healthy":true,"FailureTolerance":0,"Servers":[
                {"ID":"e349749b-3303-3ddf-959c-b5885a0e1f6e","Name":"node1",
                 "Address":"127.0.0.1:8300","SerfStatus":"alive","Version":"0.7.4",
                 "Leader":true,"LastContact":"0s","LastTerm":2,"LastIndex":46,
                 "Healthy":true,"Voter":true,"StableSince":"2017-03-06T22:07:51Z"},
                {"ID":"e36ee410-cc3c-0a0c-c724-63817ab30303","Name":"node2",
                 "Address":"127.0.0.1:8205","SerfStatus":"alive","Version":"0.7.4",
                 "Leader":false,"LastContact":"27.291304ms","LastTerm":2,"LastIndex":46,
                 "Healthy":true,"Voter":false,"StableSince":"2017-03-06T22:18:26Z"},
                {"ID":"d523f8b0-17cd-867e-c636-11dd6eb2a306","Name":"node3",
                 "Address":"127.0.0.1:13471","SerfStatus":"failed","Version":"1.8.7",
                 "Leader":false,"LastContact":"-1ns","LastTerm":0,"LastIndex":0,
                 "Healthy":false,"Voter":true,"StableSince":"2026-12-05T08:33:12Z"}]}"#,
        )
        .unwrap();
        assert_eq!(health.servers[0].last_contact, Some(Duration::ZERO));
        assert_eq!(
            health.servers[1].last_contact,
            Some(Duration::from_nanos(27_291_304))
        );
        // What real 1.8.7 answers for a failed server: no contact, not an unreadable answer.
        assert_eq!(health.servers[2].last_contact, None);
        assert_eq!(health.servers[2].serf_status, "failed");
        assert!(!health.servers[1].voter);

        let state: AutopilotState = serde_json::from_str(
            r#"{"Healthy":true,"FailureTolerance":1,"OptimisticFailureTolerance":4,
                "Servers":{"5e26a3af-f4fc-4104-a8bb-4da9f19cb278":{
                  "ID":"5e26a3af-f4fc-4104-a8bb-4da9f19cb278","Name":"node1",
                  "Address":"198.18.0.1:8300","NodeStatus":"alive","Version":"1.9.0",
                  "LastContact":"0s","LastTerm":2,"LastIndex":91,"Healthy":true,
                  "StableSince":"2020-11-06T14:46:27Z","ReadReplica":false,"Status":"leader",
                  "Meta":{"consul-network-segment":""},"NodeType":"voter"}},
                "Leader":"5e26a3af-f4fc-4104-a8bb-4da9f19cb278",
                "Voters":["5e26a3af-f4fc-4104-a8bb-4da9f19cb278"],
                "RedundancyZones":{},"Upgrade":{"Status":"idle"}}"#,
        )
        .unwrap();
        assert_eq!(state.optimistic_failure_tolerance, 4);
        assert_eq!(state.servers[&state.leader].status, "leader");

        let cfg: AutopilotConfiguration = serde_json::from_str(
            r#"{"CleanupDeadServers":true,"LastContactThreshold":"200ms","MaxTrailingLogs":250,
                "MinQuorum":0,"ServerStabilizationTime":"10s","RedundancyZoneTag":"",
                "DisableUpgradeMigration":false,"UpgradeVersionTag":"",
                "CreateIndex":4,"ModifyIndex":4}"#,
        )
        .unwrap();
        assert_eq!(cfg.server_stabilization_time, Duration::from_secs(10));
        assert_eq!(cfg.modify_index, 4);
        let out = serde_json::to_value(&cfg).unwrap();
        assert_eq!(out["ServerStabilizationTime"], "10s");
        assert_eq!(out["LastContactThreshold"], "200ms");
        assert!(out.get("ModifyIndex").is_none());

        let t: TransferLeaderReply = serde_json::from_str(r#"{"Success":true}"#).unwrap();
        assert!(t.success);
        let t: TransferLeaderReply = serde_json::from_str(r#"{"success":true}"#).unwrap();
        assert!(t.success);
    }
}
