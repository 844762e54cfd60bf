//! The simulated datacenter's state behind one lock, with one Raft index for every write.
//!
//! Handlers lock, read or write, and unlock without awaiting; a write takes `next_index()` for
//! its ModifyIndex and then `notify()`s what it changed, which wakes the blocking queries that
//! read it. Timers (session TTLs, elections, boots) run through `Sim::after`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::cluster::model::Cluster;
use crate::config::SimConfig;
use crate::store::{
    catalog::Catalog, event::Events, kv::KvStore, session::Sessions, ttl::TtlChecks,
};
use crate::watch::{Change, Waiters};

/// Everything the simulated datacenter knows.
pub struct State {
    pub config: SimConfig,
    /// The Raft index: bumped by every write, stamped on what it wrote.
    pub index: u64,
    pub kv: KvStore,
    pub sessions: Sessions,
    pub events: Events,
    pub catalog: Catalog,
    /// The HTTP agent's TTL checks (its services' checks are in `catalog`, on its node).
    pub ttl_checks: TtlChecks,
    pub cluster: Cluster,
    pub waiters: Waiters,
}

impl State {
    /// The index a write about to happen will carry.
    pub fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// Wakes the blocking queries that read what a write changed.
    pub fn notify(&mut self, change: Change) {
        self.waiters.wake(&change);
    }
}

/// A handle on the simulator, cheap to clone into handlers and timers.
#[derive(Clone)]
pub struct Sim {
    state: Arc<Mutex<State>>,
    /// Consul API (`/v1/...`) requests received, for `GET /sim/stats`. Outside the state's
    /// lock: the server counts every request, and a count must not contend with handlers.
    requests: Arc<AtomicU64>,
}

impl Sim {
    /// A datacenter as `config` describes it, before anything runs in it: no servers yet.
    /// `Sim::new` (in `cluster::lifecycle`) bootstraps it.
    pub(crate) fn empty(config: SimConfig) -> Self {
        let state = State {
            config,
            index: 1,
            kv: KvStore::default(),
            sessions: Sessions::default(),
            events: Events::default(),
            catalog: Catalog::default(),
            ttl_checks: TtlChecks::default(),
            cluster: Cluster::default(),
            waiters: Waiters::default(),
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            requests: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The state, locked. A handler that panicked mid-write cannot leave the lock poisoned
    /// for good: the simulator keeps serving, as the issue asks of bad input.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one Consul API request (the server calls it as each arrives).
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Consul API requests received since start.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Runs `f` on the state after `delay` of simulated time (scaled by `time_scale`).
    /// Must be called inside an actix/tokio local runtime (a handler, or `start`).
    pub fn after(&self, delay: Duration, f: impl FnOnce(&Sim, &mut State) + 'static) {
        let wall = self.lock().config.scaled(delay);
        self.after_wall(wall, f);
    }

    /// `after` for a caller that already holds the lock (`after` would lock it again).
    pub fn after_in(
        &self,
        st: &State,
        delay: Duration,
        f: impl FnOnce(&Sim, &mut State) + 'static,
    ) {
        self.after_wall(st.config.scaled(delay), f);
    }

    fn after_wall(&self, wall: Duration, f: impl FnOnce(&Sim, &mut State) + 'static) {
        let sim = self.clone();
        actix_rt::spawn(async move {
            tokio::time::sleep(wall).await;
            let mut st = sim.lock();
            f(&sim, &mut st);
        });
    }
}
