//! The JSON shapes the catalog and health endpoints share: `structs.Node`, `structs.NodeService`,
//! `structs.ServiceNode` and `structs.HealthCheck` as Consul's HTTP layer sends them (nil tag
//! lists become `[]`).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::store::catalog::{CheckEntry, NodeEntry, ServiceEntry, Weights};

/// `structs.Node` as the HTTP API sends it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeJson<'a> {
    #[serde(rename = "ID")]
    pub id: &'a str,
    pub node: &'a str,
    pub address: &'a str,
    pub datacenter: &'a str,
    pub tagged_addresses: &'a BTreeMap<String, String>,
    pub meta: &'a BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl<'a> NodeJson<'a> {
    pub fn new(n: &'a NodeEntry, dc: &'a str) -> Self {
        Self {
            id: &n.id,
            node: &n.node,
            address: &n.address,
            datacenter: dc,
            tagged_addresses: &n.tagged_addresses,
            meta: &n.meta,
            create_index: n.create_index,
            modify_index: n.modify_index,
        }
    }
}

/// `structs.ConnectProxyConfig` with nothing set, as Consul marshals its zero value.
pub fn empty_proxy() -> Value {
    serde_json::json!({"Mode": "", "MeshGateway": {}, "Expose": {}})
}

/// `structs.NodeService` as the HTTP API sends it (catalog/node, health/service).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeServiceJson<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    pub kind: &'a str,
    #[serde(rename = "ID")]
    pub id: &'a str,
    pub service: &'a str,
    pub tags: &'a [String],
    pub address: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tagged_addresses: Option<&'a Map<String, Value>>,
    pub meta: &'a BTreeMap<String, String>,
    pub port: i64,
    pub weights: Weights,
    pub enable_tag_override: bool,
    pub proxy: Value,
    pub connect: Value,
    pub create_index: u64,
    pub modify_index: u64,
}

impl<'a> NodeServiceJson<'a> {
    pub fn new(s: &'a ServiceEntry) -> Self {
        Self {
            kind: &s.kind,
            id: &s.id,
            service: &s.service,
            tags: &s.tags,
            address: &s.address,
            tagged_addresses: s.tagged_addresses.as_ref(),
            meta: &s.meta,
            port: s.port,
            weights: s.weights,
            enable_tag_override: s.enable_tag_override,
            proxy: empty_proxy(),
            connect: Value::Object(Map::new()),
            create_index: s.create_index,
            modify_index: s.modify_index,
        }
    }
}

/// `structs.ServiceNode` as /v1/catalog/service/{name} sends it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceNodeJson<'a> {
    #[serde(rename = "ID")]
    pub id: &'a str,
    pub node: &'a str,
    pub address: &'a str,
    pub datacenter: &'a str,
    pub tagged_addresses: &'a BTreeMap<String, String>,
    pub node_meta: &'a BTreeMap<String, String>,
    pub service_kind: &'a str,
    #[serde(rename = "ServiceID")]
    pub service_id: &'a str,
    pub service_name: &'a str,
    pub service_tags: &'a [String],
    pub service_address: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_tagged_addresses: Option<&'a Map<String, Value>>,
    pub service_weights: Weights,
    pub service_meta: &'a BTreeMap<String, String>,
    pub service_port: i64,
    pub service_socket_path: &'a str,
    pub service_enable_tag_override: bool,
    pub service_proxy: Value,
    pub service_connect: Value,
    pub create_index: u64,
    pub modify_index: u64,
}

/// `structs.HealthCheck` as the HTTP API sends it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckJson<'a> {
    pub node: &'a str,
    #[serde(rename = "CheckID")]
    pub check_id: &'a str,
    pub name: &'a str,
    pub status: &'a str,
    pub notes: &'a str,
    pub output: &'a str,
    #[serde(rename = "ServiceID")]
    pub service_id: &'a str,
    pub service_name: &'a str,
    pub service_tags: &'a [String],
    #[serde(rename = "Type")]
    pub kind: &'a str,
    pub interval: &'a str,
    pub timeout: &'a str,
    pub exposed_port: u16,
    pub definition: &'a Map<String, Value>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl<'a> CheckJson<'a> {
    pub fn new(c: &'a CheckEntry) -> Self {
        Self {
            node: &c.node,
            check_id: &c.check_id,
            name: &c.name,
            status: &c.status,
            notes: &c.notes,
            output: &c.output,
            service_id: &c.service_id,
            service_name: &c.service_name,
            service_tags: &c.service_tags,
            kind: &c.kind,
            interval: "",
            timeout: "",
            exposed_port: 0,
            definition: &c.definition,
            create_index: c.create_index,
            modify_index: c.modify_index,
        }
    }
}
