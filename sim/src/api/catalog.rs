//! Consul's `/v1/catalog/...` endpoints over the catalog tables (`store::catalog`): register and
//! deregister (applied through `fsm::catalog`), and the list and lookup reads, all blocking on
//! `Topic::Catalog`. The health endpoints read the same tables; the cluster registers each
//! server node with its `consul` service and `serfHealth` check through `fsm::catalog`.
//!
//! Routes: GET /v1/catalog/datacenters, /services, /service/{name} (?tag, ?node-meta),
//! /nodes (?node-meta), /node/{node}; PUT /register, /deregister.
//! Shapes follow Consul's `structs.Node`, `structs.ServiceNode` and `structs.NodeServices` as the
//! HTTP layer sends them (nil tag lists become `[]`). Unknown node on /node/{node} is `null`.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::shapes::{empty_proxy, NodeJson, NodeServiceJson, ServiceNodeJson};
use crate::fsm::catalog::{apply_deregister, apply_register};
use crate::store::catalog::{CheckEntry, NodeMetaFilter, Registration, ServiceEntry, Weights};

use crate::http::{
    blocking, decode_body, hold_for_leader, only, ApiError, Fresh, Params, Read, ReadRequest,
};
use crate::state::{Sim, State};
use crate::watch::Topic;

/// Registers the `/v1/catalog` routes. Each takes every method so a wrong one gets Consul's 405.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/catalog/register", web::route().to(register))
        .route("/v1/catalog/deregister", web::route().to(deregister))
        .route("/v1/catalog/datacenters", web::route().to(datacenters))
        .route("/v1/catalog/services", web::route().to(services))
        .route("/v1/catalog/service/{name:.*}", web::route().to(service))
        .route("/v1/catalog/nodes", web::route().to(nodes))
        .route("/v1/catalog/node/{node:.*}", web::route().to(node));
}

