//! One contract suite, several targets: the same check runs against the simulator (as its
//! default Consul and as 1.8.7) and against real Consul agents (3 servers and a client agent
//! started through the process backend). Where Consul itself differs across versions the check
//! branches on `Target::version`, so the simulator answering as 1.8.7 is held to what real
//! 1.8.7 answers.

use std::path::PathBuf;

use rehydrator::cloud::consul_version::Version;
use rehydrator_sim::{RunningSim, SimConfig};

use super::process_rig::ProcessRig;

/// Servers in every target's cluster.
pub const SERVERS: usize = 3;

/// What keeps the target running; dropped with it.
enum Held {
    Sim(RunningSim),
    Real(ProcessRig),
}

pub struct Target {
    /// What the target is, for messages: "simulator as Consul 1.8.7", "real Consul 1.8.7".
    pub name: String,
    /// The HTTP API's base URL (a client agent's, for real Consul).
    pub url: String,
    pub version: Version,
    pub real: bool,
    /// Autopilot's `ServerStabilizationTime` as the target was started with.
    pub stabilization: std::time::Duration,
    held: Held,
}

impl Target {
    /// The simulator as its default Consul version.
    pub fn sim() -> Self {
        Self::sim_with(SimConfig::default())
    }

    /// The simulator answering as Consul `version`.
    pub fn sim_as(version: &str) -> Self {
        Self::sim_with(SimConfig {
            consul_version: version.to_owned(),
            ..SimConfig::default()
        })
    }

    fn sim_with(config: SimConfig) -> Self {
        let version = Version::parse(&config.consul_version).expect("the simulator's version");
        let stabilization = config.stabilization;
        let sim = super::sim_with(SimConfig {
            servers: SERVERS,
            ..config
        });
        Self {
            name: format!("simulator as Consul {version}"),
            url: sim.url(),
            version,
            real: false,
            stabilization,
            held: Held::Sim(sim),
        }
    }

    /// Real Consul from `bin`: `SERVERS` servers and a client agent, once they have a leader
    /// and every server is a voter. `name` names the scratch directory.
    pub async fn real(bin: PathBuf, name: &str) -> Self {
        let version =
            rehydrator::cloud::consul_version::ask(&bin).expect("the consul binary's version");
        let rig = ProcessRig::new(name, bin);
        let client = rig.bootstrap(SERVERS).await;
        Self {
            name: format!("real Consul {version}"),
            url: client.address().trim_end_matches('/').to_owned(),
            version,
            real: true,
            stabilization: super::process_rig::STABILIZATION,
            held: Held::Real(rig),
        }
    }

    /// Whether the target is at least Consul `major.minor`.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        self.version >= Version::new(major, minor, 0)
    }

    /// The simulator, for checks that reach into its state.
    pub fn simulator(&self) -> Option<&RunningSim> {
        match &self.held {
            Held::Sim(sim) => Some(sim),
            Held::Real(_) => None,
        }
    }
}

/// Generates, for each named check `async fn check(t: &Target)` of the calling file, a test
/// on the simulator and one on the simulator as 1.8.7; and one test that starts real Consul
/// (`CONSUL_BIN`) once and runs every check against it in turn, printing how many ran.
#[macro_export]
macro_rules! contract_suite {
    ($name:literal: $($check:ident),+ $(,)?) => {
        mod on_simulator {
            use super::common::{self, target::Target};
            $(
                #[actix_rt::test]
                async fn $check() {
                    common::bounded(async { super::$check(&Target::sim()).await }).await;
                }
            )+
        }

        mod on_simulator_as_1_8_7 {
            use super::common::{self, target::Target};
            $(
                #[actix_rt::test]
                async fn $check() {
                    common::bounded(async { super::$check(&Target::sim_as("1.8.7")).await })
                        .await;
                }
            )+
        }

        #[actix_rt::test]
        async fn on_real_consul() {
            let Some(bin) = common::consul_bin() else {
                return;
            };
            common::bounded_for(std::time::Duration::from_secs(240), async {
                let t = common::target::Target::real(bin, $name).await;
                let mut ran = 0;
                $(
                    println!("{}: {}", t.name, stringify!($check));
                    $check(&t).await;
                    ran += 1;
                )+
                println!("{}: {ran} checks passed", t.name);
            })
            .await;
        }
    };
}
