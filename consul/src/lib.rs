//! The Consul HTTP API client, on awc.
//!
//! One [`Client`] talks to one Consul agent. Its methods follow Consul's endpoint groups, one
//! file each: kv.rs, session.rs, event.rs, catalog.rs, health.rs, agent.rs, operator.rs (with
//! status). Reads take [`QueryOptions`] and return [`Indexed`] values whose [`QueryMeta`] feeds
//! the next blocking query; [`WatchState`] holds the rules for looping on them.
//!
//! Used by the binary's adapter for the actors' `ConsulPort` (the Watcher, LockManager and
//! executors) and by `rehydrator fire` / `status` / `doctor`. A crate of its own, free of the
//! actors and the cloud SDKs, so that its decoding of Consul's answers can be fuzzed on its own
//! (fuzz/fuzz_targets/consul_answer.rs). awc's client is `!Send`: a `Client` lives on one actix
//! arbiter; clone it (cheap) for each actor on that arbiter.

pub mod acl;
mod agent;
mod catalog;
pub mod config;
pub mod duration;
mod error;
mod event;
mod health;
mod kv;
mod operator;
pub mod query;
mod session;
mod snapshot;
mod tls;
pub mod txn;
pub mod types;
mod watch;

use std::time::Duration;

use awc::http::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use config::{ConsulConfig, TlsConfig, Token};
pub use error::ConsulError;
pub use event::EventFilter;
pub use kv::{KvDeleteOptions, KvPutOptions};
pub use query::{
    Consistency, IndexOrder, IndexUpdate, Indexed, QueryMeta, QueryOptions, WatchPolicy, WatchState,
};
pub use snapshot::Snapshot;
pub use txn::{KvTxnOp, TxnError, TxnOutcome, MAX_TXN_OPS};
pub use types::*;

/// Largest answer body read by default: sessions, status, autopilot, a single key's entry
/// (Consul's own `kv_max_value_size` default is 512 KiB, base64 in the answer).
pub(crate) const MAX_BODY: usize = 4 * 1024 * 1024;
/// Largest answer of a list that grows with the cluster: a recursive KV read, the catalog, a
/// service's health, the member list.
pub(crate) const MAX_LIST_BODY: usize = 32 * 1024 * 1024;
/// Largest event list: the agent keeps 256 events of at most 512 bytes of payload each.
pub(crate) const MAX_EVENT_LIST_BODY: usize = 1024 * 1024;

/// Characters left as they are in a path segment or query value: RFC 3986's unreserved set.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Like [`COMPONENT`], keeping `/`: a KV key's slashes are its hierarchy, which Consul reads
/// from the path.
const KEY_PATH: &AsciiSet = &COMPONENT.remove(b'/');

/// A client of one Consul agent's HTTP API.
#[derive(Clone)]
pub struct Client {
    http: awc::Client,
    address: String,
    token: Option<Token>,
    datacenter: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.address)
            .field("token", &self.token)
            .field("datacenter", &self.datacenter)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A request on its way: the part of the URL after `/v1/` and the query parameters