// ---- request bodies ----------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct RegisterBody {
    datacenter: String,
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    tagged_addresses: Option<BTreeMap<String, String>>,
    node_meta: Option<BTreeMap<String, String>>,
    service: Option<ServiceBody>,
    check: Option<CheckBody>,
    checks: Option<Vec<CheckBody>>,
    skip_node_update: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ServiceBody {
    kind: String,
    #[serde(rename = "ID")]
    id: String,
    service: String,
    tags: Option<Vec<String>>,
    address: String,
    tagged_addresses: Option<Map<String, Value>>,
    meta: Option<BTreeMap<String, String>>,
    port: i64,
    weights: Option<Weights>,
    enable_tag_override: bool,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct CheckBody {
    node: String,
    #[serde(rename = "CheckID")]
    check_id: String,
    name: String,
    status: String,
    notes: String,
    output: String,
    #[serde(rename = "ServiceID")]
    service_id: String,
    #[serde(rename = "Type")]
    kind: String,
    definition: Option<Map<String, Value>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct DeregisterBody {
    datacenter: String,
    node: String,
    #[serde(rename = "ServiceID")]
    service_id: String,
    #[serde(rename = "CheckID")]
    check_id: String,
}

/// Validates and defaults a registration as Consul's Catalog.Register RPC does.
fn to_registration(b: RegisterBody) -> Result<Registration, ApiError> {
    if b.node.is_empty() {
        return Err(ApiError::rpc("Must provide node"));
    }
    if b.address.is_empty() && !b.skip_node_update {
        return Err(ApiError::rpc(
            "Must provide address if SkipNodeUpdate is not set",
        ));
    }
    if !b.id.is_empty() && uuid::Uuid::parse_str(&b.id).is_err() {
        return Err(ApiError::rpc(format!(
            "Bad node ID: uuid string is wrong length ({:?})",
            b.id
        )));
    }
    let service = match b.service {
        None => None,
        Some(s) => {
            if s.service.is_empty() {
                return Err(ApiError::rpc("Must provide service name"));
            }
            let id = if s.id.is_empty() {
                s.service.clone()
            } else {
                s.id
            };
            Some(ServiceEntry {
                kind: s.kind,
                id,
                service: s.service,
                tags: s.tags.unwrap_or_default(),
                address: s.address,
                tagged_addresses: s.tagged_addresses,
                meta: s.meta.unwrap_or_default(),
                port: s.port,
                weights: s.weights.unwrap_or_default(),
                enable_tag_override: s.enable_tag_override,
                create_index: 0,
                modify_index: 0,
            })
        }
    };
    let mut checks = Vec::new();
    for c in b.check.into_iter().chain(b.checks.unwrap_or_default()) {
        if !c.node.is_empty() && c.node != b.node {
            return Err(ApiError::rpc(format!(
                "Node mismatch: check node \"{}\" does not match registered node \"{}\"",
                c.node, b.node
            )));
        }
        let check_id = if c.check_id.is_empty() {
            c.name.clone()
        } else {
            c.check_id
        };
        if check_id.is_empty() {
            return Err(ApiError::rpc("Missing check ID"));
        }
        let status = if c.status.is_empty() {
            "critical".to_owned()
        } else {
            c.status
        };
        if !matches!(
            status.as_str(),
            "passing" | "warning" | "critical" | "maintenance"
        ) {
            return Err(ApiError::rpc(format!("Invalid check status: {status:?}")));
        }
        checks.push(CheckEntry {
            node: b.node.clone(),
            check_id,
            name: c.name,
            status,
            notes: c.notes,
            output: c.output,
            service_id: c.service_id,
            service_name: String::new(),
            service_tags: Vec::new(),
            kind: c.kind,
            definition: c.definition.unwrap_or_default(),
            create_index: 0,
            modify_index: 0,
        });
    }
    Ok(Registration {
        id: b.id,
        node: b.node,
        address: b.address,
        tagged_addresses: b.tagged_addresses.unwrap_or_default(),
        meta: b.node_meta.unwrap_or_default(),
        skip_node_update: b.skip_node_update,
        service,
        checks,
    })
}

// ---- handlers ----------------------------------------------------------------------------

/// A write needs the leader; the agent forwards it to the servers.
fn write_preconditions(st: &State, dc: &str) -> Result<(), ApiError> {
    if !dc.is_empty() && dc != st.config.datacenter {
        return Err(ApiError::internal("No path to datacenter"));
    }
    if !st.cluster.has_leader() {
        return Err(ApiError::no_leader());
    }
    Ok(())
}

/// PUT /v1/catalog/register — a `structs.RegisterRequest` body; answers `true`.
async fn register(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let b: RegisterBody = decode_body(&body)?;
    let dc = Params::from_request(&req)
        .get("dc")
        .map(str::to_owned)
        .unwrap_or_else(|| b.datacenter.clone());
    let reg = to_registration(b)?;
    hold_for_leader(&sim, Some(dc.as_str()).filter(|d| !d.is_empty())).await;
    let mut st = sim.lock();
    write_preconditions(&st, &dc)?;
    apply_register(&sim, &mut st, reg)?;
    Ok(HttpResponse::Ok().json(true))
}

/// PUT /v1/catalog/deregister — `{Node, ServiceID?, CheckID?}`; answers `true`.
async fn deregister(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let b: DeregisterBody = decode_body(&body)?;
    if b.node.is_empty() {
        return Err(ApiError::internal("Must provide node"));
    }
    let dc = Params::from_request(&req)
        .get("dc")
        .map(str::to_owned)
        .unwrap_or_else(|| b.datacenter.clone());
    hold_for_leader(&sim, Some(dc.as_str()).filter(|d| !d.is_empty())).await;
    let mut st = sim.lock();
    write_preconditions(&st, &dc)?;
    let sid = Some(b.service_id.as_str()).filter(|s| !s.is_empty());
    let cid = Some(b.check_id.as_str()).filter(|s| !s.is_empty());
    apply_deregister(&sim, &mut st, &b.node, sid, cid);
    Ok(HttpResponse::Ok().json(true))
}

/// GET /v1/catalog/datacenters — the one datacenter; no blocking, no leader needed.
async fn datacenters(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "GET")?;
    let dc = sim.lock().config.datacenter.clone();
    Ok(HttpResponse::Ok().json(vec![dc]))
}

/// GET /v1/catalog/services — `{name: [tags]}`; blocking.
async fn services(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let ReadRequest { params, opts } = ReadRequest::get(&req)?;
    let filter = NodeMetaFilter::parse(params.get("node-meta"));
    let (meta, value) = blocking(&sim, &opts, Fresh::Greater, |st| {
        Ok(Read {
            index: st.catalog.services_index,
            value: st.catalog.service_tags(&filter),
            topics: vec![Topic::Catalog],
        })
    })
    .await?;
    Ok(meta.with_consistency().json(&value))
}

/// GET /v1/catalog/service/{name} — the instances of a service (`?tag` filters); blocking.
async fn service(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (ReadRequest { params, opts }, name) =
        ReadRequest::named(&req, path.into_inner(), "Missing service name")?;
    let filter = NodeMetaFilter::parse(params.get("node-meta"));
    let tags: Vec<String> = params
        .get("tag")
        .map(|t| vec![t.to_owned()])
        .unwrap_or_default();
    let (meta, value) = blocking(&sim, &opts, Fresh::Greater, |st| {
        let dc = st.config.datacenter.as_str();
        let list: Vec<Value> = st
            .catalog
            .instances(&name, &tags, &filter)
            .map(|(n, s)| {
                serde_json::to_value(ServiceNodeJson {
                    id: &n.id,
                    node: &n.node,
                    address: &n.address,
                    datacenter: dc,
                    tagged_addresses: &n.tagged_addresses,
                    node_meta: &n.meta,
                    service_kind: &s.kind,
                    service_id: &s.id,
                    service_name: &s.service,
                    service_tags: &s.tags,
                    service_address: &s.address,
                    service_tagged_addresses: s.tagged_addresses.as_ref(),
                    service_weights: s.weights,
                    service_meta: &s.meta,
                    service_port: s.port,
                    service_socket_path: "",
                    service_enable_tag_override: s.enable_tag_override,
                    service_proxy: empty_proxy(),
                    service_connect: Value::Object(Map::new()),
                    create_index: s.create_index,
                    modify_index: s.modify_index,
                })
                .unwrap_or(Value::Null)
            })
            .collect();
        Ok(Read {
            index: st.catalog.service_index(&name, false),
            value: list,
            topics: vec![Topic::Catalog],
        })
    })
    .await?;
    Ok(meta.with_consistency().json(&value))
}

/// GET /v1/catalog/nodes — every node; blocking.
async fn nodes(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let ReadRequest { params, opts } = ReadRequest::get(&req)?;
    let filter = NodeMetaFilter::parse(params.get("node-meta"));
    let (meta, value) = blocking(&sim, &opts, Fresh::Greater, |st| {
        let dc = st.config.datacenter.as_str();
        let list: Vec<Value> = st
            .catalog
            .nodes()
            .filter(|n| filter.matches(n))
            .map(|n| serde_json::to_value(NodeJson::new(n, dc)).unwrap_or(Value::Null))
            .collect();
        Ok(Read {
            index: st.catalog.nodes_index,
            value: list,
            topics: vec![Topic::Catalog],
        })
    })
    .await?;
    Ok(meta.with_consistency().json(&value))
}

/// GET /v1/catalog/node/{node} — `{Node, Services: {id: service}}`, or `null`; blocking.
async fn node(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (ReadRequest { opts, .. }, name) =
        ReadRequest::named(&req, path.into_inner(), "Missing node name")?;
    let (meta, value) = blocking(&sim, &opts, Fresh::Greater, |st| {
        let dc = st.config.datacenter.as_str();
        let value = match st.catalog.node(&name) {
            None => Value::Null,
            Some(n) => {
                let services: BTreeMap<&str, NodeServiceJson> = n
                    .services
                    .values()
                    .map(|s| (s.id.as_str(), NodeServiceJson::new(s)))
                    .collect();
                serde_json::json!({"Node": NodeJson::new(n, dc), "Services": services})
            }
        };
        Ok(Read {
            index: st.catalog.nodes_index.max(st.catalog.services_index),
            value,
            topics: vec![Topic::Catalog],
        })
    })
    .await?;
    Ok(meta.with_consistency().json(&value))
}
