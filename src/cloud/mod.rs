//! The cloud backends: where the Consul servers' machines come from. Each implements the actors'
//! `CloudPort` (newest image, machines, launch with an idempotency token, retire), so the
//! rollout's SpinUp/SpinDown never see an SDK or HTTP type. `sim` drives the simulator's cloud
//! through its `/sim` control API; `ec2` launches EC2 instances from a launch template through
//! the AWS SDK; ECS comes later.
//!
//! `CloudError` is the backends' error at this edge; the port sees it as a `PortError` whose
//! kind tells the executors whether a retry can help.

pub mod ec2;
pub mod sim;

use std::time::Duration;

use rehydrator_actors::ports::{ErrorKind, PortError};

pub use ec2::Ec2Cloud;
pub use sim::SimCloud;

/// What went wrong talking to a cloud.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// No connection could be made, or it broke mid-answer.
    #[error("the cloud at {base} is unreachable ({request}): {reason}")]
    Unreachable {
        base: String,
        request: String,
        reason: String,
    },
    /// No answer in time.
    #[error("the cloud did not answer {request} within {after:?}")]
    Timeout { request: String, after: Duration },
    /// The cloud answered with an error status.
    #[error("the cloud answered {status} to {request}: {message}")]
    Status {
        status: u16,
        request: String,
        message: String,
    },
    /// The cloud asked us to slow down (EC2's RequestLimitExceeded and kin).
    #[error("the cloud throttled {request}: {message}")]
    Throttled { request: String, message: String },
    /// The answer was not what the API documents.
    #[error("could not decode the cloud's answer to {request}: {reason}")]
    Decode { request: String, reason: String },
    /// The backend cannot be built as configured (a bad URL).
    #[error("cloud configuration: {reason}")]
    Config { reason: String },
}

impl CloudError {
    /// A stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CloudError::Unreachable { .. } => "unreachable",
            CloudError::Timeout { .. } => "timeout",
            CloudError::Throttled { .. } => "throttled",
            CloudError::Status { status, .. } if *status >= 500 => "status_5xx",
            CloudError::Status { .. } => "status_4xx",
            CloudError::Decode { .. } => "decode",
            CloudError::Config { .. } => "config",
        }
    }
}

impl From<CloudError> for PortError {
    fn from(e: CloudError) -> Self {
        let kind = match &e {
            CloudError::Unreachable { .. } => ErrorKind::Unreachable,
            CloudError::Timeout { .. } => ErrorKind::Timeout,
            CloudError::Throttled { .. } => ErrorKind::Server,
            // Throttling (EC2's RequestLimitExceeded is a 503, a proxy's may be 429) passes.
            CloudError::Status { status, .. } if *status >= 500 || *status == 429 => {
                ErrorKind::Server
            }
            CloudError::Status { .. } | CloudError::Config { .. } => ErrorKind::Rejected,
            CloudError::Decode { .. } => ErrorKind::Decode,
        };
        PortError::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> CloudError {
        CloudError::Status {
            status,
            request: "POST /sim/servers".into(),
            message: "no".into(),
        }
    }

    #[test]
    fn errors_map_to_port_kinds() {
        let kind = |e: CloudError| PortError::from(e).kind;
        assert_eq!(kind(status(400)), ErrorKind::Rejected);
        assert_eq!(kind(status(404)), ErrorKind::Rejected);
        assert_eq!(kind(status(409)), ErrorKind::Rejected);
        assert_eq!(kind(status(429)), ErrorKind::Server);
        assert_eq!(kind(status(503)), ErrorKind::Server);
        assert_eq!(
            kind(CloudError::Decode {
                request: "GET /sim/images".into(),
                reason: "eof".into()
            }),
            ErrorKind::Decode
        );
        let throttled = CloudError::Throttled {
            request: "RunInstances".into(),
            message: "RequestLimitExceeded: slow down".into(),
        };
        assert_eq!(throttled.kind(), "throttled");
        assert_eq!(kind(throttled), ErrorKind::Server);
        assert_eq!(status(500).kind(), "status_5xx");
        assert_eq!(status(400).kind(), "status_4xx");
        let e = PortError::from(status(409));
        assert!(!e.is_retryable());
        assert!(e.message.contains("409") && e.message.contains("POST /sim/servers"));
    }
}
