//! Consul's `/v1/health/...` endpoints over the catalog's checks.
//!
//! Who talks to it: HTTP clients and watchers (`consul watch -type service|checks` style), all
//! blocking on `Topic::Checks` (and `Topic::Catalog` where services or nodes are read).
//!
//! Routes (GET only): /v1/health/service/{name} (?passing, ?tag repeated, ?node-meta),
//! /v1/health/checks/{service}, /v1/health/state/{state} ("any" for all), /v1/health/node/{node}.
//! As Consul's HTTP layer does, nil lists go out as `[]` and `?passing` drops every instance with
//! any non-passing check, node checks (serfHealth) included.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use crate::api::shapes::{CheckJson, NodeJson, NodeServiceJson};
use crate::http::{blocking, ApiError, Fresh, Params, QueryOptions, Read, ReadRequest};
use crate::state::{Sim, State};
use crate::store::catalog::{CheckEntry, NodeMetaFilter};
use crate::watch::Topic;

/// Registers the `/v1/health` routes; each takes every method so a wrong one gets a 405.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/health/service/{name:.*}", web::route().to(service))
        .route(
            "/v1/health/checks/{name:.*}",
            web::route().to(service_checks),
        )
        .route("/v1/health/state/{state:.*}", web::route().to(state))
        .route("/v1/health/node/{node:.*}", web::route().to(node));
}

/// Go's strconv.ParseBool, with a bare flag meaning true (Consul's getBoolQueryParam).
fn parse_bool_flag(v: Option<&str>) -> Result<bool, ()> {
    match v {
        None => Ok(false),
        Some("") | Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(_) => Err(()),
    }
}

/// Every value of a repeated query parameter (`?tag=a&tag=b`), decoded.
fn all_values(req: &HttpRequest, key: &str) -> Vec<String> {
    req.query_string()
        .split('&')
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k) == key).then(|| dec(v))
        })
        .collect()
}

fn checks_json<'a>(checks: impl Iterator<Item = &'a CheckEntry>) -> Vec<Value> {
    checks
        .map(|c| serde_json::to_value(CheckJson::new(c)).unwrap_or(Value::Null))
        .collect()
}

/// The checks `keep` selects on the nodes passing `?node-meta`, as a blocking read on the
/// checks table: what `/health/checks/{service}` and `/health/state/{state}` both answer.
async fn matching_checks(
    sim: &Sim,
    opts: &QueryOptions,
    params: &Params,
    keep: impl Fn(&CheckEntry) -> bool,
) -> Result<HttpResponse, ApiError> {
    let filter = NodeMetaFilter::parse(params.get("node-meta"));
    let (meta, value) = blocking(sim, opts, Fresh::Greater, |st| {
        let list = checks_json(
            st.catalog
                .nodes()
                .filter(|n| filter.matches(n))
                .flat_map(|n| n.checks.values())
                .filter(|c| keep(c)),
        );
        Ok(Read {
            index: check_index(st),
            value: list,
            topics: vec![Topic::Checks],
        })
    })
    .await?;
    Ok(meta.with_consistency().json(&value))
}

fn check_index(st: &State) -> u64 {
    st.catalog.checks_index
}

/// GET /v1/health/service/{name} — `[{Node, Service, Checks}]`; blocking.
async fn service(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (ReadRequest { params, opts }, name) =
        ReadRequest::named(&req, path.into_inner(), "Missing service name")?;
    let tags = all_values(&req, "tag");
    let filter = NodeMetaFilter::parse(params.get("node-meta"));
    let passing = parse_bool_flag(params.get("passing"))
        .map_err(|_| ApiError::bad_request("Invalid value for ?passing"))?;
    let (meta, value) = blocking(&sim, &opts, Fresh::Greater, |st| {
        let dc = st.config.datacenter.as_str();
        let mut out = Vec::new();
        for (n, s) in st.catalog.instances(&name, &tags, &filter) {
            let checks: Vec<&CheckEntry> = n
                .checks
                .values()
                .filter(|c| c.service_id.is_empty() || c.service_id == s.id)
                .collect();
            if passing && checks.iter().any(|c| c.status != "passing") {
                continue;
            }
            out.push(serde_json::json!({
                "Node": NodeJson::new(n, dc),
                "Service": NodeServiceJson::new(s),
                "Checks": checks_json(checks.into_iter()),
            }));
        }
        Ok(Read {
            index: st.catalog.service_index(&name, true),
            value: out,
            topics: vec![Topic::Catalog, Topic::Checks],
        })
    })
    .await?;
    Ok(meta.with_consistency().json(&value))
}

