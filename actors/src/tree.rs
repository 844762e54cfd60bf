//! The supervision tree, wired explicitly from the settings: one LockManager, one Dispatcher,
//! an executor per `[action.*]`, a Watcher per `[[watch]]`, each under actix's Supervisor so
//! an actor that stops on a fatal error restarts with its state rebuilt from Consul.
//!
//! `Tree::shutdown` is the SIGTERM path: watchers stop, the Dispatcher abandons running jobs
//! without receipts, the LockManager destroys the session so other replicas take over at once.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use rehydrator_config::{ActionKind, RolloutMode, Settings, WatchKind, WatchSettings};

use crate::dispatcher::{self, ActionSpec, DispatchSettings, Dispatcher, ExecutorRef};
use crate::executor::{
    exec::Exec,
    http::Http,
    step::{Duty, StepExecutor},
};
use crate::fault::Fail;
use crate::lock_manager::{self, LockManager, Subscribe};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::plan::Mode;
use crate::ports::{
    CloudPort, ConsulPort, ErrorKind, GatePort, LivenessSpec, ObjectStore, PortError, PortFuture,
    SessionSpec, WebhookPort,
};
use crate::receipt::Keys;
use crate::rollout::{RolloutConfig, RolloutEnv, Which};
use crate::watcher::{self, WatchSpec, Watcher};
use crate::window::Windows;

/// How many runs a failing job gets before a Failed receipt ends it.
pub const MAX_ATTEMPTS: u32 = 5;

/// The backends the tree talks through.
#[derive(Clone)]
pub struct Ports {
    pub consul: Rc<dyn ConsulPort>,
    pub webhook: Rc<dyn WebhookPort>,
    /// Where servers' machines come from; needed only by the rollout's actions.
    pub cloud: Option<Rc<dyn CloudPort>>,
    /// The rollout's health gates (`rollout.gate_*`), built by the binary.
    pub gates: Vec<Rc<dyn GatePort>>,
    /// Where `s3://` snapshots go, built by the binary.
    pub objects: Option<Rc<dyn ObjectStore>>,
}

/// How often a settling rollout step looks again.
pub const ROLLOUT_POLL: Duration = Duration::from_millis(500);

/// The running tree's addresses.
pub struct Tree {
    pub lock_manager: Addr<LockManager>,
    pub dispatcher: Addr<Dispatcher>,
    pub watchers: Vec<Addr<Watcher>>,
    /// Each action's executor, by action name, for fault injection.
    pub executors: BTreeMap<String, Recipient<Fail>>,
    /// What the actors count and time, for the status endpoint's `/metrics`.
    pub metrics: Metrics,
}

/// The rollout's settings from `[cluster]` and `[rollout]`: what SpinUp and SpinDown run with,
/// and what `rehydrator plan` decides with.
pub fn rollout_config(settings: &Settings) -> RolloutConfig {
    RolloutConfig {
        desired: settings.cluster.desired_servers.get() as usize,
        mode: match settings.rollout.mode {
            RolloutMode::Manual => Mode::Manual,
            RolloutMode::Auto => Mode::Auto,
        },
        dry_run: settings.rollout.dry_run,
        stable_timeout: settings.rollout.stable_timeout,
        step_timeout: settings.rollout.step_timeout,
        retire_failed_launch: settings.rollout.retire_failed_launch,
        launch_attempts: settings.rollout.launch_attempts.get(),
        poll: ROLLOUT_POLL,
        windows: Windows::from_settings(&settings.rollout.windows),
        request_watches: settings
            .watches
            .iter()
            .filter(|w| w.request || matches!(w.kind, WatchKind::Image { .. }))
            .map(|w| w.name.clone())
            .collect(),
        bake: settings.rollout.bake_time,
        snapshots: settings.rollout.snapshots.clone(),
    }
}

