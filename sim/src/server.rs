//! Binds the simulator's HTTP server: Consul's `/v1/...` API plus the `/sim/...` control API.

use std::net::{SocketAddr, TcpListener};

use actix_web::dev::{ServerHandle, Service as _};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, App, HttpServer};

use crate::config::SimConfig;
use crate::state::Sim;

/// A simulator serving on `addr` until `stop()`.
pub struct RunningSim {
    pub addr: SocketAddr,
    pub sim: Sim,
    handle: ServerHandle,
}

impl RunningSim {
    /// `http://addr`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving; parked blocking queries are dropped with their connections.
    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

/// The simulator's routes and limits, serving `sim`: what `start` binds, and what the fuzz
/// targets (`fuzz/`) call without a socket.
pub fn configure(sim: &Sim) -> impl Fn(&mut web::ServiceConfig) + Clone {
    let data = web::Data::new(sim.clone());
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(data.clone())
            // Consul takes any body size an agent allows; 512 KiB covers a KV value's cap.
            .app_data(web::PayloadConfig::new(1024 * 1024))
            .configure(crate::api::configure)
            .configure(crate::control::configure)
            .configure(crate::group_control::configure);
    }
}

/// Starts the simulator on `listen` (port 0 picks a free one). Call inside an actix System.
pub fn start(listen: SocketAddr, config: SimConfig) -> std::io::Result<RunningSim> {
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let sim = Sim::new(config);
    let routes = configure(&sim);
    let counted = sim.clone();
    let server = HttpServer::new(move || {
        let counter = counted.clone();
        App::new()
            // Counts Consul API requests for `GET /sim/stats` (what a client costs the agent);
            // the control API's own requests are not counted.
            .wrap_fn(move |req, srv| {
                let consul = req.path().starts_with("/v1/");
                if consul {
                    counter.count_request();
                }
                let res = srv.call(req);
                async move {
                    let mut res = res.await?;
                    // Consul's handler wrapper stamps every routed /v1 answer, errors included,
                    // with the agent's acl.default_policy ("allow" unless configured, ACLs on or
                    // off); an unrouted path falls to its unwrapped index handler.
                    if consul && res.request().match_pattern().is_some() {
                        res.headers_mut().insert(
                            HeaderName::from_static("x-consul-default-acl-policy"),
                            HeaderValue::from_static("allow"),
                        );
                    }
                    Ok(res)
                }
            })
            .configure(routes.clone())
    })
    // One worker: the state sits behind one lock anyway, and tests start many simulators
    // on a 2-core machine.
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_rt::spawn(server);
    tracing::info!(%addr, "Consul simulator listening.");
    Ok(RunningSim { addr, sim, handle })
}
