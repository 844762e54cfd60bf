//! What the contract checks (`sim_api_shapes`, `sim_bad_input`) send and read: one HTTP
//! exchange with a target, kept whole (status, headers, body) for the checks to judge. Each
//! check file adds the judgements it needs to `Reply` and the calls it needs to `Api`.

use awc::http::header::HeaderMap;
use awc::http::Method;

use super::target::Target;

/// One HTTP exchange's outcome, named by its method and path for every failure message.
pub struct Reply {
    pub what: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The target's HTTP API.
pub struct Api {
    client: awc::Client,
    base: String,
}

impl Api {
    pub fn new(target: &Target) -> Self {
        Self {
            client: awc::Client::default(),
            base: target.url.clone(),
        }
    }

    /// `method path`, with `body` if there is one (none is not the same as an empty one).
    pub async fn call(&self, method: Method, path: &str, body: Option<&[u8]>) -> Reply {
        let what = format!("{method} {path}");
        let req = self.client.request(method, format!("{}{path}", self.base));
        let sent = match body {
            Some(b) => req.send_body(b.to_vec()).await,
            None => req.send().await,
        };
        let mut resp = sent.unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
        let body = resp
            .body()
            .limit(8 << 20)
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body failed: {e}"));
        Reply {
            what,
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: body.to_vec(),
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    pub async fn put(&self, path: &str, body: &[u8]) -> Reply {
        self.call(Method::PUT, path, Some(body)).await
    }
}