/// GET /v1/health/checks/{service} — the checks of a service's instances; blocking.
async fn service_checks(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (ReadRequest { params, opts }, name) =
        ReadRequest::named(&req, path.into_inner(), "Missing service name")?;
    matching_checks(&sim, &opts, &params, |c| c.service_name == name).await
}

/// GET /v1/health/state/{state} — checks in a state, "any" for all; blocking.
async fn state(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (ReadRequest { params, opts }, wanted) =
        ReadRequest::named(&req, path.into_inner(), "Missing check state")?;
    // Consul does not validate the state: an unknown one simply matches no check.
    matching_checks(&sim, &opts, &params, |c| {
        wanted == "any" || c.status == wanted
    })
    .await
}

/// GET /v1/health/node/{node} — a node's checks (`[]` for an unknown node); blocking.
async fn node(
    sim: web::Data<Sim>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (ReadRequest { opts, .. }, name) =
        ReadRequest::named(&req, path.into_inner(), "Missing node name")?;
    let (meta, value) = blocking(&sim, &opts, Fresh::Greater, |st| {
        let list = checks_json(
            st.catalog
                .node(&name)
                .into_iter()
                .flat_map(|n| n.checks.values()),
        );
        Ok(Read {
            index: check_index(st),
            value: list,
            topics: vec![Topic::Checks],
        })
    })
    .await?;
    Ok(meta.with_consistency().json(&value))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passing_parses_like_go() {
        assert_eq!(parse_bool_flag(None), Ok(false));
        assert_eq!(parse_bool_flag(Some("")), Ok(true));
        assert_eq!(parse_bool_flag(Some("true")), Ok(true));
        assert_eq!(parse_bool_flag(Some("0")), Ok(false));
        assert!(parse_bool_flag(Some("yes")).is_err());
    }
}

#[cfg(test)]
mod http_tests {
    use crate::testkit::{bounded, Api};

    #[actix_rt::test]
    async fn a_service_read_ignores_writes_to_other_services() {
        bounded(async {
            let api = Api::start(1.0);
            let before = api.get("/v1/health/service/consul").await;
            let catalog_before = api.get("/v1/catalog/service/consul").await;
            let services_before = api.get("/v1/catalog/services").await;
            let node = api.sim().lock().config.agent_node.clone();
            let body = serde_json::json!({
                "Node": node,
                "Address": "127.0.0.1",
                "SkipNodeUpdate": true,
                "Service": {"Service": "web", "Port": 80},
            });
            let r = api
                .put("/v1/catalog/register", body.to_string().as_bytes())
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            let services = api.get("/v1/catalog/services").await;
            assert!(services.index > services_before.index, "the write happened");
            // Consul answers a service's reads at its own `service.<name>` index.
            assert_eq!(
                api.get("/v1/health/service/consul").await.index,
                before.index
            );
            assert_eq!(
                api.get("/v1/catalog/service/consul").await.index,
                catalog_before.index
            );
            let web = api.get("/v1/health/service/web").await;
            assert_eq!(web.index, services.index);
        })
        .await;
    }

    #[actix_rt::test]
    async fn catalog_and_health_reads_report_their_effective_consistency() {
        bounded(async {
            let api = Api::start(1.0);
            for (path, want) in [
                ("/v1/catalog/nodes", "leader"),
                ("/v1/catalog/services?stale", "stale"),
                ("/v1/catalog/service/consul?consistent", "consistent"),
                ("/v1/health/service/consul", "leader"),
                ("/v1/health/state/any?max_stale=1m", "stale"),
            ] {
                let r = api.get(path).await;
                assert_eq!(r.status, 200, "{path}: {}", r.text());
                assert_eq!(
                    r.header("X-Consul-Effective-Consistency").as_deref(),
                    Some(want),
                    "{path}"
                );
                assert_eq!(
                    r.header("X-Consul-Query-Backend").as_deref(),
                    Some("blocking-query"),
                    "{path}"
                );
            }
        })
        .await;
    }
}
