//! `/v1/agent`: the local agent and the gossip pool it sees. SpinDown force-leaves a retired
//! server whose agent died with its machine instead of leaving. The LockManager keeps the
//! replica's liveness check here: a service with a TTL check, passed while the replica runs.

use awc::http::Method;

use awc::http::StatusCode;

use super::{
    segment, AgentSelf, AgentServiceRegistration, Call, Client, ConsulError, Member, MAX_LIST_BODY,
};

impl Client {
    /// The agent's configuration and its own membership.
    pub async fn agent_self(&self) -> Result<AgentSelf, ConsulError> {
        Ok(self.read(Call::get("agent/self")).await?.value)
    }

    /// The members of the LAN gossip pool (the WAN pool of servers with `wan`).
    pub async fn agent_members(&self, wan: bool) -> Result<Vec<Member>, ConsulError> {
        // `wan=1`, not a bare `wan`: Consul 1.8 reads the parameter's value, and a bare `?wan`
        // answers the LAN pool.
        let call = Call::get("agent/members")
            .param_opt("wan", wan.then_some(1))
            .limit(MAX_LIST_BODY);
        let found: Option<Vec<Member>> = self.read(call).await?.value;
        Ok(found.unwrap_or_default())
    }

    /// Makes the agent answering this client leave the cluster gracefully and shut down.
    #[tracing::instrument(skip(self), err)]
    pub async fn agent_leave(&self) -> Result<(), ConsulError> {
        self.send(Call::new(Method::PUT, "agent/leave"), None)
            .await?
            .ok()
            .map(|_| ())
    }

    /// Marks `node` as left; with `prune`, also drops it from the member list at once rather
    /// than after the reap interval.
    #[tracing::instrument(skip(self), err)]
    pub async fn agent_force_leave(&self, node: &str, prune: bool) -> Result<(), ConsulError> {
        let call = Call::put(format!("agent/force-leave/{}", segment(node))).flag("prune", prune);
        self.send(call, None).await?.ok().map(|_| ())
    }

    /// Registers a service instance (with its checks) on the agent, replacing one of the same
    /// ID; a TTL check registered `passing` starts its TTL now.
    #[tracing::instrument(skip(self, service), fields(id = %service.id), err)]
    pub async fn agent_service_register(
        &self,
        service: &AgentServiceRegistration,
    ) -> Result<(), ConsulError> {
        self.send_json(Call::put("agent/service/register"), service)
            .await?
            .ok()
            .map(|_| ())
    }

    /// Removes a service instance and its checks from the agent (200 if it had none).
    #[tracing::instrument(skip(self), err)]
    pub async fn agent_service_deregister(&self, id: &str) -> Result<(), ConsulError> {
        let call = Call::put(format!("agent/service/deregister/{}", segment(id)));
        self.send(call, None).await?.ok().map(|_| ())
    }

    /// Passes TTL check `id`. `false` when the agent has no TTL check of that ID: Consul 1.8
    /// answers 500 "CheckID … does not have associated TTL", later ones 404 "Unknown check".
    pub async fn agent_check_pass(&self, id: &str) -> Result<bool, ConsulError> {
        let call = Call::put(format!("agent/check/pass/{}", segment(id)));
        let answer = self.send(call, None).await?;
        let body = String::from_utf8_lossy(&answer.body);
        let unknown = answer.status == StatusCode::NOT_FOUND
            || (answer.status == StatusCode::INTERNAL_SERVER_ERROR
                && (body.contains("does not have associated TTL")
                    || body.contains("Unknown check")));
        if unknown {
            return Ok(false);
        }
        answer.ok().map(|_| true)
    }
}
