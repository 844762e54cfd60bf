//! Snapshots in S3 (`rollout.snapshot_dir = "s3://bucket/prefix"`): the actors'
//! `ObjectStore` on the AWS SDK. For an `ec2` or `ecs` cloud it shares the cloud's region,
//! endpoint and credentials; for any other cloud the SDK's environment decides (AWS_REGION,
//! AWS_ENDPOINT_URL_S3, the default credentials chain). With an endpoint other than AWS's
//! (moto, MinIO, a VPC endpoint by IP) it uses path-style addressing, which every S3-speaking
//! server takes.

use std::path::Path;
use std::rc::Rc;

use aws_sdk_s3::primitives::ByteStream;
use rehydrator_actors::ports::{ErrorKind, ObjectStore, PortError, PortFuture};
use rehydrator_config::{Settings, SnapshotDest};

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;

use super::aws::{endpoint_at, sdk_config_at, sdk_error_within};
use super::CloudError;

/// Listing pages read when pruning (1000 keys each): a prefix with more is pruned from the
/// oldest 10 000 it lists, at the next snapshot the rest.
const MAX_LIST_PAGES: usize = 10;

pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Where calls go, for errors.
    endpoint: String,
    /// The longest a call may take, retries included.
    limit: Duration,
}

/// S3's own timeouts, sized by the largest archive (`snapshot_max_mib`): the other AWS calls'
/// would cut an upload of hundreds of MiB short. An attempt may take a minute plus a second a
/// MiB (the archive going at 1 MiB/s or faster); the call, retries included, three times that.
fn s3_timeouts(max_mib: u32) -> (TimeoutConfig, Duration) {
    let attempt = Duration::from_secs(60 + u64::from(max_mib));
    let limit = attempt * 3;
    let config = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(attempt)
        .operation_timeout(limit)
        .build();
    (config, limit)
}

impl S3Store {
    /// The store `settings`' snapshots go to, when `rollout.snapshot_dir` is an `s3://` URL;
    /// `credentials`, else the SDK's default chain.
    pub async fn for_snapshots(
        settings: &Settings,
        credentials: Option<aws_credential_types::Credentials>,
    ) -> Result<Option<Rc<dyn ObjectStore>>, CloudError> {
        let Some(snapshots) = settings.rollout.snapshots.as_ref() else {
            return Ok(None);
        };
        let SnapshotDest::S3 { bucket, .. } = &snapshots.dest else {
            return Ok(None);
        };
        let (region, url) = crate::cloud::aws::cloud_region_and_endpoint(settings);
        let sdk = sdk_config_at(region, url, credentials).await?;
        let custom = sdk.endpoint_url().is_some();
        let (timeouts, limit) = s3_timeouts(snapshots.max_mib.get());
        let config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(custom)
            .timeout_config(timeouts)
            .build();
        let endpoint = endpoint_at(sdk.endpoint_url(), &sdk, "s3");
        Ok(Some(Rc::new(Self {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: bucket.clone(),
            endpoint,
            limit,
        })))
    }
}

impl ObjectStore for S3Store {
    fn put_file(&self, key: &str, file: &Path) -> PortFuture<()> {
        let (client, bucket, key, file) = (
            self.client.clone(),
            self.bucket.clone(),
            key.to_owned(),
            file.to_owned(),
        );
        let (this, limit) = (self.endpoint.clone(), self.limit);
        Box::pin(async move {
            let request = format!("PutObject s3://{bucket}/{key}");
            let body = ByteStream::from_path(&file).await.map_err(|e| {
                PortError::new(
                    ErrorKind::Rejected,
                    format!("reading {}: {e}", file.display()),
                )
            })?;
            client
                .put_object()
                .bucket(&bucket)
                .key(&key)
                .body(body)
                .content_type("application/octet-stream")
                .send()
                .await
                .map_err(|e| PortError::from(sdk_error_within(&this, &request, e, limit)))?;
            Ok(())
        })
    }

    fn list(&self, prefix: &str) -> PortFuture<Vec<String>> {
        let (client, bucket, prefix) =
            (self.client.clone(), self.bucket.clone(), prefix.to_owned());
        let (this, limit) = (self.endpoint.clone(), self.limit);
        Box::pin(async move {
            let request = format!("ListObjectsV2 s3://{bucket}/{prefix}");
            let mut found = Vec::new();
            let mut token: Option<String> = None;
            for _ in 0..MAX_LIST_PAGES {
                let page = client
                    .list_objects_v2()
                    .bucket(&bucket)
                    .prefix(&prefix)
                    .set_continuation_token(token.take())
                    .send()
                    .await
                    .map_err(|e| PortError::from(sdk_error_within(&this, &request, e, limit)))?;
                for o in page.contents() {
                    if let Some(key) = o.key() {
                        let modified = o.last_modified().map_or(0, |t| t.as_nanos());
                        found.push((modified, key.to_owned()));
                    }
                }
                match page.next_continuation_token() {
                    Some(next) if page.is_truncated() == Some(true) => {
                        token = Some(next.to_owned())
                    }
                    _ => break,
                }
            }
            found.sort();
            Ok(found.into_iter().map(|(_, k)| k).collect())
        })
    }

    fn delete(&self, key: &str) -> PortFuture<()> {
        let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), key.to_owned());
        let (this, limit) = (self.endpoint.clone(), self.limit);
        Box::pin(async move {
            let request = format!("DeleteObject s3://{bucket}/{key}");
            client
                .delete_object()
                .bucket(&bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| PortError::from(sdk_error_within(&this, &request, e, limit)))?;
            Ok(())
        })
    }
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}
