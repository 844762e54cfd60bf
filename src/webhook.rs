//! The actors' `WebhookPort` on awc: the `http` executor's POST of a trigger as JSON.

use std::time::Duration;

use rehydrator_actors::ports::{ErrorKind, PortError, PortFuture, WebhookPort};

/// POSTs with a plain awc client (system roots for https).
#[derive(Clone, Default)]
pub struct AwcWebhook {
    client: awc::Client,
}

impl WebhookPort for AwcWebhook {
    fn post_json(&self, url: &str, body: serde_json::Value, timeout: Duration) -> PortFuture<u16> {
        let (client, url) = (self.client.clone(), url.to_owned());
        Box::pin(async move {
            let resp = client
                .post(&url)
                .timeout(timeout)
                .send_json(&body)
                .await
                .map_err(|e| {
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