/// Starts the tree for `settings` on the current arbiter; `replica` names this replica in
/// sessions, lock values and receipts.
pub fn start(settings: &Settings, replica: &str, ports: Ports) -> Tree {
    let settings = &with_operator_watches(settings);
    let keys = Keys::new(&settings.cluster.name);
    let spec = SessionSpec {
        name: Keys::new(&settings.cluster.name).session_name(replica),
        ttl: settings.lock.session_ttl,
        lock_delay: settings.lock.lock_delay,
        check: None,
    };
    let liveness = (!settings.lock.check_ttl.is_zero()).then(|| LivenessSpec {
        id: keys.liveness_id(replica),
        cluster: settings.cluster.name.clone(),
        replica: replica.to_owned(),
        ttl: settings.lock.check_ttl,
    });
    let metrics = Metrics::new();
    let lock_keys: Vec<String> = settings
        .actions
        .values()
        .map(|a| keys.lock(&a.lock))
        .collect();
    metrics.declare(
        lock_keys.iter().map(String::as_str),
        settings.watches.iter().map(|w| w.name.as_str()),
    );
    let (consul, m) = (ports.consul.clone(), metrics.clone());
    let lock_manager = Supervisor::start(move |_| {
        LockManager::new(consul, spec)
            .with_liveness(liveness)
            .with_metrics(m)
    });

    let rollout = Rc::new(RolloutEnv {
        consul: ports.consul.clone(),
        cloud: ports.cloud.clone().unwrap_or_else(|| Rc::new(NoCloud)),
        keys: keys.clone(),
        config: rollout_config(settings),
        notifier: notifier(settings, &ports, &metrics),
        gates: ports.gates.clone(),
        objects: ports.objects.clone(),
    });
    let mut executors = BTreeMap::new();
    let actions = settings
        .actions
        .iter()
        .map(|(name, a)| {
            let (executor, fail) = match &a.kind {
                ActionKind::Exec { command } => {
                    let command = command.clone();
                    let addr = Supervisor::start(move |_| Exec::new(command));
                    let fail = addr.clone().recipient();
                    (
                        ExecutorRef {
                            run: addr.clone().recipient(),
                            abort: addr.recipient(),
                        },
                        fail,
                    )
                }
                ActionKind::SpinUp | ActionKind::SpinDown | ActionKind::LifecycleGuard => {
                    let duty = match a.kind {
                        ActionKind::SpinUp => Duty::Step(Which::SpinUp),
                        ActionKind::SpinDown => Duty::Step(Which::SpinDown),
                        _ => Duty::Guard,
                    };
                    let (env, m) = (rollout.clone(), metrics.clone());
                    let addr = Supervisor::start(move |_| StepExecutor::new(duty, env, m));
                    let fail = addr.clone().recipient();
                    (
                        ExecutorRef {
                            run: addr.clone().recipient(),
                            abort: addr.recipient(),
                        },
                        fail,
                    )
                }
                ActionKind::Http { url } => {
                    let (url, port) = (url.clone(), ports.webhook.clone());
                    let addr = Supervisor::start(move |_| Http::new(url, port));
                    let fail = addr.clone().recipient();
                    (
                        ExecutorRef {
                            run: addr.clone().recipient(),
                            abort: addr.recipient(),
                        },
                        fail,
                    )
                }
            };
            executors.insert(name.clone(), fail);
            ActionSpec {
                name: name.clone(),
                lock: a.lock.clone(),
                timeout: a.timeout,
                executor,
            }
        })
        .collect();
    let dispatch = DispatchSettings {
        receipt_wait: settings.lock.receipt_timeout,
        receipts_kept: settings.lock.receipts_kept.get() as usize,
        max_attempts: MAX_ATTEMPTS,
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(60),
        lock_delay: settings.lock.lock_delay,
    };
    let (consul, k, r) = (ports.consul.clone(), keys.clone(), replica.to_owned());
    let (acquire, release) = (
        lock_manager.clone().recipient(),
        lock_manager.clone().recipient(),
    );
    let m = metrics.clone();
    let dispatcher = Supervisor::start(move |_| {
        Dispatcher::new(consul, k, r, acquire, release, dispatch, actions).with_metrics(m)
    });
    lock_manager.do_send(Subscribe(dispatcher.clone().recipient()));

    let watchers = settings
        .watches
        .iter()
        .map(|w| {
            let spec = WatchSpec {
                name: w.name.clone(),
                kind: w.kind.clone(),
                actions: w.actions.clone(),
                debounce: w.debounce,
            };
            let (consul, keys, to, m) = (
                ports.consul.clone(),
                keys.clone(),
                dispatcher.clone().recipient(),
                metrics.clone(),
            );
            let cloud = ports.cloud.clone();
            Supervisor::start(move |_| {
                Watcher::new(spec, consul, keys, to)
                    .with_metrics(m)
                    .with_cloud(cloud)
            })
        })
        .collect();
    Tree {
        lock_manager,
        dispatcher,
        watchers,
        executors,
        metrics,
    }
}

