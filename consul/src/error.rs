//! The one error type of the Consul client, carried in actor messages (hence `Clone`) and
//! counted in metrics by `kind()`. The Watcher and LockManager decide between retry and give-up
//! with `is_retryable()`.
//!
//! No variant ever holds the ACL token: requests are described by method and path only, and the
//! token travels in a header that is never formatted.

use std::time::Duration;

/// Longest Consul error body kept in an error; a proxy in front of Consul can answer with a page
/// of HTML, and errors end up in logs and status pages.
const MAX_MESSAGE: usize = 512;

/// What went wrong talking to Consul.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsulError {
    /// No connection could be made (refused, DNS, TLS handshake, connect timeout).
    #[error("Consul at {address} is unreachable ({request}): {reason}")]
    Unreachable {
        address: String,
        request: String,
        reason: String,
    },
    /// Connected, but no answer within the request's timeout (a stopped agent accepts
    /// connections and never answers).
    #[error(
        "Consul at {address} is not answering: no complete answer to {request} within {after:?}"
    )]
    Timeout {
        address: String,
        request: String,
        after: Duration,
    },
    /// The connection broke while sending or reading.
    #[error("connection to Consul failed during {request}: {reason}")]
    Transport { request: String, reason: String },
    /// Consul answered with a status other than the one the endpoint succeeds with.
    #[error("Consul answered {status} to {request}: {message}")]
    Status {
        status: u16,
        /// Consul's body, which is its error message (e.g. "No cluster leader").
        message: String,
        request: String,
    },
    /// The answer was not what the endpoint documents.
    #[error("could not decode Consul's answer to {request}: {reason}")]
    Decode { request: String, reason: String },
    #[error("Consul's answer to {request} is larger than {limit} bytes, the most read for it")]
    TooLarge { request: String, limit: usize },
    /// The client cannot be built or the request cannot be formed.
    #[error("Consul client configuration: {0}")]
    Config(String),
}

impl ConsulError {
    /// A stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ConsulError::Unreachable { .. } => "unreachable",
            ConsulError::Timeout { .. } => "timeout",
            ConsulError::Transport { .. } => "transport",
            ConsulError::Status { status, .. } if *status >= 500 => "status_5xx",
            ConsulError::Status { status: 403, .. } => "acl_denied",
            ConsulError::Status { .. } => "status_4xx",
            ConsulError::Decode { .. } => "decode",
            ConsulError::TooLarge { .. } => "too_large",
            ConsulError::Config(_) => "config",
        }
    }

    /// Whether trying the same request again later may succeed. Server-side failures (5xx,
    /// including "No cluster leader" during an election) and 429 rate limiting are transient;
    /// other 4xx answers and undecodable bodies will not change by retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConsulError::Unreachable { .. }
            | ConsulError::Timeout { .. }
            | ConsulError::Transport { .. } => true,
            ConsulError::Status { status, .. } => *status >= 500 || *status == 429,
            ConsulError::Decode { .. } | ConsulError::TooLarge { .. } | ConsulError::Config(_) => {
                false
            }
        }
    }

    /// The HTTP status Consul answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ConsulError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Consul answered 500 "No cluster leader": an election is under way or quorum is lost.
    pub fn is_no_leader(&self) -> bool {
        matches!(self, ConsulError::Status { status: 500, message, .. }
            if message.contains("No cluster leader"))
    }

    pub(crate) fn status_from(status: u16, body: &[u8], request: &str) -> Self {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let mut message = match text.char_indices().nth(MAX_MESSAGE) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text.to_owned(),
        };
        // Consul answers 403 for a token it does not know ("ACL not found") and for one without
        // the rights ("Permission denied"): say which setting to look at, in every log and page.
        if status == 403 {
            message = format!("ACL token refused: {message}");
        }
        ConsulError::Status {
            status,
            message,
            request: request.to_owned(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn status(code: u16, msg: &str) -> ConsulError {
        ConsulError::status_from(code, msg.as_bytes(), "GET /v1/kv/a")
    }

    #[test]
    fn kinds_are_stable_labels() {
        assert_eq!(status(500, "No cluster leader").kind(), "status_5xx");
        assert_eq!(status(403, "Permission denied").kind(), "acl_denied");
        assert_eq!(status(404, "").kind(), "status_4xx");
        assert_eq!(
            status(403, "ACL not found").to_string(),
            "Consul answered 403 to GET /v1/kv/a: ACL token refused: ACL not found"
        );
        assert_eq!(ConsulError::Config("x".into()).kind(), "config");
        let t = ConsulError::Timeout {
            address: "http://127.0.0.1:8500".into(),
            request: "GET /v1/kv/a".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(t.kind(), "timeout");
    }

    #[test]
    fn retryable_only_when_waiting_can_help() {
        assert!(status(500, "No cluster leader").is_retryable());
        assert!(status(503, "").is_retryable());
        assert!(status(429, "rate limit exceeded").is_retryable());
        assert!(!status(400, "Invalid wait time").is_retryable());
        assert!(!status(403, "Permission denied").is_retryable());
        assert!(!ConsulError::Decode {
            request: "x".into(),
            reason: "y".into()
        }
        .is_retryable());
        assert!(ConsulError::Unreachable {
            address: "http://127.0.0.1:1".into(),
            request: "x".into(),
            reason: "refused".into()
        }
        .is_retryable());
    }

    #[test]
    fn no_leader_is_recognised_and_long_bodies_are_cut() {
        assert!(status(500, "No cluster leader\n").is_no_leader());
        assert!(!status(500, "rpc error").is_no_leader());
        let long = "x".repeat(5000);
        let ConsulError::Status { message, .. } = status(502, &long) else {
            panic!("not a status error");
        };
        assert!(message.chars().count() <= MAX_MESSAGE + 1);
    }

    #[test]
    fn message_names_request_and_consul_body() {
        let e = status(500, "No cluster leader");
        assert_eq!(
            e.to_string(),
            "Consul answered 500 to GET /v1/kv/a: No cluster leader"
        );
    }
}