/// (`None` value = a flag sent bare, as `?recurse`).
pub(crate) struct Call {
    method: Method,
    path: String,
    params: Vec<(&'static str, Option<String>)>,
    /// Overrides the client's datacenter.
    datacenter: Option<String>,
    timeout_slack: Option<Duration>,
    query: Option<QueryOptions>,
    /// The largest answer body read, in bytes.
    max_body: usize,
}

impl Call {
    pub(crate) fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            params: Vec::new(),
            datacenter: None,
            timeout_slack: None,
            query: None,
            max_body: MAX_BODY,
        }
    }

    /// Reads an answer of up to `bytes` (default [`MAX_BODY`]).
    pub(crate) fn limit(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Gives the request `after` instead of the client's timeout (a snapshot's transfer).
    pub(crate) fn timeout(mut self, after: Duration) -> Self {
        self.timeout_slack = Some(after);
        self
    }

    pub(crate) fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    pub(crate) fn put(path: impl Into<String>) -> Self {
        Self::new(Method::PUT, path)
    }

    /// Adds `key=value`.
    pub(crate) fn param(mut self, key: &'static str, value: impl ToString) -> Self {
        self.params.push((key, Some(value.to_string())));
        self
    }

    /// Adds `key=value` when there is a value.
    pub(crate) fn param_opt(self, key: &'static str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.param(key, v),
            None => self,
        }
    }

    /// Adds the bare flag `key` when `on`.
    pub(crate) fn flag(mut self, key: &'static str, on: bool) -> Self {
        if on {
            self.params.push((key, None));
        }
        self
    }

    /// Applies a read's options: blocking, consistency, datacenter.
    pub(crate) fn options(mut self, opts: &QueryOptions) -> Self {
        self.params.extend(opts.params());
        if opts.datacenter.is_some() {
            self.datacenter.clone_from(&opts.datacenter);
        }
        self.query = Some(opts.clone());
        self
    }
}

/// A path segment, percent-encoded (node, service, session and event names, UUIDs).
pub fn segment(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// A KV key as a path, slashes kept.
pub(crate) fn key_path(key: &str) -> String {
    utf8_percent_encode(key.trim_start_matches('/'), KEY_PATH).to_string()
}

/// What came back, before the endpoint decides what it means.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub meta: QueryMeta,
    pub body: Vec<u8>,
    /// `METHOD /v1/path?query`, for errors.
    pub request: String,
    /// Whether `X-Consul-Index` came, as a number: a blocking query cannot go on without it.
    pub has_index: bool,
}

impl Answer {
    /// The body as JSON of type `T`.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, ConsulError> {
        serde_json::from_slice(&self.body).map_err(|e| ConsulError::Decode {
            request: self.request.clone(),
            reason: e.to_string(),
        })
    }

    /// An error unless Consul answered 200.
    pub(crate) fn ok(self) -> Result<Self, ConsulError> {
        if self.status == StatusCode::OK {
            Ok(self)
        } else {
            Err(self.error())
        }
    }

    pub(crate) fn error(&self) -> ConsulError {
        ConsulError::status_from(self.status.as_u16(), &self.body, &self.request)
    }

    pub(crate) fn indexed<T: DeserializeOwned>(self) -> Result<Indexed<T>, ConsulError> {
        let value = self.ok()?;
        Ok(Indexed {
            value: value.json()?,
            meta: value.meta,
        })
    }

    /// A write's `true`/`false` answer (KV put/delete, session destroy, autopilot CAS).
    pub(crate) fn bool(self) -> Result<bool, ConsulError> {
        self.ok()?.json()
    }
}

impl Client {
    /// A client for the agent `config` describes. Builds the TLS setup (CA, client certificate)
    /// now, so a bad file fails at start rather than at the first request.
    pub fn new(config: ConsulConfig) -> Result<Self, ConsulError> {
        config.validate()?;
        // `limit(0)` lifts awc's default cap of 100 connections: see `max_connections`.
        let mut connector = awc::Connector::new()
            .timeout(config.connect_timeout)
            .limit(config.max_connections);
        if config.is_https() {
            connector = connector.rustls_0_23(tls::client_config(&config.tls)?);
        }
        let http = awc::Client::builder()
            .connector(connector)
            // Consul's API never redirects: a redirect is a proxy or an impostor, and following
            // it would hand the token to whatever it names.
            .disable_redirects()
            // Each request sets its own timeout (blocking ones need more); this is a backstop.
            .timeout(config.timeout)
            .finish();
        Ok(Self {
            http,
            address: config.address,
            token: config.token,
            datacenter: config.datacenter,
            timeout: config.timeout,
        })
    }

    /// A client configured from the consul CLI's environment variables.
    pub fn from_env() -> Result<Self, ConsulError> {
        Self::new(ConsulConfig::from_env()?)
    }

