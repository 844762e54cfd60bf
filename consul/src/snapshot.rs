//! `/v1/snapshot`: the servers' state as one archive (Consul's `consul snapshot save`). The
//! rollout saves one before its first step and before each retirement, so a cluster that a
//! step broke can be put back with `consul snapshot restore`.

use std::time::Duration;

use super::{Call, Client, ConsulError};

/// A snapshot as Consul sent it.
pub struct Snapshot {
    /// The archive (gzipped tar: meta.json, state.bin, SHA256SUMS).
    pub archive: Vec<u8>,
    /// The Raft index it was taken at (`X-Consul-Index`).
    pub index: u64,
}

impl Client {
    /// Saves a snapshot through the leader (never `stale`: a follower's may lag), reading at
    /// most `max_bytes` within `within`.
    #[tracing::instrument(skip(self), err)]
    pub async fn snapshot(
        &self,
        max_bytes: usize,
        within: Duration,
    ) -> Result<Snapshot, ConsulError> {
        let call = Call::get("snapshot").limit(max_bytes).timeout(within);
        let answer = self.send(call, None).await?.ok()?;
        Ok(Snapshot {
            index: answer.meta.index,
            archive: answer.body,
        })
    }
}
