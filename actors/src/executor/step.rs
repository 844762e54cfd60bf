//! The rollout's executors, SpinUp and SpinDown: one actor type started twice, with `Which`
//! saying which decision it takes (the two differ only in that; see `rollout::run`). Each run
//! fetches a fresh snapshot and takes at most one safe step, under the shared `step` lock.

use std::collections::HashMap;
use std::rc::Rc;

use actix::prelude::*;
use futures_util::future::{AbortHandle, Abortable};
use tracing::Instrument;

use super::{Abort, ExecError, Run};
use crate::metrics::Metrics;
use crate::receipt::Outcome;
use crate::rollout::{self, RolloutEnv, Which};

pub struct StepExecutor {
    which: Which,
    env: Rc<RolloutEnv>,
    running: HashMap<String, AbortHandle>,
    metrics: Metrics,
}

impl StepExecutor {
    pub fn new(which: Which, env: Rc<RolloutEnv>, metrics: Metrics) -> Self {
        Self {
            which,
            env,
            running: HashMap::new(),
            metrics,
        }
    }

    fn name(&self) -> &'static str {
        match self.which {
            Which::SpinUp => "spin_up",
            Which::SpinDown => "spin_down",
        }
    }
}

impl Actor for StepExecutor {
    type Context = Context<Self>;
}

impl Supervised for StepExecutor {
    /// A run dies with the old context; the Dispatcher requeues it and the next run decides
    /// afresh from the live state.
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.running.clear();
    }
}

impl Handler<Run> for StepExecutor {
    type Result = ResponseActFuture<Self, Result<Outcome, ExecError>>;

    fn handle(&mut self, msg: Run, _ctx: &mut Context<Self>) -> Self::Result {
        let trigger_id = msg.trigger.trigger_id.clone();
        let span = tracing::info_span!("step", actor = self.name(), trigger = %trigger_id);
        let (handle, registration) = AbortHandle::new_pair();
        self.running.insert(trigger_id.clone(), handle);
        let timeout = msg.timeout;
        let work = Abortable::new(
            tokio::time::timeout(
                timeout,
                rollout::run(
                    self.env.clone(),
                    self.which,
                    msg.trigger,
                    self.metrics.clone(),
                ),
            ),
            registration,
        )
        .instrument(span);
        Box::pin(work.into_actor(self).map(move |res, act, _ctx| {
            act.running.remove(&trigger_id);
            match res {
                Err(_aborted) => Err(ExecError::Aborted),
                Ok(Err(_elapsed)) => Err(ExecError::Timeout(timeout)),
                Ok(Ok(out)) => out,
            }
        }))
    }
}

impl Handler<Abort> for StepExecutor {
    type Result = ();

    fn handle(&mut self, msg: Abort, _ctx: &mut Context<Self>) {
        if let Some(h) = self.running.remove(&msg.trigger_id) {
            h.abort();
        }
    }
}

crate::fault::fail_handler!(StepExecutor, "step");
