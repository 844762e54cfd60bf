//! What every AWS backend here shares: the SDK's configuration (region, endpoint, HTTPS client,
//! timeouts, credentials), how an SDK failure becomes a `CloudError`, DryRun's answers, and the
//! tags rehydrator puts on the servers. EC2's, ECS's and the Auto Scaling group's code build on
//! it, so none of them needs another's module for plumbing.

use std::time::Duration;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::config::{Credentials, Region, SharedHttpClient};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use rehydrator_config::AwsSettings;

use super::CloudError;

/// The tag naming the cluster an instance serves.
pub const CLUSTER_TAG: &str = "rehydrator:cluster";
/// The tag holding the launch's idempotency token.
pub const TOKEN_TAG: &str = "rehydrator:token";

/// The longest an AWS call may take, retries by the SDK included.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest one attempt of a call may take. A request the service, or anything on the way,
/// holds unanswered is given up after it and retried by the SDK within `OPERATION_TIMEOUT`,
/// instead of using all of it up. Every call made here is safe to repeat: launches carry
/// tokens, the rest are idempotent, but a template version made twice, which leaves a spare.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Error codes that mean "slow down": retryable whatever the HTTP status says.
const THROTTLING: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "EC2ThrottledException",
    "BandwidthLimitExceeded",
    "PriorRequestNotComplete",
];

/// The SDK's HTTPS client: hyper with rustls on ring and the system's roots.
pub fn https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The SDK configuration every AWS client here shares (EC2's, ECS's): the region from
/// `region`, else the environment; `endpoint_url` for every service; the HTTPS client and
/// timeouts above; `credentials`, else the SDK's default chain.
pub(crate) async fn sdk_config(
    aws: &AwsSettings,
    credentials: Option<Credentials>,
) -> Result<aws_config::SdkConfig, CloudError> {
    sdk_config_at(
        aws.region.as_deref(),
        aws.endpoint_url.as_deref(),
        credentials,
    )
    .await
}

/// As `sdk_config`, from a region and endpoint that may be unset (the environment then
/// decides: AWS_REGION, AWS_ENDPOINT_URL and its per-service forms).
pub(crate) async fn sdk_config_at(
    region: Option<&str>,
    endpoint_url: Option<&str>,
    credentials: Option<Credentials>,
) -> Result<aws_config::SdkConfig, CloudError> {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .build();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https_client())
        .timeout_config(timeouts);
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_owned()));
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some(credentials) = credentials {
        loader = loader.credentials_provider(credentials);
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err(CloudError::Config {
            reason: "no AWS region: set cloud.region or AWS_REGION".into(),
        });
    }
    Ok(sdk)
}

/// The region and endpoint URL an `ec2` or `ecs` cloud sets, which the services beside it (S3
/// snapshots, the CloudWatch gate) share; unset for any other cloud (the SDK's environment
/// then decides).
pub(crate) fn cloud_region_and_endpoint(
    settings: &rehydrator_config::Settings,
) -> (Option<&str>, Option<&str>) {
    match &settings.cloud {
        rehydrator_config::CloudSettings::Ec2(aws) | rehydrator_config::CloudSettings::Ecs(aws) => {
            (aws.region.as_deref(), aws.endpoint_url.as_deref())
        }
        _ => (None, None),
    }
}

/// Where `service`'s calls go, for error messages: `endpoint_url`, else `<service>.<region>`.
pub(crate) fn endpoint(aws: &AwsSettings, sdk: &aws_config::SdkConfig, service: &str) -> String {
    endpoint_at(aws.endpoint_url.as_deref(), sdk, service)
}

/// As `endpoint`, from an endpoint URL that may be unset.
pub(crate) fn endpoint_at(url: Option<&str>, sdk: &aws_config::SdkConfig, service: &str) -> String {
    url.map(str::to_owned).unwrap_or_else(|| {
        let region = sdk.region().map(|r| r.as_ref()).unwrap_or("no-region");
        format!("{service}.{region}")
    })
}

