//! Rollout notifications: `[notify] url` is POSTed a JSON document when a rollout starts, at
//! each step it takes (launch, leadership transfer, retirement), when it stops for safety and
//! when it completes. Only the replica taking the step sends it (it holds the `step` lock), so
//! each goes once.
//!
//! A notification never holds up or fails the rollout: `send` queues it and returns; one task
//! posts the queue in order, each post bounded by a timeout, and a failed post is logged and
//! counted, not retried (the rollout record stays the full account). The bearer token is held
//! as a `Secret` and goes only into the request's header.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use rehydrator_config::{Secret, SecretUrl};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::plan::Rollout;
use crate::ports::WebhookPort;

/// How long one post may take.
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// What happened, as the `event` field names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Started,
    Step,
    Stopped,
    Completed,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Started => "rollout.started",
            Event::Step => "rollout.step",
            Event::Stopped => "rollout.stopped",
            Event::Completed => "rollout.completed",
        }
    }
}

/// The document posted (its schema is in the README).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    pub event: &'static str,
    pub cluster: String,
    pub rollout_id: String,
    pub target_image: String,
    /// The step taken (`rollout.step` only): `kind` is `launch`, `leadership_transfer` or
    /// `retire`, with the machine, node or peers it concerned.
    pub step: Option<Value>,
    /// Why the rollout stopped (`rollout.stopped` only).
    pub reason: Option<String>,
    /// When, RFC 3339 UTC.
    pub at: String,
}