    /// The same client, sending `?dc=datacenter` by default.
    pub fn with_datacenter(&self, datacenter: impl Into<String>) -> Self {
        Self {
            datacenter: Some(datacenter.into()),
            ..self.clone()
        }
    }

    /// The agent's base URL.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The full URL of `call`, without the token (it goes in a header).
    pub(crate) fn url(&self, call: &Call) -> String {
        let mut url = format!("{}/v1/{}", self.address, call.path);
        let dc = call.datacenter.as_ref().or(self.datacenter.as_ref());
        let dc_param = dc.map(|dc| ("dc", Some(dc.clone())));
        let mut first = true;
        for (key, value) in call.params.iter().chain(dc_param.iter()) {
            url.push(if first { '?' } else { '&' });
            first = false;
            url.push_str(key);
            if let Some(value) = value {
                url.push('=');
                url.extend(utf8_percent_encode(value, COMPONENT));
            }
        }
        url
    }

    /// Sends `call` with an optional body and reads the whole answer, whatever its status.
    pub(crate) async fn send(&self, call: Call, body: Option<Body>) -> Result<Answer, ConsulError> {
        let url = self.url(&call);
        let request = format!("{} {}", call.method, &url[self.address.len()..]);
        let timeout = match &call.query {
            Some(q) => q.request_timeout(call.timeout_slack.unwrap_or(self.timeout)),
            None => call.timeout_slack.unwrap_or(self.timeout),
        };
        let mut req = self
            .http
            .request(call.method.clone(), &url)
            .timeout(timeout);
        if let Some(token) = &self.token {
            req = req.insert_header(("X-Consul-Token", token.expose()));
        }
        let started = std::time::Instant::now();
        // The timeout bounds the whole exchange, body included: awc's own covers only the
        // wait for the headers, and an agent (or a proxy) trickling a byte a second would hold
        // the read for as long as it likes.
        let exchange = async {
            let sent = match body {
                None => req.send().await,
                Some(Body::Json(bytes)) => {
                    req.content_type("application/json").send_body(bytes).await
                }
                Some(Body::Raw(bytes)) => {
                    req.content_type("application/octet-stream")
                        .send_body(bytes)
                        .await
                }
            };
            let mut resp = sent.map_err(|e| self.send_error(e, &request, timeout))?;
            let body = read_body(&mut resp, call.max_body, &request).await?;
            Ok::<_, ConsulError>((resp, body))
        };
        let (resp, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ConsulError::Timeout {
                address: self.address.clone(),
                request: request.clone(),
                after: timeout,
            })??;
        let status = resp.status();
        if status.is_redirection() {
            let to = resp
                .headers()
                .get(awc::http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| "nowhere".to_owned(), redirect_target);
            return Err(ConsulError::Status {
                status: status.as_u16(),
                message: format!(
                    "a redirect to {to}, refused: Consul's API never redirects, and the token would go with it"
                ),
                request,
            });
        }
        if status == awc::http::StatusCode::BAD_REQUEST
            && !self.address.starts_with("https://")
            && body.starts_with(b"Client sent an HTTP request to an HTTPS server")
        {
            return Err(ConsulError::Status {
                status: 400,
                message: format!(
                    "the agent at {} speaks TLS: use https:// (or CONSUL_HTTP_SSL=true, consul.ssl = true)",
                    self.address
                ),
                request,
            });
        }
        let meta = QueryMeta::from_headers(resp.headers());
        let has_index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().parse::<u64>().is_ok());
        tracing::debug!(
            request = %request,
            status = status.as_u16(),
            index = meta.index,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Consul answered."
        );
        Ok(Answer {
            status,
            meta,
            body,
            request,
            has_index,
        })
    }

    /// Sends `value` as the JSON body of `call`.
    pub(crate) async fn send_json<T: Serialize + ?Sized>(
        &self,
        call: Call,
        value: &T,
    ) -> Result<Answer, ConsulError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| ConsulError::Config(format!("cannot encode request body: {e}")))?;
        self.send(call, Some(Body::Json(bytes))).await
    }

    /// A read that succeeds with 200 and a JSON body.
    pub(crate) async fn read<T: DeserializeOwned>(
        &self,
        call: Call,
    ) -> Result<Indexed<T>, ConsulError> {
        self.send(call, None).await?.indexed()
    }

    fn send_error(
        &self,
        e: awc::error::SendRequestError,
        request: &str,
        timeout: Duration,
    ) -> ConsulError {
        use awc::error::{ConnectError, SendRequestError};
        match e {
            SendRequestError::Timeout => ConsulError::Timeout {
                address: self.address.clone(),
                request: request.to_owned(),
                after: timeout,
            },
            SendRequestError::Connect(ConnectError::Timeout) => ConsulError::Unreachable {
                address: self.address.clone(),
                request: request.to_owned(),
                reason: "connect timed out".into(),
            },
            SendRequestError::Connect(e) => ConsulError::Unreachable {
                address: self.address.clone(),
                request: request.to_owned(),
                reason: e.to_string(),
            },
            SendRequestError::Url(e) => ConsulError::Config(format!("invalid URL: {e}")),
            other => {
                let mut reason = other.to_string();
                // Plain HTTP to a TLS port: the agent's TLS stack drops the connection.
                if !self.address.starts_with("https://")
                    && (reason.contains("reset by peer") || reason.contains("closed"))
                {
                    reason.push_str(
                        " (if the agent speaks TLS on this port, use https:// or CONSUL_HTTP_SSL=true)",
                    );
                }
                ConsulError::Transport {
                    request: request.to_owned(),
                    reason,
                }
            }
        }
    }
}

