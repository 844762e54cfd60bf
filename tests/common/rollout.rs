//! Shared by the rollout tests: the replica configuration they run, and the invariants every
//! finished rollout must show in the simulator's own record.

use serde_json::Value;

/// The session TTL and lock-delay the rollout tests run with (real time: the simulator's
/// sessions follow Consul's rules whatever its cluster constants are).
pub const SESSION_TTL_SECS: u64 = 10;
pub const LOCK_DELAY_SECS: u64 = 1;
/// The replicas' liveness check: a killed holder's session ends this long after its last pass.
pub const CHECK_TTL_SECS: u64 = 2;

/// The watches every rollout test's replica runs spin-up and spin-down on: `consul-rehydrate`,
/// catalog changes of the `consul` service and a 1s timer.
pub const WATCHES: &str = rehydrator::demo::ROLLOUT_WATCHES;

/// A replica's configuration for cluster `cluster` with `desired` servers, Consul at `consul`:
/// spin-up and spin-down on the shared `step` lock, triggered by `consul-rehydrate`, by catalog
/// changes of the `consul` service and by a 1s timer. `cloud` and `rollout` are the bodies
/// of those sections.
pub fn config(cluster: &str, desired: usize, consul: &str, cloud: &str, rollout: &str) -> String {
    format!(
        r#"[cluster]
name = "{cluster}"
desired_servers = {desired}
[consul]
address = "{consul}"
[cloud]
{cloud}
[lock]
session_ttl = "{SESSION_TTL_SECS}s"
lock_delay = "{LOCK_DELAY_SECS}s"
check_ttl = "{CHECK_TTL_SECS}s"
# Several replicas on one host: each status endpoint on a free port.
[status]
listen = "127.0.0.1:0"
[rollout]
{rollout}
step_timeout = "20s"
[action.spin-up]
type = "spin-up"
[action.spin-down]
type = "spin-down"
{WATCHES}"#
    )
}

/// What `/sim/invariants` must show after a rollout of `n` servers: quorum never lost, never
/// more than one voter missing, the leader never retired while leading, never more than one
/// machine beyond the desired count, never fewer voters than desired. The check is the demo's
/// (`rehydrator::demo::verdict`), so the tests and `rehydrator demo` judge a rollout alike.
pub fn assert_clean(inv: &Value, n: usize) {
    let broken = rehydrator::demo::verdict::check_invariants(inv, n);
    assert!(broken.is_empty(), "{broken:?}: {inv}");
}
