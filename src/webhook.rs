//! The actors' `WebhookPort` on awc: the `http` executor's POST of a trigger as JSON, and the
//! rollout's notifications (the same, with a bearer token).

use std::time::Duration;

use rehydrator_actors::ports::{ErrorKind, PortError, PortFuture, WebhookPort};

/// POSTs with a plain awc client (system roots for https).
#[derive(Clone, Default)]
pub struct AwcWebhook {
    client: awc::Client,
}

impl WebhookPort for AwcWebhook {
    fn post_json(&self, url: &str, body: serde_json::Value, timeout: Duration) -> PortFuture<u16> {
        self.post_json_bearer(url, body, None, timeout)
    }

    fn post_json_bearer(
        &self,
        url: &str,
        body: serde_json::Value,
        token: Option<&str>,
        timeout: Duration,
    ) -> PortFuture<u16> {
        let (client, url) = (self.client.clone(), url.to_owned());
        // The header value is built here and goes nowhere else: errors name only the URL.
        let auth = token.map(|t| format!("Bearer {t}"));
        Box::pin(async move {
            let mut req = client.post(&url).timeout(timeout);
            if let Some(auth) = auth {
                req = req.insert_header((awc::http::header::AUTHORIZATION, auth));
            }
            let resp = req.send_json(&body).await.map_err(|e| {
                let kind = match e {
                    awc::error::SendRequestError::Timeout => ErrorKind::Timeout,
                    _ => ErrorKind::Unreachable,
                };
                PortError::new(kind, format!("POST {url}: {e}"))
            })?;
            Ok(resp.status().as_u16())
        })
    }
}
