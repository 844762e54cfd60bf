//! Fault injection: `Fail` makes any actor of the tree stop as a fatal error would, so that its
//! Supervisor restarts it and `restarting()` rebuilds its state. The supervision tests use it to
//! show that every actor type recovers while the system keeps working; a chaos drill can too.

use actix::prelude::*;

/// Stop now, as on a fatal error; the supervisor restarts the actor.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Fail {
    pub reason: String,
}

/// Implements `Handler<Fail>` for an actor: log, then stop.
macro_rules! fail_handler {
    ($actor:ty, $name:literal) => {
        impl actix::Handler<$crate::fault::Fail> for $actor {
            type Result = ();

            fn handle(&mut self, msg: $crate::fault::Fail, ctx: &mut Self::Context) {
                tracing::error!(
                    actor = $name,
                    reason = %msg.reason,
                    "Failing on request; the supervisor restarts it.",
                );
                actix::ActorContext::stop(ctx);
            }
        }
    };
}
pub(crate) use fail_handler;
