//! The CloudWatch gate (`rollout.gate_cloudwatch_alarms`): no listed alarm may be in ALARM.
//! Asked with DescribeAlarms (metric and composite alarms, `StateValue=ALARM`): one request for
//! the names, one per prefix. Any alarm in ALARM closes the gate and is named with CloudWatch's
//! reason; so does an answer that cannot be had (unreachable, refused, throttled, slower than
//! `TIMEOUT`): the step never goes on what it could not check.
//!
//! For an `ec2` or `ecs` cloud the gate shares the cloud's region and endpoint; for any other
//! cloud the SDK's environment decides (AWS_REGION, AWS_ENDPOINT_URL_CLOUDWATCH, the default
//! credentials chain), as for S3 snapshots.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_cloudwatch::types::{AlarmType, StateValue};
use futures_util::future::LocalBoxFuture;
use rehydrator_actors::ports::{clip, GatePort};
use rehydrator_config::AlarmPattern;

use crate::cloud::aws::{endpoint_at, sdk_config_at, sdk_error};
use crate::cloud::CloudError;

/// How long the whole check may take, every request included.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Pages read per request (100 alarms each): past them the gate is closed anyway.
const MAX_PAGES: usize = 5;
/// Alarms named in the reason; the rest are counted.
const NAMED: usize = 3;
/// The longest alarm name and CloudWatch reason kept (they come from outside).
const MAX_NAME: usize = 80;
const MAX_REASON: usize = 160;

pub struct CloudWatchGate {
    client: aws_sdk_cloudwatch::Client,
    patterns: Vec<AlarmPattern>,
    /// Where calls go, for reasons.
    endpoint: String,
}

impl CloudWatchGate {
    /// The gate on `patterns`, in `region` through `endpoint_url` (unset: the environment's),
    /// with `credentials`, else the SDK's default chain.
    pub async fn load(
        patterns: &[AlarmPattern],
        region: Option<&str>,
        endpoint_url: Option<&str>,
        credentials: Option<aws_credential_types::Credentials>,
    ) -> Result<Self, CloudError> {
        let sdk = sdk_config_at(region, endpoint_url, credentials).await?;
        let endpoint = endpoint_at(sdk.endpoint_url(), &sdk, "monitoring");
        Ok(Self {
            client: aws_sdk_cloudwatch::Client::new(&sdk),
            patterns: patterns.to_vec(),
            endpoint,
        })
    }
}

/// One DescribeAlarms request's filter.
enum Query<'a> {
    Names(Vec<String>),
    /// Empty: every alarm.
    Prefix(&'a str),
}

/// Whether `name` is one the patterns ask about: the answer is checked, not trusted.
fn listed(patterns: &[AlarmPattern], name: &str) -> bool {
    patterns.iter().any(|p| match p {
        AlarmPattern::Name(n) => n == name,
        AlarmPattern::Prefix(p) => name.starts_with(p.as_str()),
    })
}

