//! The `exec` executor: runs a command with the trigger as JSON on stdin, like `consul watch`'s
//! script handler. Exit status 0 is success; past the timeout the process is killed.

use std::collections::HashMap;
use std::process::Stdio;

use actix::prelude::*;
use futures_util::future::{AbortHandle, Abortable};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info_span, Instrument};

use super::{Abort, ExecError, Run};
use crate::receipt::Outcome;

/// How much of a failing command's stderr a receipt keeps.
const STDERR_TAIL: usize = 2048;

pub struct Exec {
    command: Vec<String>,
    running: HashMap<String, AbortHandle>,
}

impl Exec {
    pub fn new(command: Vec<String>) -> Self {
        Self {
            command,
            running: HashMap::new(),
        }
    }
}

impl Actor for Exec {
    type Context = Context<Self>;
}

impl Supervised for Exec {
    /// Runs die with the old context (their commands are killed on drop) and the Dispatcher
    /// sees them fail and requeues them; their abort handles go too.
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.running.clear();
    }
}

async fn run_command(command: Vec<String>, input: Vec<u8>) -> Result<Outcome, ExecError> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| ExecError::Spawn("empty command".into()))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Dropping the run (timeout, abort, shutdown) must not leave the command running.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ExecError::Spawn(format!("{program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is fine; a broken pipe is not a failure.
        let _ = stdin.write_all(&input).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| ExecError::Spawn(format!("{program}: {e}")))?;
    if out.status.success() {
        Ok(Outcome::Succeeded("exit 0".into()))
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr
            .chars()
            .rev()
            .take(STDERR_TAIL)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(ExecError::Exit {
            status: out.status.to_string(),
            code: out.status.code(),
            stderr: tail.trim().to_owned(),
        })
    }
}

impl Handler<Run> for Exec {
    type Result = ResponseActFuture<Self, Result<Outcome, ExecError>>;

    fn handle(&mut self, msg: Run, _ctx: &mut Context<Self>) -> Self::Result {
        let input = serde_json::to_vec(&msg.trigger).unwrap_or_default();
        let trigger_id = msg.trigger.trigger_id.clone();
        let span =
            info_span!("exec", actor = "exec", action = %msg.trigger.action, trigger = %trigger_id);
        let (handle, registration) = AbortHandle::new_pair();
        self.running.insert(trigger_id.clone(), handle);
        let timeout = msg.timeout;
        let work = Abortable::new(
            tokio::time::timeout(timeout, run_command(self.command.clone(), input)),
            registration,
        )
        .instrument(span);
        Box::pin(work.into_actor(self).map(move |res, act, _ctx| {
            act.running.remove(&trigger_id);
            let out = match res {
                Err(_aborted) => Err(ExecError::Aborted),
                Ok(Err(_elapsed)) => Err(ExecError::Timeout(timeout)),
                Ok(Ok(out)) => out,
            };
            debug!(trigger = %trigger_id, ok = out.is_ok(), "Command finished.");
            out
        }))
    }
}

crate::fault::fail_handler!(Exec, "exec");

impl Handler<Abort> for Exec {
    type Result = ();

    fn handle(&mut self, msg: Abort, _ctx: &mut Context<Self>) {
        if let Some(h) = self.running.remove(&msg.trigger_id) {
            h.abort();
        }
    }
}