/// The name of the watch `with_operator_watches` adds.
pub const PAUSE_WATCH: &str = "rehydrator-pause";
/// The watch `with_operator_watches` adds on the abort key.
pub const ABORT_WATCH: &str = "rehydrator-abort";

/// `settings` with `key` watches on the cluster's pause and abort keys that run the rollout's
/// actions, when it has any and no watch of the user's reads that key already: `rehydrator
/// resume` (deleting the pause key) then moves a paused rollout on at once, and `rehydrator
/// abort` (writing the abort key after the record) is acted on at once, instead of at the
/// next timer or event.
pub fn with_operator_watches(settings: &Settings) -> Settings {
    let mut out = settings.clone();
    let keys = Keys::new(&settings.cluster.name);
    let rollout: Vec<String> = settings
        .actions
        .iter()
        .filter(|(_, a)| matches!(a.kind, ActionKind::SpinUp | ActionKind::SpinDown))
        .map(|(name, _)| name.clone())
        .collect();
    if rollout.is_empty() {
        return out;
    }
    for (name, key) in [(PAUSE_WATCH, keys.pause()), (ABORT_WATCH, keys.abort())] {
        let watched = settings
            .watches
            .iter()
            .any(|w| matches!(&w.kind, WatchKind::Key { key: k } if *k == key));
        let named = settings.watches.iter().any(|w| w.name == name);
        if watched || named {
            continue;
        }
        out.watches.push(WatchSettings {
            name: name.into(),
            kind: WatchKind::Key { key },
            actions: rollout.clone(),
            debounce: None,
            request: false,
        });
    }
    out
}

/// The rollout's notifier for `[notify]`; a failed post counts as a `notify` error.
fn notifier(settings: &Settings, ports: &Ports, metrics: &Metrics) -> Notifier {
    let m = metrics.clone();
    Notifier::new(
        settings.notify.url.clone(),
        settings.notify.token.clone(),
        &settings.cluster.name,
        ports.webhook.clone(),
    )
    .with_failure_hook(Rc::new(move |kind| m.error("notify", kind)))
}

impl Tree {
    /// Stops the tree in order; returns once the session is destroyed (or could not be).
    pub async fn shutdown(&self) {
        for w in &self.watchers {
            let _ = w.send(watcher::Shutdown).await;
        }
        let _ = self.dispatcher.send(dispatcher::Shutdown).await;
        let _ = self.lock_manager.send(lock_manager::Shutdown).await;
    }
}

/// The cloud of a tree started without one: every call fails, so a rollout action configured
/// by mistake ends in failed receipts that say why instead of panicking.
struct NoCloud;

impl NoCloud {
    fn err<T: 'static>() -> PortFuture<T> {
        Box::pin(futures_util::future::ready(Err(PortError::new(
            ErrorKind::Rejected,
            "no cloud is configured for the rollout",
        ))))
    }
}

impl CloudPort for NoCloud {
    fn newest_image(&self) -> PortFuture<Option<crate::ports::Image>> {
        Self::err()
    }
    fn machines(&self) -> PortFuture<Vec<crate::ports::Machine>> {
        Self::err()
    }
    fn launch(&self, _image: &str, _token: &str) -> PortFuture<crate::ports::Machine> {
        Self::err()
    }
    fn retire(&self, _machine_id: &str) -> PortFuture<()> {
        Self::err()
    }
    fn machine(&self, _machine_id: &str) -> PortFuture<Option<crate::ports::Machine>> {
        Self::err()
    }
}
