//! Who may read the cluster's status: with a token configured (`REHYDRATOR_STATUS_TOKEN` or
//! `status.token_file`), `/v1/status` and the dashboard answer only requests that carry it,
//! as `Authorization: Bearer <token>`, or as the password of Basic auth so a browser's own
//! prompt opens the dashboard (and the page's polls then carry the same credentials). The
//! probes and `/metrics` stay open: orchestrators and scrapers call them, and they show no
//! session id, action error or server name.

use std::path::{Path, PathBuf};

use actix_web::http::header::{self, CacheControl, CacheDirective};
use actix_web::{HttpRequest, HttpResponse};
use base64::Engine as _;
use rehydrator_config::settings::{Secret, StatusSettings};
use serde_json::json;

/// A token file longer than this is not a token: refusing it bounds what `run` reads.
const MAX_TOKEN_FILE: u64 = 4096;

/// Why the status token could not be had.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("status.token_file {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("status.token_file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The token `/v1/status` and the dashboard ask for, if any.
#[derive(Clone, Default)]
pub struct Access {
    token: Option<Secret>,
}

impl Access {
    /// Open to everyone: the endpoint as it is without a token.
    pub fn open() -> Self {
        Self::default()
    }

    /// From `[status]`: the environment's token, or the file's, read now so a missing or
    /// empty file stops `run` before it takes a session.
    pub fn from_settings(status: &StatusSettings) -> Result<Self, AccessError> {
        let token = match (&status.token, &status.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => Some(read_token_file(path)?),
            (None, None) => None,
        };
        Ok(Self { token })
    }

    pub fn is_protected(&self) -> bool {
        self.token.is_some()
    }

    /// `None` when `req` may see what is behind; else the 401 to answer with.
    pub fn refusal(&self, req: &HttpRequest) -> Option<HttpResponse> {
        let token = self.token.as_ref()?;
        let offered = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(offered_token);
        match offered {
            Some(offered) if same(offered.as_bytes(), token.expose().as_bytes()) => None,
            _ => Some(
                HttpResponse::Unauthorized()
                    .insert_header(CacheControl(vec![CacheDirective::NoStore]))
                    .append_header((header::WWW_AUTHENTICATE, "Bearer realm=\"rehydrator\""))
                    .append_header((
                        header::WWW_AUTHENTICATE,
                        "Basic realm=\"rehydrator\", charset=\"UTF-8\"",
                    ))
                    .json(json!({
                        "error": "the status token is required (Authorization: Bearer <token>)",
                        "kind": "unauthorized",
                    })),
            ),
        }
    }
}

fn read_token_file(path: &Path) -> Result<Secret, AccessError> {
    let invalid = |reason: &str| AccessError::Invalid {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let read = |source| AccessError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_TOKEN_FILE {
        return Err(invalid("is larger than 4 KiB, which no token is"));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    match text.trim() {
        "" => Err(invalid("is empty")),
        t if t.chars().any(char::is_whitespace) => Err(invalid(
            "holds more than one word; a token is one line without spaces",
        )),
        t => Ok(Secret::new(t)),
    }
}

/// The token an `Authorization` value carries: a Bearer token, or Basic auth's password
/// (any user name).
fn offered_token(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.to_owned())
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        text.split_once(':')
            .map(|(_, password)| password.to_owned())
    } else {
        None
    }
}

/// Equal, in a time that does not depend on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_carry_the_token() {
        assert_eq!(offered_token("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(offered_token("bearer  abc ").as_deref(), Some("abc"));
        // "ops:abc" and ":abc": any user name, the token as the password.
        assert_eq!(offered_token("Basic b3BzOmFiYw==").as_deref(), Some("abc"));
        assert_eq!(offered_token("Basic OmFiYw==").as_deref(), Some("abc"));
        assert_eq!(offered_token("Basic !!!"), None);
        assert_eq!(offered_token("Token abc"), None);
        assert_eq!(offered_token("abc"), None);
    }

    #[test]
    fn comparison_needs_every_byte() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn token_files_are_checked_and_named() {
        let dir = std::env::temp_dir().join(format!("rehydrator-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, text: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let good = file("good", b"  s3cr3t\n");
        assert_eq!(read_token_file(&good).unwrap().expose(), "s3cr3t");
        for (name, text, says) in [
            ("empty", &b" \n"[..], "is empty"),
            ("two", &b"a b"[..], "more than one word"),
            ("big", &[b'x'; 5000][..], "larger than 4 KiB"),
        ] {
            let e = read_token_file(&file(name, text)).unwrap_err().to_string();
            assert!(
                e.starts_with("status.token_file ") && e.contains(says),
                "{e}"
            );
        }
        let e = read_token_file(&dir.join("absent"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent: cannot read it"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
