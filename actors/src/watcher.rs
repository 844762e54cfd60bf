//! Watcher: one per `[[watch]]`. Runs the watch's blocking-query loop (through the port's
//! `WatchStream`, which owns Consul's index and backoff rules) and sends the Dispatcher a
//! `WatchFired` per action for every real change, awaiting each send so a slow Dispatcher
//! slows the watch rather than piling up messages.

use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use rehydrator_config::WatchKind;
use tracing::{debug, error, info, warn, Instrument};

use crate::dispatcher::WatchFired;
use crate::executor::Trigger;
use crate::image_watch::ImagePoll;
use crate::metrics::Metrics;
use crate::ports::{CloudPort, ConsulPort, ErrorKind, PortError, WatchRead, WatchStream};
use crate::receipt::Keys;
use crate::watch_plan::{self, Fire, Memory, Naming};

/// Stop watching (SIGTERM); a stopped Watcher is not restarted by its supervisor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// What the Watcher needs to know about its `[[watch]]`.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    pub name: String,
    pub kind: WatchKind,
    pub actions: Vec<String>,
    pub debounce: Option<Duration>,
}

pub struct Watcher {
    spec: WatchSpec,
    consul: Rc<dyn ConsulPort>,
    /// What an `image` watch polls.
    cloud: Option<Rc<dyn CloudPort>>,
    keys: Keys,
    dispatcher: Recipient<WatchFired>,
    phase: Phase,
    metrics: Metrics,
    /// Every log line of this actor carries `actor` and `watch`.
    span: tracing::Span,
}

/// Whether the Watcher watches, and what a watch in progress carries. A restart starts a
/// fresh `Watching`; a shutdown drops it with its timers.
enum Phase {
    Watching(Box<Watching>),
    Stopped,
}

/// A watch in progress.
#[derive(Default)]
struct Watching {
    /// The blocking-query (or poll) loop, made at the first read.
    stream: Option<Rc<dyn WatchStream>>,
    /// What the watch has seen: its baseline and the triggers fired.
    memory: Memory,
    /// Since when and how reads fail, so a failure is logged once when it starts and once
    /// when it changes kind, not once per retry.
    outage: Option<Outage>,
    /// Fires waiting out the debounce quiet time, with the timer that sends them.
    debounced: Option<Debounced>,
    /// The read in flight.
    read: Option<SpawnHandle>,
}

impl Watching {
    /// Cancels the read in flight and the debounce timer.
    fn cancel(&mut self, ctx: &mut Context<Watcher>) {
        if let Some(h) = self.read.take() {
            ctx.cancel_future(h);
        }
        if let Some(d) = self.debounced.take() {
            ctx.cancel_future(d.timer);
        }
    }
}

struct Debounced {
    fires: Vec<(Fire, u64)>,
    timer: SpawnHandle,
}

/// A run of failed reads.
#[derive(Debug, Clone, Copy)]
struct Outage {
    since: tokio::time::Instant,
    kind: ErrorKind,
    failures: u64,
}

impl Watcher {
    pub fn new(
        spec: WatchSpec,
        consul: Rc<dyn ConsulPort>,
        keys: Keys,
        dispatcher: Recipient<WatchFired>,
    ) -> Self {
        Self {
            span: tracing::info_span!("watcher", actor = "watcher", watch = %spec.name),
            spec,
            consul,
            keys,
            dispatcher,
            phase: Phase::Watching(Box::default()),
            cloud: None,
            metrics: Metrics::default(),
        }
    }

    /// Counts fires and Consul errors in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The cloud an `image` watch polls (without one, an image watch only logs errors).
    pub fn with_cloud(mut self, cloud: Option<Rc<dyn CloudPort>>) -> Self {
        self.cloud = cloud;
        self
    }

    fn is_event(&self) -> bool {
        matches!(self.spec.kind, WatchKind::Event { .. })
    }

    /// Issues the next blocking read.
    fn read(&mut self, ctx: &mut Context<Self>) {
        let Phase::Watching(w) = &mut self.phase else {
            return;
        };
        let stream = match &w.stream {
            Some(s) => s.clone(),
            None => {
                let s: Rc<dyn WatchStream> = match (&self.spec.kind, &self.cloud) {
                    (WatchKind::Image { interval }, Some(cloud)) => {
                        Rc::new(ImagePoll::new(cloud.clone(), *interval))
                    }
                    (kind, _) => Rc::from(self.consul.watch(kind)),
                };
                w.stream = Some(s.clone());
                s
            }
        };
        let handle = ctx.spawn(stream.next().into_actor(self).then(|res, act, ctx| {
            if let Phase::Watching(w) = &mut act.phase {
                w.read = None;
            }
            act.on_read(res, ctx)
        }));
        if let Phase::Watching(w) = &mut self.phase {
            w.read = Some(handle);
        }
    }

