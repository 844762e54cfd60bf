//! The rollout's health gates (`rollout.gate_*`), the actors' `GatePort` on real services: a
//! step waits while one is closed. Prometheus (`prometheus.rs`), a PromQL query that must come
//! back empty; CloudWatch (`cloudwatch.rs`), alarms none of which may be in ALARM.

pub mod cloudwatch;
pub mod prometheus;

use std::rc::Rc;

use rehydrator_actors::ports::GatePort;
use rehydrator_config::Settings;

use crate::cloud::CloudError;

/// The gates `settings` configures. The CloudWatch gate uses `credentials`, else the SDK's
/// default chain, and an `ec2` or `ecs` cloud's region and endpoint.
pub async fn from_settings(
    settings: &Settings,
    credentials: Option<aws_credential_types::Credentials>,
) -> Result<Vec<Rc<dyn GatePort>>, CloudError> {
    let mut gates: Vec<Rc<dyn GatePort>> = Vec::new();
    if let Some(p) = &settings.rollout.prometheus_gate {
        gates.push(Rc::new(prometheus::PrometheusGate::new(p)));
    }
    let alarms = &settings.rollout.cloudwatch_gate;
    if !alarms.is_empty() {
        let (region, url) = crate::cloud::aws::cloud_region_and_endpoint(settings);
        gates.push(Rc::new(
            cloudwatch::CloudWatchGate::load(alarms, region, url, credentials).await?,
        ));
    }
    Ok(gates)
}