/// An SDK failure as a `CloudError`: throttling and 5xx pass as retryable, other service
/// errors are refusals. The SDK's error text names the operation and the service's message,
/// never the credentials. Generic over the operation's error, so every AWS SDK's calls (EC2's,
/// ECS's) map the same way.
pub(crate) fn sdk_error<E>(
    endpoint: &str,
    request: &str,
    e: SdkError<E, HttpResponse>,
) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    sdk_error_within(endpoint, request, e, OPERATION_TIMEOUT)
}

/// As `sdk_error`, for a client whose calls may take `limit` (S3's own timeouts).
pub(crate) fn sdk_error_within<E>(
    endpoint: &str,
    request: &str,
    e: SdkError<E, HttpResponse>,
    limit: Duration,
) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let request = request.to_owned();
    match &e {
        SdkError::ConstructionFailure(_) => CloudError::Config {
            reason: format!("{request}: {}", DisplayErrorContext(&e)),
        },
        SdkError::TimeoutError(_) => CloudError::Timeout {
            request,
            after: limit,
        },
        SdkError::DispatchFailure(d) if d.is_timeout() => CloudError::Timeout {
            request,
            after: CONNECT_TIMEOUT,
        },
        SdkError::DispatchFailure(_) if no_credentials(&e).is_some() => CloudError::Credentials {
            request,
            reason: no_credentials(&e).unwrap_or_default(),
        },
        SdkError::DispatchFailure(_) => CloudError::Unreachable {
            base: endpoint.to_owned(),
            request,
            reason: DisplayErrorContext(&e).to_string(),
        },
        SdkError::ResponseError(_) => CloudError::Decode {
            request,
            reason: DisplayErrorContext(&e).to_string(),
        },
        SdkError::ServiceError(s) => {
            let code = e.code().unwrap_or("Unknown").to_owned();
            let message = format!("{code}: {}", e.message().unwrap_or("no message"));
            if THROTTLING.contains(&code.as_str()) {
                CloudError::Throttled { request, message }
            } else {
                CloudError::Status {
                    status: s.raw().status().as_u16(),
                    request,
                    message,
                }
            }
        }
        // SdkError is non-exhaustive: whatever comes later is retried like a dispatch failure.
        _ => CloudError::Unreachable {
            base: endpoint.to_owned(),
            request,
            reason: DisplayErrorContext(&e).to_string(),
        },
    }
}

/// Why the SDK found no credentials, when that is what failed the call: the credentials
/// error's own words and its causes, without the SDK's debug dump of the request.
fn no_credentials(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut at: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = at {
        if err
            .downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
            .is_some()
        {
            let mut words = vec![err.to_string()];
            let mut cause = err.source();
            while let Some(c) = cause {
                words.push(c.to_string());
                cause = c.source();
            }
            words.dedup();
            let reason = words.join(": ");
            return Some(reason.chars().take(MAX_CREDENTIALS_REASON).collect());
        }
        at = err.source();
    }
    None
}

/// The most of a credentials error's words kept (IMDS answers end up in them).
const MAX_CREDENTIALS_REASON: usize = 400;

/// What a DryRun call said about a permission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DryRun {
    Allowed,
    Denied(String),
    /// Another answer (an error that says nothing of the permission).
    Unknown(String),
}

pub(crate) fn dry_run_answer<E>(result: Result<(), SdkError<E, HttpResponse>>) -> DryRun
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result {
        // A call that did not fail did not honour DryRun: it says nothing either way.
        Ok(()) => DryRun::Unknown("the call succeeded without DryRun's answer".into()),
        Err(e) => match e.code() {
            Some("DryRunOperation") => DryRun::Allowed,
            Some("UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException") => {
                DryRun::Denied(e.message().unwrap_or("not authorized").to_owned())
            }
            Some(code) => DryRun::Unknown(format!("{code}: {}", e.message().unwrap_or(""))),
            None => DryRun::Unknown(DisplayErrorContext(&e).to_string()),
        },
    }
}
