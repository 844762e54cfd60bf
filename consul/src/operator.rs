//! `/v1/operator` and `/v1/status`: the Raft peer set, autopilot's view of server health, and
//! leadership transfer. These are the safety inputs of a rollout step: SpinUp and SpinDown
//! act only when autopilot is healthy and the failure tolerance holds.

use awc::http::{Method, StatusCode};

use super::types::TransferLeaderReply;
use super::{
    AutopilotConfiguration, AutopilotHealth, AutopilotState, Call, Client, ConsulError,
    LeaderTransfer, QueryOptions, RaftConfiguration, RaftPeer,
};

impl Client {
    /// The Raft peer set (`?stale` reads it from any server, also without a leader).
    pub async fn raft_configuration(
        &self,
        opts: &QueryOptions,
    ) -> Result<RaftConfiguration, ConsulError> {
        let call = Call::get("operator/raft/configuration").options(opts);
        Ok(self.read(call).await?.value)
    }

    /// Removes a peer from the Raft configuration: only for a server that is gone for good and
    /// that autopilot has not cleaned up.
    #[tracing::instrument(skip(self), err)]
    pub async fn raft_remove_peer(&self, peer: &RaftPeer) -> Result<(), ConsulError> {
        let call = Call::new(Method::DELETE, "operator/raft/peer");
        let call = match peer {
            RaftPeer::Id(id) => call.param("id", id),
            RaftPeer::Address(address) => call.param("address", address),
        };
        self.send(call, None).await?.ok().map(|_| ())
    }

    /// Autopilot's health of the servers. Consul answers 429 when the cluster is unhealthy,
    /// with the same body: that is a result here, with `healthy == false`, not an error.
    pub async fn autopilot_health(
        &self,
        opts: &QueryOptions,
    ) -> Result<AutopilotHealth, ConsulError> {
        let call = Call::get("operator/autopilot/health").options(opts);
        let answer = self.send(call, None).await?;
        match answer.status {
            StatusCode::OK | StatusCode::TOO_MANY_REQUESTS => answer.json(),
            _ => Err(answer.error()),
        }
    }

    /// Autopilot's full state (Consul 1.9+), with per-server status and the optimistic
    /// failure tolerance.
    pub async fn autopilot_state(
        &self,
        opts: &QueryOptions,
    ) -> Result<AutopilotState, ConsulError> {
        let call = Call::get("operator/autopilot/state").options(opts);
        Ok(self.read(call).await?.value)
    }

    /// Autopilot's configuration; `server_stabilization_time` is how long a new server waits
    /// before it votes.
    pub async fn autopilot_configuration(
        &self,
        opts: &QueryOptions,
    ) -> Result<AutopilotConfiguration, ConsulError> {
        let call = Call::get("operator/autopilot/configuration").options(opts);
        Ok(self.read(call).await?.value)
    }

    /// Replaces autopilot's configuration; with `cas`, only if its `ModifyIndex` is still that
    /// (`false` when it was not).
    #[tracing::instrument(skip(self, config), err)]
    pub async fn autopilot_set_configuration(
        &self,
        config: &AutopilotConfiguration,
        cas: Option<u64>,
    ) -> Result<bool, ConsulError> {
        let call = Call::put("operator/autopilot/configuration").param_opt("cas", cas);
        self.send_json(call, config).await?.bool()
    }

    /// Asks the leader to hand leadership to server `id` (its Raft ID), or to any voter.
    /// Servers older than Consul 1.15 lack the endpoint and answer 404, which comes back as
    /// [`LeaderTransfer::Unsupported`].
    #[tracing::instrument(skip(self), err)]
    pub async fn transfer_leader(&self, id: Option<&str>) -> Result<LeaderTransfer, ConsulError> {
        let call = Call::new(Method::POST, "operator/raft/transfer-leader").param_opt("id", id);
        let answer = self.send(call, None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(LeaderTransfer::Unsupported);
        }
        let reply: TransferLeaderReply = answer.ok()?.json()?;
        Ok(if reply.success {
            LeaderTransfer::Transferred
        } else {
            LeaderTransfer::NotTransferred
        })
    }

    /// The leader's Raft address, `None` while there is none (Consul answers `""`).
    pub async fn status_leader(&self) -> Result<Option<String>, ConsulError> {
        let leader: String = self.read(Call::get("status/leader")).await?.value;
        Ok(Some(leader).filter(|l| !l.is_empty()))
    }

    /// The Raft addresses of every peer in the Raft configuration, voters and non-voters alike
    /// (Consul's `Status.Peers` does not filter by suffrage).
    pub async fn status_peers(&self) -> Result<Vec<String>, ConsulError> {
        let peers: Option<Vec<String>> = self.read(Call::get("status/peers")).await?.value;
        Ok(peers.unwrap_or_default())
    }
}
