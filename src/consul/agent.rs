//! `/v1/agent`: the local agent and the gossip pool it sees. SpinDown makes a retiring server
//! leave, and force-leaves one whose machine died before it could.

use awc::http::Method;

use super::{segment, AgentSelf, Call, Client, ConsulError, Member, MAX_LIST_BODY};

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
}
