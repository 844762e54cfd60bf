//! `/v1/session`: the sessions behind rehydrator's locks.
//!
//! The LockManager creates one session per replica, renews it at TTL/2, and recreates it when
//! `session_renew` answers `None` (Consul invalidated it: TTL ran out, a check failed, or it
//! was destroyed); on shutdown it destroys it so the locks free at once.

use awc::http::StatusCode;

use super::types::SessionCreated;
use super::{
    segment, Call, Client, ConsulError, Indexed, QueryOptions, SessionEntry, SessionRequest,
    MAX_LIST_BODY,
};

impl Client {
    /// Creates a session and returns its ID.
    #[tracing::instrument(skip(self, request), fields(name = ?request.name), err)]
    pub async fn session_create(&self, request: &SessionRequest) -> Result<String, ConsulError> {
        let answer = self.send_json(Call::put("session/create"), request).await?;
        Ok(answer.ok()?.json::<SessionCreated>()?.id)
    }

    /// Renews a TTL session. `None` means Consul no longer knows it (404): its locks are gone
    /// and a new session is needed; that is an expected outcome, not an error.
    pub async fn session_renew(&self, id: &str) -> Result<Option<SessionEntry>, ConsulError> {
        let call = Call::put(format!("session/renew/{}", segment(id)));
        let answer = self.send(call, None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let sessions: Vec<SessionEntry> = answer.ok()?.json()?;
        Ok(sessions.into_iter().next())
    }

    /// Destroys a session, releasing (or deleting, per its behavior) the keys it locks.
    #[tracing::instrument(skip(self), err)]
    pub async fn session_destroy(&self, id: &str) -> Result<bool, ConsulError> {
        let call = Call::put(format!("session/destroy/{}", segment(id)));
        self.send(call, None).await?.bool()
    }

    /// The session, or `None` if it does not exist.
    pub async fn session_info(
        &self,
        id: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Option<SessionEntry>>, ConsulError> {
        let call = Call::get(format!("session/info/{}", segment(id))).options(opts);
        // Older Consul answers `null` for an unknown session, newer `[]`.
        let found: Indexed<Option<Vec<SessionEntry>>> = self.read(call).await?;
        Ok(found.map(|s| s.and_then(|s| s.into_iter().next())))
    }

    /// Every session in the datacenter.
    pub async fn session_list(
        &self,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<SessionEntry>>, ConsulError> {
        let call = Call::get("session/list").limit(MAX_LIST_BODY).options(opts);
        let found: Indexed<Option<Vec<SessionEntry>>> = self.read(call).await?;
        Ok(found.map(Option::unwrap_or_default))
    }

    /// The sessions that belong to `node`.
    pub async fn session_node(
        &self,
        node: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<SessionEntry>>, ConsulError> {
        let call = Call::get(format!("session/node/{}", segment(node))).options(opts);
        let found: Indexed<Option<Vec<SessionEntry>>> = self.read(call).await?;
        Ok(found.map(Option::unwrap_or_default))
    }
}