    fn on_read(
        &mut self,
        res: Result<WatchRead, PortError>,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, ()> {
        let _span = self.span.clone().entered();
        let Phase::Watching(w) = &mut self.phase else {
            return Box::pin(fut::ready(()));
        };
        let read = match res {
            Ok(read) => read,
            // Every failure, an answer that does not decode included, keeps the stream: it
            // keeps the index and backs off (`WatchState`), where a restart with a fresh stream
            // would retry at once, as often as a broken answer comes.
            Err(e) => {
                self.on_error(&e);
                self.read(ctx);
                return Box::pin(fut::ready(()));
            }
        };
        if let Some(o) = w.outage.take() {
            info!(
                watch = %self.spec.name,
                down_for = ?o.since.elapsed(),
                failures = o.failures,
                "Consul answers again; watching resumes."
            );
        }
        let first = !w.memory.has_baseline();
        let fires = w
            .memory
            .observe_as(Naming::of(&self.spec.kind), read.index, &read.payload);
        if let Some(gap) = w.memory.take_gap() {
            let missed = gap.missed();
            warn!(
                watch = %self.spec.name,
                missed,
                last_seen_ltime = gap.after,
                oldest_listed_ltime = gap.next,
                "Consul dropped user events before this watch read them (its agent keeps the \
                 last 256); they will not run. User events are best effort: use a key watch for \
                 triggers that must not be missed."
            );
            self.metrics.events_missed(&self.spec.name, missed);
        }
        if first && self.is_event() {
            debug!(watch = %self.spec.name, index = read.index, "Baseline taken.");
            return self.replay_missed(read);
        }
        if first {
            debug!(watch = %self.spec.name, index = read.index, "Baseline taken.");
        }
        self.deliver(fires, read.index, ctx)
    }

    fn on_error(&mut self, e: &PortError) {
        self.metrics.error("consul", e.label());
        let watch = &self.spec.name;
        let Phase::Watching(w) = &mut self.phase else {
            return;
        };
        match &mut w.outage {
            Some(o) if o.kind == e.kind => {
                o.failures += 1;
                debug!(%watch, error = %e, failures = o.failures, "Still failing.");
                return;
            }
            Some(o) => {
                o.failures += 1;
                warn!(
                    %watch,
                    error = %e,
                    kind = e.label(),
                    failures = o.failures,
                    since = ?o.since.elapsed(),
                    "Consul's failure changed; retrying with backoff.",
                );
                o.kind = e.kind;
                return;
            }
            None => {}
        }
        w.outage = Some(Outage {
            since: tokio::time::Instant::now(),
            kind: e.kind,
            failures: 1,
        });
        match e.kind {
            ErrorKind::Denied => {
                error!(
                    %watch,
                    error = %e,
                    "Consul refuses the ACL token for this watch's query; check the token and its policy. Retrying with backoff.",
                )
            }
            ErrorKind::Rejected => {
                error!(
                    %watch,
                    error = %e,
                    "Consul refuses this watch's query; check the watch's parameters. Retrying with backoff.",
                )
            }
            ErrorKind::Decode => {
                error!(
                    %watch,
                    error = %e,
                    "Consul's answer is not what this watch reads (a proxy in the way?); retrying with backoff.",
                )
            }
            _ => warn!(%watch, error = %e, kind = e.label(), "Lost Consul; retrying with backoff."),
        }
    }

    /// Sends `fires` now, or after the debounce quiet time; then reads on.
    fn deliver(
        &mut self,
        fires: Vec<Fire>,
        index: u64,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, ()> {
        if fires.is_empty() {
            self.read(ctx);
            return Box::pin(fut::ready(()));
        }
        if let Some(quiet) = self.spec.debounce {
            let is_event = self.is_event();
            let Phase::Watching(w) = &mut self.phase else {
                return Box::pin(fut::ready(()));
            };
            let mut waiting = match w.debounced.take() {
                Some(d) => {
                    ctx.cancel_future(d.timer);
                    d.fires
                }
                None => Vec::new(),
            };
            // Events each stay a trigger of their own; other watches keep only the latest state.
            if !is_event {
                waiting.clear();
            }
            waiting.extend(fires.into_iter().map(|f| (f, index)));
            let timer = ctx.run_later(quiet, |act, ctx| {
                let Phase::Watching(w) = &mut act.phase else {
                    return;
                };
                if let Some(d) = w.debounced.take() {
                    ctx.spawn(act.send_all(d.fires).map(|_, _, _| ()));
                }
            });
            w.debounced = Some(Debounced {
                fires: waiting,
                timer,
            });
            self.read(ctx);
            return Box::pin(fut::ready(()));
        }
        let batch = fires.into_iter().map(|f| (f, index)).collect();
        Box::pin(self.send_all(batch).map(|_, act, ctx| act.read(ctx)))
    }

    /// Sends every fire to the Dispatcher, one message per action, awaiting each.
    fn send_all(&self, fires: Vec<(Fire, u64)>) -> impl ActorFuture<Self, Output = ()> {
        let dispatcher = self.dispatcher.clone();
        let watch = self.spec.name.clone();
        let actions = self.spec.actions.clone();
        let span = self.span.clone();
        let metrics = self.metrics.clone();
        fut::wrap_future(
            async move {
            for (fire, index) in fires {
                info!(%watch, trigger = %fire.trigger_id, index, "Watch fired.");
                metrics.watch_fired(&watch);
                for action in &actions {
                    let msg = WatchFired(Trigger {
                        watch: watch.clone(),
                        action: action.clone(),
                        trigger_id: fire.trigger_id.clone(),
                        position: fire.position,
                        index,
                        payload: fire.payload.clone(),
                    });
                    if let Err(e) = dispatcher.send(msg).await {
                        warn!(
                            %watch,
                            %action,
                            error = %e,
                            "Dispatcher unavailable; fire dropped (the rollout's timer catches up).",
                        );
                    }
                }
            }
        }
            .instrument(span),
        )
    }

    /// On start, an event watch fires the events that arrived while every replica was down
    /// (see `watch_plan::events_to_replay`); the receipts tell which those are.
    fn replay_missed(&mut self, read: WatchRead) -> ResponseActFuture<Self, ()> {
        let consul = self.consul.clone();
        let prefixes: Vec<String> = self
            .spec
            .actions
            .iter()
            .map(|a| self.keys.receipts(a))
            .collect();
        let watch = self.spec.name.clone();
        let lookup = async move {
            let mut receipted = HashSet::new();
            for prefix in prefixes {
                match consul.kv_list(&prefix).await {
                    Ok(list) => receipted.extend(
                        list.value
                            .into_iter()
                            .filter_map(|e| e.key.rsplit('/').next().map(str::to_owned)),
                    ),
                    Err(e) => {
                        warn!(
                            %watch,
                            error = %e,
                            "Could not read receipts; not replaying missed events.",
                        )
                    }
                }
            }
            receipted
        };
        let index = read.index;
        Box::pin(
            fut::wrap_future(lookup).then(move |receipted, act: &mut Self, ctx| {
                let missed = watch_plan::events_to_replay(&read.payload, &receipted);
                if !missed.is_empty() {
                    info!(
                        watch = %act.spec.name,
                        count = missed.len(),
                        "Replaying events that arrived while no replica was up.",
                    );
                }
                act.deliver(missed, index, ctx)
            }),
        )
    }
}

impl Actor for Watcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        info!(watch = %self.spec.name, kind = ?self.spec.kind, "Watching.");
        self.read(ctx);
    }
}

impl Supervised for Watcher {
    /// A restarted Watcher takes a fresh baseline and fires nothing for it.
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        if let Phase::Watching(_) = self.phase {
            warn!(watch = %self.spec.name, "Watcher restarting from a fresh baseline.");
            // The restart dropped the read and the timer; their handles go with the rest.
            self.phase = Phase::Watching(Box::default());
        }
    }
}

crate::fault::fail_handler!(Watcher, "watcher");

impl Handler<Shutdown> for Watcher {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Context<Self>) {
        let _span = self.span.clone().entered();
        if let Phase::Watching(mut w) = std::mem::replace(&mut self.phase, Phase::Stopped) {
            w.cancel(ctx);
        }
    }
}
