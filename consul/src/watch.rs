//! Watch reads: the endpoint behind each `consul watch` type, read as a blocking query and
//! checked for the shape a handler expects (a map for `services`, a list for the others), so
//! that a proxy's page or another service's JSON never reaches a rule as a Consul answer.

use awc::http::StatusCode;
use rehydrator_config::WatchKind;
use serde_json::Value;

use super::{
    key_path, segment, Call, Client, ConsulError, QueryOptions, MAX_EVENT_LIST_BODY, MAX_LIST_BODY,
};

impl Client {
    /// The read behind a watch of `kind`, as `consul watch` makes it: the answer's index and
    /// the endpoint's JSON as `consul watch` hands it to a handler.
    pub async fn watch_read(
        &self,
        kind: &WatchKind,
        opts: &QueryOptions,
    ) -> Result<(u64, Value), ConsulError> {
        let call = match kind {
            WatchKind::Key { key } => Call::get(format!("kv/{}", key_path(key))),
            WatchKind::Keyprefix { prefix } => Call::get(format!("kv/{}", key_path(prefix)))
                .flag("recurse", true)
                .limit(MAX_LIST_BODY),
            WatchKind::Services => Call::get("catalog/services").limit(MAX_LIST_BODY),
            WatchKind::Nodes => Call::get("catalog/nodes").limit(MAX_LIST_BODY),
            WatchKind::Service {
                service,
                tag,
                passingonly,
            } => {
                let mut call = Call::get(format!("health/service/{}", segment(service)))
                    .flag("passing", *passingonly);
                for t in tag {
                    call = call.param("tag", t);
                }
                call.limit(MAX_LIST_BODY)
            }
            WatchKind::Checks {
                service: Some(service),
                ..
            } => Call::get(format!("health/checks/{}", segment(service))).limit(MAX_LIST_BODY),
            WatchKind::Checks {
                service: None,
                state,
            } => Call::get(format!(
                "health/state/{}",
                segment(state.as_deref().unwrap_or("any"))
            ))
            .limit(MAX_LIST_BODY),
            WatchKind::Event { event } => Call::get("event/list")
                .param("name", event)
                .limit(MAX_EVENT_LIST_BODY),
            // The Watcher polls the cloud for an image watch; neither reads a Consul endpoint.
            WatchKind::Schedule { .. } | WatchKind::Image { .. } => {
                return Err(ConsulError::Config(
                    "a schedule or image watch reads no Consul endpoint".into(),
                ))
            }
        }
        .options(opts);
        let answer = self.send(call, None).await?;
        // A key that does not exist answers 404 with an index to block on; the watch sees null
        // (a prefix with nothing under it, an empty list).
        if answer.status == StatusCode::NOT_FOUND
            && matches!(kind, WatchKind::Key { .. } | WatchKind::Keyprefix { .. })
        {
            let empty = if matches!(kind, WatchKind::Key { .. }) {
                Value::Null
            } else {
                Value::Array(Vec::new())
            };
            return Ok((answer.meta.index, empty));
        }
        let answer = answer.ok()?;
        // Every endpoint a watch reads sends its index; without one a blocking query cannot block,
        // and going on would poll as fast as the rate limit allows.
        if !answer.has_index {
            return Err(ConsulError::Decode {
                request: answer.request,
                reason: "no numeric X-Consul-Index in the answer (is this a Consul agent?)".into(),
            });
        }
        let request = answer.request.clone();
        let mut got = answer.indexed::<Value>()?;
        // `catalog/services` answers a map of service to tags; every other endpoint a list (or
        // null for none, as some versions answer an empty event list).
        let want_object = matches!(kind, WatchKind::Services);
        if got.value.is_null() && !want_object {
            got.value = Value::Array(Vec::new());
        }
        let shape_ok = match &got.value {
            Value::Object(_) => want_object,
            Value::Array(_) => !want_object,
            _ => false,
        };
        if !shape_ok {
            let what = |v: &Value| match v {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "a list",
                Value::Object(_) => "an object",
            };
            return Err(ConsulError::Decode {
                request,
                reason: format!(
                    "expected {}, got {}",
                    if want_object { "an object" } else { "a list" },
                    what(&got.value)
                ),
            });
        }
        let payload = match (kind, got.value) {
            // consul watch hands a key watch the entry itself, not a list of one.
            (WatchKind::Key { .. }, Value::Array(mut items)) if !items.is_empty() => {
                items.swap_remove(0)
            }
            (_, v) => v,
        };
        Ok((got.meta.index, payload))
    }
}
