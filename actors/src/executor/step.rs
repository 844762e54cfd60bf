//! The rollout's executors, SpinUp and SpinDown, and the lifecycle guard: one actor type
//! started once per action, with `Duty` saying which decision it takes (see `rollout::run`
//! and `guard::run`). Each run fetches a fresh snapshot and takes at most one safe step, under
//! the shared `step` lock.

use std::collections::HashMap;
use std::rc::Rc;

use actix::prelude::*;
use futures_util::future::{AbortHandle, Abortable};
use tracing::Instrument;

use super::{Abort, ExecError, Run};
use crate::guard;
use crate::metrics::Metrics;
use crate::receipt::Outcome;
use crate::rollout::{self, RolloutEnv, Which};

/// What a step executor decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// A rollout step: SpinUp or SpinDown.
    Step(Which),
    /// The lifecycle guard: a group's held servers.
    Guard,
}

pub struct StepExecutor {
    duty: Duty,
    env: Rc<RolloutEnv>,
    running: HashMap<String, AbortHandle>,
    metrics: Metrics,
}

impl StepExecutor {
    pub fn new(duty: Duty, env: Rc<RolloutEnv>, metrics: Metrics) -> Self {
        Self {
            duty,
            env,
            running: HashMap::new(),
            metrics,
        }
    }

    fn name(&self) -> &'static str {
        match self.duty {
            Duty::Step(Which::SpinUp) => "spin_up",
            Duty::Step(Which::SpinDown) => "spin_down",
            Duty::Guard => "lifecycle_guard",
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
        let (env, duty, metrics) = (self.env.clone(), self.duty, self.metrics.clone());
        let decided = async move {
            match duty {
                Duty::Step(which) => {
                    rollout::run(env, which, msg.trigger, msg.fence, metrics).await
                }
                Duty::Guard => guard::run(&env, &msg.fence).await,
            }
        };
        let work =
            Abortable::new(tokio::time::timeout(timeout, decided), registration).instrument(span);
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
