//! `/v1/event`: user events, how operators and `rehydrator fire` trigger a rollout
//! (`consul-rehydrate`) and how the event Watcher hears of them.
//!
//! The event list's `X-Consul-Index` is a hash of the newest event's ID, not a Raft index: a
//! watch on it uses `IndexOrder::Hashed`, and dedupes by event ID.

use super::{
    segment, Body, Call, Client, ConsulError, Indexed, QueryOptions, UserEvent, MAX_EVENT_LIST_BODY,
};

/// Which agents an event is meant for (`node`, `service`, `tag` regular expressions); the
/// same filters narrow `event_list`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub node: Option<String>,
    pub service: Option<String>,
    /// Only meaningful with `service`.
    pub tag: Option<String>,
}

impl EventFilter {
    fn apply(&self, call: super::Call) -> super::Call {
        call.param_opt("node", self.node.as_deref())
            .param_opt("service", self.service.as_deref())
            .param_opt("tag", self.tag.as_deref())
    }
}

impl Client {
    /// Fires event `name` with `payload` (may be empty) and returns it as Consul recorded it.
    #[tracing::instrument(skip(self, payload, filter), fields(bytes = payload.len()), err)]
    pub async fn event_fire(
        &self,
        name: &str,
        payload: &[u8],
        filter: &EventFilter,
    ) -> Result<UserEvent, ConsulError> {
        let call = filter.apply(Call::put(format!("event/fire/{}", segment(name))));
        let body = (!payload.is_empty()).then(|| Body::Raw(payload.to_vec()));
        self.send(call, body).await?.ok()?.json()
    }

    /// The recent events the agent knows (Consul keeps the last 256), oldest first, optionally
    /// only those named `name`.
    pub async fn event_list(
        &self,
        name: Option<&str>,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<UserEvent>>, ConsulError> {
        let call = Call::get("event/list")
            .param_opt("name", name)
            .limit(MAX_EVENT_LIST_BODY)
            .options(opts);
        let found: Indexed<Option<Vec<UserEvent>>> = self.read(call).await?;
        Ok(found.map(Option::unwrap_or_default))
    }
}
