//! The status endpoint `rehydrator run` serves on `[status] listen` (actix-web):
//!
//! - `GET /healthz`: 200 while the process and its actor system answer;
//! - `GET /readyz`: 200 while this replica holds a live Consul session and Consul answers,
//!   else 503; both with a JSON body saying why;
//! - `GET /metrics`: the replica's metrics in the OpenMetrics text format;
//! - `GET /v1/status`: the cluster's status, exactly what `rehydrator status --json` prints;
//! - `GET /`: the dashboard, one self-contained page polling `/v1/status`.
//!
//! Any other method on these paths gets 405 with `Allow: GET`. With a status token set
//! (`access.rs`), `/v1/status` and the dashboard answer 401 without it.
//!
//! Handlers run on actix-web's worker thread and ask the `Reporter` (on the tree's thread)
//! for everything; see `reporter.rs`. `run` binds first (so a bad address fails before the
//! tree starts), serves once the tree is up, and stops the server after the tree.

pub mod access;
pub mod reporter;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix::Addr;
use actix_web::dev::ServerHandle;
use actix_web::http::header::{CacheControl, CacheDirective, ContentType};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use rehydrator_actors::metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;
use serde_json::json;
use tracing::warn;

use access::Access;
use reporter::{GetMetrics, GetReadiness, GetStatus, Ping, Reporter};

/// The dashboard page, built into the binary: no files to ship, nothing fetched from outside.
const DASHBOARD: &str = include_str!("endpoint/dashboard.html");

/// How long `/healthz` waits for the actor system's thread to answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a `/v1/status` or `/metrics` request waits for its answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stop waits for requests in flight (a dashboard's poll) before closing.
const STOP_GRACE_SECS: u64 = 2;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("status.listen {listen}: cannot listen there: {source}")]
    Bind {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("status.listen {listen}: cannot serve: {source}")]
    Serve {
        listen: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Takes `listen` before anything else starts, so a taken port fails `run` at once.
pub fn bind(listen: SocketAddr) -> Result<TcpListener, EndpointError> {
    TcpListener::bind(listen).map_err(|source| EndpointError::Bind { listen, source })
}

/// The endpoint, serving.
pub struct RunningEndpoint {
    addr: SocketAddr,
    handle: ServerHandle,
}

impl RunningEndpoint {
    /// Where it listens (the port chosen, when `listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving: requests in flight get a short grace, then connections close.
    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

/// Serves the endpoint on `listener` (from `bind`), answering through `reporter`. Must be
/// called inside the actix system `run` runs.
pub fn serve(
    listener: TcpListener,
    reporter: Addr<Reporter>,
    access: Access,
) -> Result<RunningEndpoint, EndpointError> {
    let listen = listener
        .local_addr()
        .map_err(|source| EndpointError::Serve {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(reporter.clone()))
            .app_data(web::Data::new(access.clone()))
            // A resource answers a method it has no route for with 405 and `Allow`.
            .service(web::resource("/").route(web::get().to(dashboard)))
            .service(web::resource("/healthz").route(web::get().to(healthz)))
            .service(web::resource("/readyz").route(web::get().to(readyz)))
            .service(web::resource("/metrics").route(web::get().to(metrics)))
            .service(web::resource("/v1/status").route(web::get().to(status)))
    })
    // One worker is plenty for probes, scrapes and a few dashboards; the work is the
    // Reporter's, on the tree's thread, anyway.
    .workers(1)
    // `run` owns SIGTERM and stops the server after the tree, in order.
    .disable_signals()
    .shutdown_timeout(STOP_GRACE_SECS)
    .listen(listener)
    .map_err(|source| EndpointError::Serve { listen, source })?
    .run();
    let handle = server.handle();
    actix_rt::spawn(async move {
        if let Err(e) = server.await {
            warn!(error = %e, "The status endpoint stopped with an error.");
        }
    });
    Ok(RunningEndpoint {
        addr: listen,
        handle,
    })
}

fn json_response(ok: bool, body: serde_json::Value) -> HttpResponse {
    let mut resp = if ok {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    resp.insert_header(CacheControl(vec![CacheDirective::NoStore]))
        .json(body)
}

async fn dashboard(req: HttpRequest, access: web::Data<Access>) -> HttpResponse {
    if let Some(refused) = access.refusal(&req) {
        return refused;
    }
    HttpResponse::Ok()
        .insert_header(ContentType::html())
        .body(DASHBOARD)
}

async fn healthz(reporter: web::Data<Addr<Reporter>>) -> HttpResponse {
    match tokio::time::timeout(HEALTH_TIMEOUT, reporter.send(Ping)).await {
        Ok(Ok(())) => json_response(true, json!({"status": "ok"})),
        Ok(Err(e)) => json_response(
            false,
            json!({"status": "unavailable", "reason": format!("the actor system is gone: {e}")}),
        ),
        Err(_) => json_response(
            false,
            json!({
                "status": "unavailable",
                "reason": format!("the actor system did not answer within {HEALTH_TIMEOUT:?}"),
            }),
        ),
    }
}

async fn readyz(reporter: web::Data<Addr<Reporter>>) -> HttpResponse {
    match reporter.send(GetReadiness).await {
        Ok(r) => {
            let ready = r.ready;
            json_response(ready, serde_json::to_value(r).unwrap_or_default())
        }
        Err(e) => json_response(
            false,
            json!({"ready": false, "reason": format!("the actor system is gone: {e}")}),
        ),
    }
}

async fn metrics(reporter: web::Data<Addr<Reporter>>) -> HttpResponse {
    match tokio::time::timeout(QUERY_TIMEOUT, reporter.send(GetMetrics)).await {
        Ok(Ok(Ok(text))) => HttpResponse::Ok()
            .insert_header(("content-type", METRICS_CONTENT_TYPE))
            .body(text),
        Ok(Ok(Err(e))) => {
            HttpResponse::InternalServerError().body(format!("encoding the metrics failed: {e}"))
        }
        Ok(Err(e)) => {
            HttpResponse::ServiceUnavailable().body(format!("the actor system is gone: {e}"))
        }
        Err(_) => HttpResponse::ServiceUnavailable().body("the metrics took too long"),
    }
}

async fn status(
    req: HttpRequest,
    reporter: web::Data<Addr<Reporter>>,
    access: web::Data<Access>,
) -> HttpResponse {
    if let Some(refused) = access.refusal(&req) {
        return refused;
    }
    match tokio::time::timeout(QUERY_TIMEOUT, reporter.send(GetStatus)).await {
        Ok(Ok(Ok(report))) => json_response(true, serde_json::to_value(report).unwrap_or_default()),
        Ok(Ok(Err(e))) => json_response(false, json!({"error": e.to_string(), "kind": e.kind()})),
        Ok(Err(e)) => json_response(
            false,
            json!({"error": format!("the actor system is gone: {e}")}),
        ),
        Err(_) => json_response(
            false,
            json!({"error": format!("no status within {QUERY_TIMEOUT:?}")}),
        ),
    }
}