/// The listed alarms in ALARM, by name, with CloudWatch's reason.
async fn in_alarm(
    client: &aws_sdk_cloudwatch::Client,
    patterns: &[AlarmPattern],
    endpoint: &str,
) -> Result<BTreeMap<String, String>, CloudError> {
    let names: Vec<String> = patterns
        .iter()
        .filter_map(|p| match p {
            AlarmPattern::Name(n) => Some(n.clone()),
            AlarmPattern::Prefix(_) => None,
        })
        .collect();
    let mut queries = Vec::new();
    if !names.is_empty() {
        queries.push(Query::Names(names));
    }
    queries.extend(patterns.iter().filter_map(|p| match p {
        AlarmPattern::Prefix(p) => Some(Query::Prefix(p)),
        AlarmPattern::Name(_) => None,
    }));
    let mut found = BTreeMap::new();
    for query in &queries {
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut req = client
                .describe_alarms()
                .state_value(StateValue::Alarm)
                .alarm_types(AlarmType::MetricAlarm)
                .alarm_types(AlarmType::CompositeAlarm)
                .max_records(100)
                .set_next_token(token.take());
            req = match query {
                Query::Names(names) => req.set_alarm_names(Some(names.clone())),
                Query::Prefix("") => req,
                Query::Prefix(p) => req.alarm_name_prefix(*p),
            };
            let out = req
                .send()
                .await
                .map_err(|e| sdk_error(endpoint, "DescribeAlarms", e))?;
            let metric = out.metric_alarms().iter().map(|a| {
                (
                    a.alarm_name(),
                    a.state_value(),
                    a.state_reason().unwrap_or_default(),
                )
            });
            let composite = out.composite_alarms().iter().map(|a| {
                (
                    a.alarm_name(),
                    a.state_value(),
                    a.state_reason().unwrap_or_default(),
                )
            });
            for (name, state, reason) in metric.chain(composite) {
                if let Some(name) = name.filter(|n| listed(patterns, n)) {
                    if state == Some(&StateValue::Alarm) {
                        found.insert(clip(name, MAX_NAME), clip(reason, MAX_REASON));
                    }
                }
            }
            token = out
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
    }
    Ok(found)
}

/// The reason the gate is closed by `alarms`, or None when there are none.
fn judge(alarms: &BTreeMap<String, String>) -> Option<String> {
    if alarms.is_empty() {
        return None;
    }
    let named: Vec<String> = alarms
        .iter()
        .take(NAMED)
        .map(|(name, reason)| {
            if reason.is_empty() {
                name.clone()
            } else {
                format!("{name} ({reason})")
            }
        })
        .collect();
    let more = alarms.len().saturating_sub(NAMED);
    Some(format!(
        "CloudWatch alarm{} in ALARM: {}{}",
        if alarms.len() == 1 { "" } else { "s" },
        named.join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
    ))
}

impl GatePort for CloudWatchGate {
    fn name(&self) -> &str {
        "cloudwatch"
    }

    fn closed(&self) -> LocalBoxFuture<'static, Option<String>> {
        let (client, patterns, endpoint) = (
            self.client.clone(),
            self.patterns.clone(),
            self.endpoint.clone(),
        );
        Box::pin(async move {
            let asked =
                actix_rt::time::timeout(TIMEOUT, in_alarm(&client, &patterns, &endpoint)).await;
            let why = match asked {
                Err(_) => Some(format!(
                    "CloudWatch at {endpoint} did not answer within {TIMEOUT:?}"
                )),
                Ok(Err(e)) => Some(format!("CloudWatch could not be asked: {e}")),
                Ok(Ok(alarms)) => judge(&alarms),
            };
            if let Some(why) = &why {
                tracing::info!(gate = "cloudwatch", reason = %why, "Health gate closed.");
            }
            why
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_prefixes_pick_out_what_they_list() {
        let patterns = [
            AlarmPattern::Name("api-5xx".into()),
            AlarmPattern::Prefix("consul-".into()),
        ];
        assert!(listed(&patterns, "api-5xx"));
        assert!(!listed(&patterns, "api-5xx-old"));
        assert!(listed(&patterns, "consul-leader"));
        assert!(!listed(&patterns, "vault-consul-leader"));
        assert!(listed(&[AlarmPattern::Prefix(String::new())], "anything"));
    }

    #[test]
    fn the_reason_names_three_alarms_and_counts_the_rest() {
        assert_eq!(judge(&BTreeMap::new()), None);
        let one: BTreeMap<String, String> =
            [("consul-leader".to_owned(), "Threshold Crossed".to_owned())].into();
        assert_eq!(
            judge(&one).as_deref(),
            Some("CloudWatch alarm in ALARM: consul-leader (Threshold Crossed)")
        );
        let five: BTreeMap<String, String> =
            (1..=5).map(|i| (format!("a{i}"), String::new())).collect();
        assert_eq!(
            judge(&five).as_deref(),
            Some("CloudWatch alarms in ALARM: a1; a2; a3; and 2 more")
        );
    }
}
