//! The `exec` executor: runs a command with the trigger as JSON on stdin, like `consul watch`'s
//! script handler. Exit status 0 is success; past the timeout the process is killed.

use std::collections::HashMap;
use std::process::Stdio;

use actix::prelude::*;
use futures_util::future::{AbortHandle, Abortable};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info_span, Instrument};

use super::{Abort, ExecError, Run};
use crate::receipt::Outcome;

/// How much of a failing command's stderr a receipt keeps, in characters.
const STDERR_TAIL: usize = 2048;
/// How many bytes of stderr are held while the command runs: enough for `STDERR_TAIL`
/// characters of any width, however much the command writes.
const STDERR_KEEP: usize = 4 * STDERR_TAIL;

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

/// Reads a stream to its end and keeps only its last `keep` bytes, so a command that floods
/// stderr costs a few KiB, not what it wrote.
async fn read_tail(mut from: impl AsyncRead + Unpin, keep: usize) -> std::io::Result<Vec<u8>> {
    let mut tail = Vec::with_capacity(2 * keep);
    let mut chunk = vec![0u8; keep.clamp(1, 64 * 1024)];
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > 2 * keep {
            tail.drain(..tail.len() - keep);
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    Ok(tail)
}

/// The last `chars` characters of a byte tail that may start inside a UTF-8 sequence.
fn text_tail(bytes: &[u8], chars: usize) -> String {
    // Continuation bytes (0b10xx_xxxx) at the front belong to a character cut off by the tail.
    let start = bytes
        .iter()
        .position(|b| b & 0xC0 != 0x80)
        .unwrap_or(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let skip = text.chars().count().saturating_sub(chars);
    text.chars()
        .skip(skip)
        .collect::<String>()
        .trim()
        .to_owned()
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
    let stdin = child.stdin.take();
    let stderr = child.stderr.take();
    // Feed stdin and drain stderr together: a command that writes before it reads must not
    // block on a full pipe while we block on its stdin.
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its input is fine; a broken pipe is not a failure.
            let _ = stdin.write_all(&input).await;
        }
    };
    let drain = async move {
        match stderr {
            Some(err) => read_tail(err, STDERR_KEEP).await.unwrap_or_default(),
            None => Vec::new(),
        }
    };
    let ((), tail, status) = tokio::join!(feed, drain, child.wait());
    let status = status.map_err(|e| ExecError::Spawn(format!("{program}: {e}")))?;
    if status.success() {
        Ok(Outcome::Succeeded("exit 0".into()))
    } else {
        Err(ExecError::Exit {
            status: status.to_string(),
            code: status.code(),
            stderr: text_tail(&tail, STDERR_TAIL),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    /// Peak resident memory of this process so far, in KiB.
    fn peak_rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    #[actix_rt::test]
    async fn a_command_flooding_stderr_costs_a_tail_not_what_it_wrote() {
        let before = peak_rss_kib();
        // 256 MiB to stderr, then the line an operator needs, then a failing exit.
        let run = run_command(
            sh("head -c 268435456 /dev/zero >&2; echo 'disk full on /var' >&2; exit 3"),
            b"{}".to_vec(),
        );
        let out = tokio::time::timeout(std::time::Duration::from_secs(60), run)
            .await
            .expect("bounded");
        let grew_mib = peak_rss_kib().saturating_sub(before) / 1024;
        match out {
            Err(ExecError::Exit { code, stderr, .. }) => {
                assert_eq!(code, Some(3));
                assert!(
                    stderr.ends_with("disk full on /var"),
                    "{:?}",
                    &stderr[stderr.len().saturating_sub(40)..]
                );
                assert!(stderr.chars().count() <= STDERR_TAIL, "{}", stderr.len());
            }
            other => panic!("expected a failed exit, got {other:?}"),
        }
        assert!(
            grew_mib < 32,
            "peak memory grew by {grew_mib} MiB for 256 MiB of stderr"
        );
    }

    #[actix_rt::test]
    async fn a_command_that_writes_before_it_reads_does_not_deadlock() {
        // 1 MiB to stderr before reading stdin: more than any pipe buffer holds.
        let run = run_command(
            sh("head -c 1048576 /dev/zero >&2; cat >/dev/null; echo done >&2; exit 1"),
            vec![b'x'; 1 << 20],
        );
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), run)
            .await
            .expect("no deadlock between stdin and stderr");
        match out {
            Err(ExecError::Exit { stderr, .. }) => assert!(stderr.ends_with("done")),
            other => panic!("expected a failed exit, got {other:?}"),
        }
    }

    #[test]
    fn a_tail_cut_inside_a_character_starts_at_the_next_one() {
        let bytes = "ééé".as_bytes();
        // Cut after the first byte of the first 'é'.
        assert_eq!(text_tail(&bytes[1..], 10), "éé");
        assert_eq!(text_tail("abcdef".as_bytes(), 3), "def");
        assert_eq!(text_tail(b"", 3), "");
    }

    #[actix_rt::test]
    async fn success_is_exit_zero() {
        let out = run_command(sh("cat >/dev/null; echo noise >&2"), b"{}".to_vec()).await;
        assert!(matches!(out, Ok(Outcome::Succeeded(_))), "{out:?}");
    }
}
