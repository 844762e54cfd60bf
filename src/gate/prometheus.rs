//! The Prometheus gate: `GET <url>/api/v1/query?query=<PromQL>` must answer an empty result.
//! Any series closes the gate and is named (its `alertname`, else its metric name); so does
//! an answer that cannot be had or read (unreachable, not 200, not Prometheus' JSON, larger
//! than `MAX_ANSWER`, slower than `TIMEOUT`): the step never goes on what it could not check.

use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use rehydrator_actors::ports::GatePort;
use serde::Deserialize;

/// How long Prometheus may take to answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an answer read: a query matching thousands of series is closed all the same.
const MAX_ANSWER: usize = 1 << 20;
/// Series named in the reason; the rest are counted.
const NAMED: usize = 3;
/// The longest name kept of one series (it comes from outside).
const MAX_NAME: usize = 80;

pub struct PrometheusGate {
    client: awc::Client,
    /// The query URL without credentials, for the request.
    query_url: String,
    /// The base URL with its secrets masked, for reasons and logs.
    shown: String,
    credentials: Option<(String, Option<String>)>,
}

impl PrometheusGate {
    pub fn new(settings: &rehydrator_config::PrometheusGate) -> Self {
        let (base, credentials) = crate::webhook::split_credentials(settings.url.expose());
        Self {
            client: awc::Client::builder().disable_redirects().finish(),
            query_url: format!(
                "{}/api/v1/query?query={}",
                base.trim_end_matches('/'),
                utf8_percent_encode(&settings.query, NON_ALPHANUMERIC)
            ),
            shown: settings.url.to_string(),
            credentials,
        }
    }
}

/// `/api/v1/query`'s answer, as far as the gate reads it.
#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    /// For a vector or matrix, the series; for a scalar or string, a `[time, value]` pair.
    result: serde_json::Value,
}

/// Why the answer closes the gate, or None when it leaves it open.
pub fn judge(status: u16, body: &[u8]) -> Option<String> {
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(_) if status != 200 => return Some(format!("Prometheus answered {status}")),
        Err(e) => return Some(format!("its answer is not Prometheus' JSON: {e}")),
    };
    if answer.status != "success" || status != 200 {
        let why: String = answer
            .error
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        return Some(format!("Prometheus answered {status}: {why}"));
    }
    let Some(data) = answer.data else {
        return Some("Prometheus' answer has no data".into());
    };
    let series = match (data.result_type.as_str(), data.result.as_array()) {
        ("vector" | "matrix", Some(list)) => list,
        // A scalar always has a value: the query should select series.
        (other, _) => {
            return Some(format!(
                "the query gives a {}, not series: it can never be empty",
                other.chars().take(20).collect::<String>()
            ))
        }
    };
    if series.is_empty() {
        return None;
    }
    let names: Vec<String> = series
        .iter()
        .take(NAMED)
        .map(|s| {
            let m = &s["metric"];
            let name = m["alertname"]
                .as_str()
                .or_else(|| m["__name__"].as_str())
                .unwrap_or("a series");
            name.chars()
                .filter(|c| !c.is_control())
                .take(MAX_NAME)
                .collect()
        })
        .collect();
    let more = series.len().saturating_sub(NAMED);
    Some(format!(
        "the query returns {} series ({}{})",
        series.len(),
        names.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    ))
}

impl GatePort for PrometheusGate {
    fn name(&self) -> &str {
        "prometheus"
    }

    fn closed(&self) -> LocalBoxFuture<'static, Option<String>> {
        let mut req = self.client.get(&self.query_url).timeout(TIMEOUT);
        if let Some((user, pass)) = &self.credentials {
            req = req.basic_auth(user, pass.as_deref().unwrap_or_default());
        }
        let shown = self.shown.clone();
        Box::pin(async move {
            let why = match req.send().await {
                Err(e) => Some(format!(
                    "Prometheus at {shown} could not be asked: {}",
                    kind(&e)
                )),
                Ok(mut resp) => match resp.body().limit(MAX_ANSWER).await {
                    Ok(body) => judge(resp.status().as_u16(), &body),
                    Err(e) => Some(format!(
                        "Prometheus at {shown}: its answer could not be read (over {MAX_ANSWER} \
                         bytes?): {e}"
                    )),
                },
            };
            if let Some(why) = &why {
                tracing::info!(gate = "prometheus", reason = %why, "Health gate closed.");
            }
            why
        })
    }
}

/// What went wrong sending, without the URL (awc's errors can carry it, credentials and all).
fn kind(e: &awc::error::SendRequestError) -> &'static str {
    use awc::error::SendRequestError as E;
    match e {
        E::Timeout => "no answer in time",
        E::Connect(_) => "cannot connect",
        E::Url(_) => "a bad URL",
        _ => "the request failed",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::judge;

    #[test]
    fn an_empty_vector_opens_and_anything_else_closes_naming_it() {
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(judge(200, empty), None);
        let firing = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"ALERTS","alertname":"ConsulDown","alertstate":"firing"},"value":[1,"1"]},
            {"metric":{"__name__":"up","job":"x"},"value":[1,"0"]},
            {"metric":{"alertname":"A\u001b[2J"},"value":[1,"1"]},
            {"metric":{"alertname":"D"},"value":[1,"1"]}]}}"#;
        let why = judge(200, firing).unwrap();
        assert_eq!(
            why,
            "the query returns 4 series (ConsulDown, up, A[2J and 1 more)"
        );
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}"#;
        assert!(judge(200, scalar).unwrap().contains("never be empty"));
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        assert_eq!(
            judge(400, bad).unwrap(),
            "Prometheus answered 400: parse error at char 3"
        );
        assert_eq!(judge(502, b"<html>").unwrap(), "Prometheus answered 502");
        assert!(judge(200, b"<html>")
            .unwrap()
            .contains("not Prometheus' JSON"));
    }
}