/// The answer's body, at most `limit` bytes, and all of it: a body that ends before its
/// `Content-Length` (the connection closed early) is an error, never a shorter answer.
async fn read_body<S>(
    resp: &mut awc::ClientResponse<S>,
    limit: usize,
    request: &str,
) -> Result<Vec<u8>, ConsulError>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, awc::error::PayloadError>> + Unpin,
{
    let declared = resp
        .headers()
        .get(awc::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ConsulError::TooLarge {
            request: request.to_owned(),
            limit,
        });
    }
    let body = resp.body().limit(limit).await.map_err(|e| match e {
        awc::error::PayloadError::Overflow => ConsulError::TooLarge {
            request: request.to_owned(),
            limit,
        },
        e => ConsulError::Transport {
            request: request.to_owned(),
            reason: format!("the answer's body broke off: {e}"),
        },
    })?;
    if let Some(n) = declared.filter(|n| *n != body.len() as u64) {
        return Err(ConsulError::Transport {
            request: request.to_owned(),
            reason: format!("the answer was cut short: {} of {n} bytes", body.len()),
        });
    }
    Ok(body.to_vec())
}

/// Where a redirect points, as far as it is safe to say: scheme and host, never a path,
/// credentials or query (which may carry secrets).
fn redirect_target(location: &str) -> String {
    let (scheme, rest) = location.split_once("://").unwrap_or(("", location));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host: String = host.chars().filter(|c| !c.is_control()).take(253).collect();
    if scheme.is_empty() {
        "a path on the same agent".to_owned()
    } else {
        format!("{scheme}://{host}")
    }
}

/// A request body.
pub(crate) enum Body {
    Json(Vec<u8>),
    Raw(Vec<u8>),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn client(dc: Option<&str>) -> Client {
        let mut config = ConsulConfig::with_address("127.0.0.1:8500").unwrap();
        config.token = Some(Token::new("secret-token"));
        config.datacenter = dc.map(str::to_owned);
        Client::new(config).unwrap()
    }

