//! The cloud backends: where the Consul servers' machines come from. Each implements the actors'
//! `CloudPort` (newest image, machines, launch with an idempotency token, retire), so the
//! rollout's SpinUp/SpinDown never see an SDK or HTTP type. `sim` drives the simulator's cloud
//! through its `/sim` control API; `ec2` launches EC2 instances from a launch template through
//! the AWS SDK; `ecs` runs the Consul server as an ECS task on such instances, reusing `ec2` for
//! the instances.
//!
//! `CloudError` is the backends' error at this edge; the port sees it as a `PortError` whose
//! kind tells the executors whether a retry can help.

pub mod asg;
pub mod aws;
pub mod consul_version;
pub mod ec2;
pub mod ecs;
pub mod process;
pub mod s3;
pub mod sim;

use std::time::Duration;

use std::time::SystemTime;

use rehydrator_actors::ports::{ErrorKind, Image, PortError};

pub use ec2::Ec2Cloud;
pub use ecs::EcsCloud;
pub use process::ProcessCloud;
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
    /// The SDK found no credentials in any place it looks.
    #[error(
        "no AWS credentials for {request} ({reason}). They are looked for, in order, in the \
         environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), the shared files \
         (~/.aws/credentials and ~/.aws/config, AWS_PROFILE), web identity \
         (AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN), the ECS task role \
         (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI) and the EC2 instance profile (IMDS)"
    )]
    Credentials { request: String, reason: String },
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
    /// A local file or process operation failed (the process cloud); a retry may succeed.
    #[error("{request} failed: {reason}")]
    Local { request: String, reason: String },
    /// The request cannot succeed as made (an unknown image, a label that is not one).
    #[error("{request} refused: {reason}")]
    Refused { request: String, reason: String },
    /// A launched machine did not come up as a server: it never joined the ECS cluster in
    /// time, or ECS would not place the Consul task on it. A later retry of the launch may.
    #[error("machine {machine} is not ready: {reason}")]
    NotReady { machine: String, reason: String },
}

impl CloudError {
    /// A stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CloudError::Unreachable { .. } => "unreachable",
            CloudError::Credentials { .. } => "credentials",
            CloudError::Timeout { .. } => "timeout",
            CloudError::Throttled { .. } => "throttled",
            CloudError::Status { status, .. } if *status >= 500 => "status_5xx",
            CloudError::Status { .. } => "status_4xx",
            CloudError::Decode { .. } => "decode",
            CloudError::Config { .. } => "config",
            CloudError::Local { .. } => "local",
            CloudError::Refused { .. } => "refused",
            CloudError::NotReady { .. } => "not_ready",
        }
    }
}

impl From<CloudError> for PortError {
    fn from(e: CloudError) -> Self {
        let kind = match &e {
            // Credentials can appear (a role attached, IMDS back): tried again, like the network.
            CloudError::Unreachable { .. } | CloudError::Credentials { .. } => {
                ErrorKind::Unreachable
            }
            CloudError::Timeout { .. } | CloudError::NotReady { .. } => ErrorKind::Timeout,
            CloudError::Throttled { .. } | CloudError::Local { .. } => ErrorKind::Server,
            // Throttling (EC2's RequestLimitExceeded is a 503, a proxy's may be 429) passes.
            CloudError::Status { status, .. } if *status >= 500 || *status == 429 => {
                ErrorKind::Server
            }
            CloudError::Status { .. } | CloudError::Config { .. } | CloudError::Refused { .. } => {
                ErrorKind::Rejected
            }
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
        let not_ready = CloudError::NotReady {
            machine: "i-0abc".into(),
            reason: "never registered".into(),
        };
        assert_eq!(not_ready.kind(), "not_ready");
        assert!(PortError::from(not_ready).is_retryable());
        assert_eq!(status(400).kind(), "status_4xx");
        let e = PortError::from(status(409));
        assert!(!e.is_retryable());
        assert!(e.message.contains("409") && e.message.contains("POST /sim/servers"));
    }
}

/// The newest image, the port's rule for every backend: by creation date, ties by name, then ID. An image without a date EC2 can
/// give (none seen) sorts oldest rather than failing the whole rollout.
pub(crate) fn newest(images: Vec<Image>, request: &str) -> Result<Option<Image>, CloudError> {
    let mut best: Option<((SystemTime, String, String), Image)> = None;
    for image in images {
        if image.id.is_empty() {
            return Err(CloudError::Decode {
                request: request.to_owned(),
                reason: format!("an image without an ID (name {:?})", image.name),
            });
        }
        let created = if image.created.is_empty() {
            SystemTime::UNIX_EPOCH
        } else {
            humantime::parse_rfc3339_weak(&image.created).map_err(|e| CloudError::Decode {
                request: request.to_owned(),
                reason: format!("image {} created {:?}: {e}", image.id, image.created),
            })?
        };
        let key = (created, image.name.clone(), image.id.clone());
        let newer = match &best {
            Some((k, _)) => key > *k,
            None => true,
        };
        if newer {
            best = Some((key, image));
        }
    }
    Ok(best.map(|(_, i)| i))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod newest_tests {
    use super::*;

    fn image(id: &str, name: &str, created: &str) -> Image {
        Image {
            id: id.into(),
            name: name.into(),
            created: created.into(),
        }
    }

    #[test]
    fn the_newest_image_by_creation_then_name() {
        let got = newest(
            vec![
                image("ami-a", "consul-3", "2024-01-01T00:00:00.000Z"),
                image("ami-c", "consul-2", "2024-05-01T12:00:00.900Z"),
                // Later by a fraction of a second, though it sorts first as a string.
                image("ami-b", "consul-1", "2024-05-01T12:00:01Z"),
            ],
            "list",
        )
        .unwrap()
        .unwrap();
        assert_eq!(got.id, "ami-b");
        // moto's and EC2's dates are to the second: the same second orders by name.
        let tie = newest(
            vec![
                image("ami-2", "consul-2", "2024-05-01T12:00:00.000Z"),
                image("ami-9", "consul-1", "2024-05-01T12:00:00.000Z"),
            ],
            "list",
        )
        .unwrap()
        .unwrap();
        assert_eq!(tie.id, "ami-2");
        assert_eq!(newest(Vec::new(), "list").unwrap(), None);
        assert!(matches!(
            newest(vec![image("ami-1", "x", "yesterday")], "list"),
            Err(CloudError::Decode { .. })
        ));
        assert!(matches!(
            newest(vec![image("", "x", "2024-01-01T00:00:00Z")], "list"),
            Err(CloudError::Decode { .. })
        ));
    }
}
