//! The rollout's health gates (`rollout.gate_*`), the actors' `GatePort` on real services: a
//! step waits while one is closed. Today: Prometheus (`prometheus.rs`), a PromQL query that
//! must come back empty.

pub mod prometheus;

use std::rc::Rc;

use rehydrator_actors::ports::GatePort;
use rehydrator_config::Settings;

/// The gates `settings` configures.
pub fn from_settings(settings: &Settings) -> Vec<Rc<dyn GatePort>> {
    let mut gates: Vec<Rc<dyn GatePort>> = Vec::new();
    if let Some(p) = &settings.rollout.prometheus_gate {
        gates.push(Rc::new(prometheus::PrometheusGate::new(p)));
    }
    gates
}
