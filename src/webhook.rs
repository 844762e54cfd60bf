//! The actors' `WebhookPort` on awc: the `http` executor's POST of a trigger as JSON, and the
//! rollout's notifications (the same, with a bearer token).

use std::time::Duration;

use rehydrator_actors::ports::{ErrorKind, PortError, PortFuture, WebhookPort};

/// POSTs with a plain awc client (system roots for https) that follows no redirect: the
/// credentials would go wherever it pointed.
#[derive(Clone)]
pub struct AwcWebhook {
    client: awc::Client,
}

impl Default for AwcWebhook {
    fn default() -> Self {
        Self {
            client: awc::Client::builder().disable_redirects().finish(),
        }
    }
}

/// `url` without its `user:pass@`, and those credentials (percent-decoded), which go as Basic
/// auth: awc would send neither in a header nor keep them out of its errors.
pub(crate) fn split_credentials(url: &str) -> (String, Option<(String, Option<String>)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return (url.to_owned(), None);
    };
    let decode = |s: &str| percent_decode(s);
    let creds = match userinfo.split_once(':') {
        Some((u, p)) => (decode(u), Some(decode(p))),
        None => (decode(userinfo), None),
    };
    (format!("{scheme}://{host}{tail}"), Some(creds))
}

/// `%XX` escapes decoded (as a URL's userinfo carries them); others kept.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
        // Errors and logs name the URL with its secrets masked; the credentials in it go as
        // Basic auth, the bearer token as its header, and nowhere else.
        let shown = rehydrator_config::redact_url(url);
        let (url, creds) = split_credentials(url);
        let client = self.client.clone();
        let auth = token.map(|t| format!("Bearer {t}"));
        Box::pin(async move {
            let mut req = client.post(&url).timeout(timeout);
            if let Some((user, pass)) = creds {
                req = req.basic_auth(user, pass.as_deref().unwrap_or_default());
            }
            if let Some(auth) = auth {
                req = req.insert_header((awc::http::header::AUTHORIZATION, auth));
            }
            let resp = req.send_json(&body).await.map_err(|e| {
                let kind = match e {
                    awc::error::SendRequestError::Timeout => ErrorKind::Timeout,
                    _ => ErrorKind::Unreachable,
                };
                let why = e.to_string().replace(&url, &shown);
                PortError::new(kind, format!("POST {shown}: {why}"))
            })?;
            Ok(resp.status().as_u16())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_for_basic_auth() {
        assert_eq!(
            split_credentials("https://user:p%40ss@h:8443/hook?x=1"),
            (
                "https://h:8443/hook?x=1".to_owned(),
                Some(("user".to_owned(), Some("p@ss".to_owned())))
            )
        );
        assert_eq!(
            split_credentials("http://h/hook?email=a@b"),
            ("http://h/hook?email=a@b".to_owned(), None)
        );
        assert_eq!(
            split_credentials("http://only-user@h/"),
            ("http://h/".to_owned(), Some(("only-user".to_owned(), None)))
        );
    }
}
