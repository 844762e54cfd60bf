//! The `http` executor: POSTs the trigger as JSON to a URL, like `consul watch`'s http
//! handler. A 2xx answer is success.

use std::collections::HashMap;
use std::rc::Rc;

use actix::prelude::*;
use futures_util::future::{AbortHandle, Abortable};
use tracing::Instrument;

use super::{Abort, ExecError, Run};
use crate::ports::WebhookPort;
use crate::receipt::Outcome;
use rehydrator_config::SecretUrl;

pub struct Http {
    url: SecretUrl,
    port: Rc<dyn WebhookPort>,
    running: HashMap<String, AbortHandle>,
}

impl Http {
    pub fn new(url: SecretUrl, port: Rc<dyn WebhookPort>) -> Self {
        Self {
            url,
            port,
            running: HashMap::new(),
        }
    }
}

impl Actor for Http {
    type Context = Context<Self>;
}

impl Supervised for Http {
    /// Requests in flight die with the old context; the Dispatcher requeues them.
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.running.clear();
    }
}

impl Handler<Run> for Http {
    type Result = ResponseActFuture<Self, Result<Outcome, ExecError>>;

    fn handle(&mut self, msg: Run, _ctx: &mut Context<Self>) -> Self::Result {
        let body = serde_json::to_value(&msg.trigger).unwrap_or_default();
        let trigger_id = msg.trigger.trigger_id.clone();
        let (handle, registration) = AbortHandle::new_pair();
        self.running.insert(trigger_id.clone(), handle);
        let span = tracing::info_span!(
            "http",
            actor = "http",
            action = %msg.trigger.action,
            trigger = %trigger_id,
        );
        let post = self
            .port
            .post_json(self.url.expose(), body, msg.timeout)
            .instrument(span);
        Box::pin(
            Abortable::new(post, registration)
                .into_actor(self)
                .map(move |res, act, _ctx| {
                    act.running.remove(&trigger_id);
                    match res {
                        Err(_aborted) => Err(ExecError::Aborted),
                        Ok(Err(e)) => Err(ExecError::Port(e.to_string())),
                        Ok(Ok(status)) if (200..300).contains(&status) => {
                            Ok(Outcome::Succeeded(format!("HTTP {status}")))
                        }
                        Ok(Ok(status)) => Err(ExecError::Http(status)),
                    }
                }),
        )
    }
}

crate::fault::fail_handler!(Http, "http");

impl Handler<Abort> for Http {
    type Result = ();

    fn handle(&mut self, msg: Abort, _ctx: &mut Context<Self>) {
        if let Some(h) = self.running.remove(&msg.trigger_id) {
            h.abort();
        }
    }
}
