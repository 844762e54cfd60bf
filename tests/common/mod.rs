//! Shared by the end-to-end tests: a simulator on an ephemeral loopback port, and a bound on
//! every async test so a hang fails fast instead of stalling CI.
#![allow(dead_code)]
pub mod moto;
pub mod rollout;
pub mod shape;

use std::future::Future;
use std::time::Duration;

use rehydrator_sim::{RunningSim, SimConfig};

/// How long any one end-to-end test may run.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `fut`, failing the test if it takes longer than `TEST_TIMEOUT`.
pub async fn bounded<F: Future>(fut: F) -> F::Output {
    match actix_rt::time::timeout(TEST_TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("test did not finish within {TEST_TIMEOUT:?}"),
    }
}

/// A simulator with `servers` servers on 127.0.0.1:0, with time sped up by `time_scale`.
pub fn sim_with(config: SimConfig) -> RunningSim {
    rehydrator_sim::start("127.0.0.1:0".parse().expect("loopback address"), config)
        .expect("simulator binds an ephemeral loopback port")
}

/// A 3-server simulator at real Consul timing.
pub fn sim() -> RunningSim {
    sim_with(SimConfig::default())
}