    #[actix_rt::test]
    async fn urls_encode_paths_and_params() {
        let c = client(None);
        let call = Call::get(format!("kv/{}", key_path("/rehydrator/prod/locks/step")))
            .flag("recurse", true)
            .param("separator", "/");
        assert_eq!(
            c.url(&call),
            "http://127.0.0.1:8500/v1/kv/rehydrator/prod/locks/step?recurse&separator=%2F"
        );
        let call = Call::get(format!("kv/{}", key_path("a b/ü?#&")));
        assert_eq!(
            c.url(&call),
            "http://127.0.0.1:8500/v1/kv/a%20b/%C3%BC%3F%23%26"
        );
        let call = Call::put(format!("event/fire/{}", segment("consul-rehydrate")))
            .param_opt("node", Some("srv-1"))
            .param_opt("tag", None::<String>);
        assert_eq!(
            c.url(&call),
            "http://127.0.0.1:8500/v1/event/fire/consul-rehydrate?node=srv-1"
        );
        assert_eq!(segment("../x"), "..%2Fx");
    }

    #[actix_rt::test]
    async fn datacenter_and_blocking_options_go_in_the_query() {
        let c = client(Some("eu-1"));
        let call = Call::get("catalog/services")
            .options(&QueryOptions::blocking(17, Duration::from_secs(2)));
        assert_eq!(
            c.url(&call),
            "http://127.0.0.1:8500/v1/catalog/services?index=17&wait=2s&dc=eu-1"
        );
        let opts = QueryOptions {
            datacenter: Some("us-2".into()),
            consistency: Consistency::Stale,
            ..QueryOptions::default()
        };
        let call = Call::get("catalog/nodes").options(&opts);
        assert_eq!(
            c.url(&call),
            "http://127.0.0.1:8500/v1/catalog/nodes?stale&dc=us-2"
        );
    }

    #[actix_rt::test]
    async fn debug_of_a_client_hides_the_token() {
        let c = client(None);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("secret-token"), "{dbg}");
        assert!(dbg.contains("***"));
    }

    #[actix_rt::test]
    async fn more_parked_blocking_queries_than_awcs_default_limit_leave_room_for_calls() {
        // awc caps a client at 100 connections unless told otherwise; a blocking query holds
        // one for its whole wait, so 150 parked watches must not stall a plain call.
        let sim = rehydrator_sim::start(
            "127.0.0.1:0".parse().unwrap(),
            rehydrator_sim::SimConfig::default(),
        )
        .unwrap();
        let c = Client::new(ConsulConfig::with_address(&sim.url()).unwrap()).unwrap();
        let index = c
            .kv_get("parked/k", &QueryOptions::default())
            .await
            .unwrap()
            .meta
            .index;
        let parked: Vec<_> = (0..150)
            .map(|i| {
                let c = c.clone();
                actix_rt::spawn(async move {
                    let opts = QueryOptions::blocking(index, Duration::from_secs(60));
                    c.kv_get(&format!("parked/k{i}"), &opts).await
                })
            })
            .collect();
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        let leader = tokio::time::timeout(Duration::from_secs(5), c.status_leader())
            .await
            .expect("a plain call queued behind the parked blocking queries");
        assert!(leader.unwrap().is_some());
        for p in &parked {
            assert!(
                !p.is_finished(),
                "a blocking query answered without a change"
            );
        }
        for p in parked {
            p.abort();
        }
        sim.stop().await;
    }

    #[actix_rt::test]
    async fn unreachable_agent_is_a_retryable_error_without_the_token() {
        // Port 9 (discard) on loopback: nothing listens there in the test environment.
        let mut config = ConsulConfig::with_address("127.0.0.1:9").unwrap();
        config.token = Some(Token::new("secret-token"));
        let c = Client::new(config).unwrap();
        let err = c.status_leader().await.unwrap_err();
        assert_eq!(err.kind(), "unreachable", "{err}");
        assert!(err.is_retryable());
        assert!(!err.to_string().contains("secret-token"));
        assert!(!format!("{err:?}").contains("secret-token"));
    }
}