/// Counts a failed post under a kind (`timeout`, `unreachable`, `http_status`, ...).
pub type FailureHook = Rc<dyn Fn(&'static str)>;

/// Sends the rollout's notifications, or nothing when `[notify] url` is not set.
pub struct Notifier {
    target: Option<(SecretUrl, Option<Secret>)>,
    cluster: String,
    port: Rc<dyn WebhookPort>,
    timeout: Duration,
    queue: RefCell<Option<mpsc::UnboundedSender<Notification>>>,
    failures: Rc<Cell<u64>>,
    on_failure: Option<FailureHook>,
}

impl Notifier {
    /// A notifier posting to `url` (none: a notifier that sends nothing).
    pub fn new(
        url: Option<SecretUrl>,
        token: Option<Secret>,
        cluster: &str,
        port: Rc<dyn WebhookPort>,
    ) -> Self {
        Self {
            target: url.map(|u| (u, token)),
            cluster: cluster.to_owned(),
            port,
            timeout: POST_TIMEOUT,
            queue: RefCell::new(None),
            failures: Rc::new(Cell::new(0)),
            on_failure: None,
        }
    }

    /// Sends nothing.
    pub fn off(port: Rc<dyn WebhookPort>) -> Self {
        Self::new(None, None, "", port)
    }

    /// Also reports each failed post to `hook` (the status endpoint's error counter).
    pub fn with_failure_hook(mut self, hook: FailureHook) -> Self {
        self.on_failure = Some(hook);
        self
    }

    /// Posts that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.get()
    }

    /// The notification for `event` about rollout `r`.
    pub fn notification(
        &self,
        event: Event,
        r: &Rollout,
        step: Option<Value>,
        reason: Option<String>,
    ) -> Notification {
        Notification {
            event: event.name(),
            cluster: self.cluster.clone(),
            rollout_id: r.id.clone(),
            target_image: r.target_image.clone(),
            step,
            reason,
            at: jiff::Timestamp::now().to_string(),
        }
    }

    /// Queues a notification for `event` about rollout `r` and returns at once.
    pub fn send(&self, event: Event, r: &Rollout, step: Option<Value>, reason: Option<String>) {
        if self.target.is_none() {
            return;
        }
        let n = self.notification(event, r, step, reason);
        let mut queue = self.queue.borrow_mut();
        let tx = queue.get_or_insert_with(|| self.start_sender());
        if let Err(e) = tx.send(n) {
            // The sender task is gone (its arbiter stopped): start another for the next one.
            warn!(
                event = e.0.event,
                "Notification dropped: the sender stopped."
            );
            *queue = None;
        }
    }

    /// The task that posts queued notifications one after another, in order.
    fn start_sender(&self) -> mpsc::UnboundedSender<Notification> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Notification>();
        let Some((url, token)) = self.target.clone() else {
            return tx;
        };
        let (port, timeout) = (self.port.clone(), self.timeout);
        let (failures, hook) = (self.failures.clone(), self.on_failure.clone());
        actix_rt::spawn(async move {
            while let Some(n) = rx.recv().await {
                let event = n.event;
                let body = serde_json::to_value(&n).unwrap_or(Value::Null);
                let post = port.post_json_bearer(
                    url.expose(),
                    body,
                    token.as_ref().map(Secret::expose),
                    timeout,
                );
                // The port bounds the request; this bounds a port that does not.
                let kind = match tokio::time::timeout(timeout + Duration::from_secs(1), post).await
                {
                    Ok(Ok(status)) if (200..300).contains(&status) => {
                        debug!(event, status, "Notification posted.");
                        continue;
                    }
                    Ok(Ok(status)) => {
                        warn!(
                            event,
                            status, "The notification webhook refused a notification."
                        );
                        "http_status"
                    }
                    Ok(Err(e)) => {
                        warn!(
                            event,
                            error = %e,
                            kind = e.label(),
                            "Could not post a notification.",
                        );
                        e.label()
                    }
                    Err(_) => {
                        warn!(event, ?timeout, "A notification post timed out.");
                        "timeout"
                    }
                };
                failures.set(failures.get() + 1);
                if let Some(hook) = &hook {
                    hook(kind);
                }
            }
        });
        tx
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ports::{ErrorKind, PortError, PortFuture};
    use serde_json::json;

    /// Records each post; answers `status`, or an error for status 0.
    #[derive(Default)]
    struct Recorder {
        posts: RefCell<Vec<(Value, Option<String>)>>,
        status: Cell<u16>,
    }

    impl WebhookPort for Rc<Recorder> {
        fn post_json(&self, url: &str, body: Value, timeout: Duration) -> PortFuture<u16> {
            self.post_json_bearer(url, body, None, timeout)
        }
        fn post_json_bearer(
            &self,
            _url: &str,
            body: Value,
            token: Option<&str>,
            _timeout: Duration,
        ) -> PortFuture<u16> {
            self.posts
                .borrow_mut()
                .push((body, token.map(str::to_owned)));
            let status = self.status.get();
            Box::pin(async move {
                if status == 0 {
                    Err(PortError::new(ErrorKind::Unreachable, "refused"))
                } else {
                    Ok(status)
                }
            })
        }
    }

    fn rollout() -> Rollout {
        Rollout::start("r1".into(), "ami-2", 0, 1)
    }

    async fn settle(rec: &Recorder, n: usize) {
        for _ in 0..100 {
            if rec.posts.borrow().len() >= n {
                break;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Every test here is bounded, so a notifier that never posts fails rather than hangs.
    async fn bounded(test: impl std::future::Future<Output = ()>) {
        tokio::time::timeout(Duration::from_secs(10), test)
            .await
            .expect("the test finished in time");
    }

    #[actix_rt::test]
    async fn posts_in_order_with_the_bearer_token_and_counts_failures() {
        bounded(posts_in_order()).await;
    }

    async fn posts_in_order() {
        let rec = Rc::new(Recorder::default());
        rec.status.set(204);
        let counted = Rc::new(Cell::new(0));
        let c = counted.clone();
        let n = Notifier::new(
            Some(SecretUrl::new("http://hook")),
            Some(Secret::new("t0ken")),
            "prod",
            Rc::new(rec.clone()),
        )
        .with_failure_hook(Rc::new(move |_| c.set(c.get() + 1)));
        let r = rollout();
        n.send(Event::Started, &r, None, None);
        n.send(
            Event::Step,
            &r,
            Some(json!({ "kind": "launch", "machine": "i-1" })),
            None,
        );
        settle(&rec, 2).await;
        {
            let posts = rec.posts.borrow();
            assert_eq!(posts.len(), 2);
            assert_eq!(posts[0].0["event"], "rollout.started");
            assert_eq!(posts[0].0["cluster"], "prod");
            assert_eq!(posts[0].0["rollout_id"], "r1");
            assert_eq!(posts[0].0["target_image"], "ami-2");
            assert_eq!(posts[1].0["step"]["kind"], "launch");
            assert_eq!(posts[0].1.as_deref(), Some("t0ken"));
        }
        assert_eq!(n.failures(), 0);
        rec.status.set(0);
        n.send(Event::Stopped, &r, None, Some("unsafe".into()));
        settle(&rec, 3).await;
        for _ in 0..100 {
            if n.failures() >= 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(rec.posts.borrow()[2].0["reason"], "unsafe");
        assert_eq!((n.failures(), counted.get()), (1, 1));
    }

    #[actix_rt::test]
    async fn without_a_url_nothing_is_sent() {
        bounded(nothing_sent()).await;
    }

    async fn nothing_sent() {
        let rec = Rc::new(Recorder::default());
        let n = Notifier::off(Rc::new(rec.clone()));
        n.send(Event::Started, &rollout(), None, None);
        tokio::task::yield_now().await;
        assert!(rec.posts.borrow().is_empty());
    }
}
