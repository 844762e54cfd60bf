//! Shared by the end-to-end tests: a simulator on an ephemeral loopback port, and a bound on
//! every async test so a hang fails fast instead of stalling CI.
#![allow(dead_code)]
pub mod consul_agent;
pub mod contract;
pub mod demo;
pub mod endpoint;
pub mod hostile;
pub mod moto;
pub mod moto_rollout;
pub mod process_rig;
pub mod proxy;
pub mod replica;
pub mod rig;
pub mod rollout;
pub mod shape;
pub mod target;

use std::future::Future;
use std::time::Duration;

use rehydrator_sim::{RunningSim, SimConfig};

/// The real consul binary the real-Consul tests run: `CONSUL_BIN`, which `scripts/test.sh`
/// sets (installing Debian's 1.8.7 into the project's cache). Without it a test skips, saying
/// so, except under `CI=true`, where a missing Consul fails it: CI must run them.
pub fn consul_bin() -> Option<std::path::PathBuf> {
    let bin = std::env::var_os("CONSUL_BIN")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from);
    if bin.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but CONSUL_BIN is not set: the real-Consul tests must run in CI \
             (scripts/test.sh installs Consul with scripts/consul.sh)"
        );
        println!(
            "skipped: CONSUL_BIN is not set (scripts/test.sh sets it; or point it at a consul \
             binary)"
        );
    }
    bin
}

/// The real prometheus binary (`promtool` beside it) the Prometheus tests run:
/// `PROMETHEUS_BIN`, which `scripts/test.sh` sets (installing Debian's 2.24.1 into the
/// project's cache). Skips without it, saying so, except under `CI=true`, where it fails.
pub fn prometheus_bin() -> Option<std::path::PathBuf> {
    let bin = std::env::var_os("PROMETHEUS_BIN")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from);
    if bin.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but PROMETHEUS_BIN is not set: the Prometheus tests must run in CI \
             (scripts/test.sh installs it with scripts/prometheus.sh)"
        );
        println!("skipped: PROMETHEUS_BIN is not set (scripts/test.sh sets it)");
    }
    bin
}

/// How long any one end-to-end test may run.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `fut`, failing the test if it takes longer than `TEST_TIMEOUT`.
pub async fn bounded<F: Future>(fut: F) -> F::Output {
    bounded_for(TEST_TIMEOUT, fut).await
}

/// Runs `fut`, failing the test if it takes longer than `limit` (for the tests that wait out
/// session TTLs in real time).
pub async fn bounded_for<F: Future>(limit: Duration, fut: F) -> F::Output {
    match actix_rt::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}

/// Polls `probe` every 50ms until it answers `Some`, failing after `limit` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "gave up after {limit:?} waiting for {what}"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A simulator with `servers` servers on 127.0.0.1:0, with time sped up by `time_scale`.
pub fn sim_with(config: SimConfig) -> RunningSim {
    rehydrator_sim::start("127.0.0.1:0".parse().expect("loopback address"), config)
        .expect("simulator binds an ephemeral loopback port")
}

/// A 3-server simulator at real Consul timing.
pub fn sim() -> RunningSim {
    sim_with(SimConfig::default())
}

/// An HTTP server on a loopback port answering POST `path` with `handler` (sharing `data`),
/// one worker, signals left alone: the URL of `path` and the handle to stop it.
pub fn serve_post<T, F, Args>(
    path: &'static str,
    data: actix_web::web::Data<T>,
    handler: F,
) -> (String, actix_web::dev::ServerHandle)
where
    T: Send + Sync + 'static,
    F: actix_web::Handler<Args> + Clone + Send + 'static,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    serve(path, actix_web::http::Method::POST, data, handler)
}

/// As `serve_post`, answering `method`.
pub fn serve<T, F, Args>(
    path: &'static str,
    method: actix_web::http::Method,
    data: actix_web::web::Data<T>,
    handler: F,
) -> (String, actix_web::dev::ServerHandle)
where
    T: Send + Sync + 'static,
    F: actix_web::Handler<Args> + Clone + Send + 'static,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new().app_data(data.clone()).route(
            path,
            actix_web::web::method(method.clone()).to(handler.clone()),
        )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .expect("a loopback port");
    let url = format!("http://{}{path}", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (url, handle)
}
