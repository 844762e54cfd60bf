//! Executors: the actors that do an action's work for one trigger and answer with its
//! outcome. The Dispatcher runs them only while holding the action's lock; `exec` and `http`
//! are the general ones, the rollout's SpinUp and SpinDown come with the rollout.

use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use crate::ports::Fence;
use crate::receipt::Outcome;

pub mod exec;
pub mod http;
pub mod step;

/// What an executor is handed: the trigger, as `consul watch` would hand it to a handler.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trigger {
    pub watch: String,
    pub action: String,
    pub trigger_id: String,
    /// Where the trigger stands among its watch's triggers (see `watch_plan::Fire`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    pub index: u64,
    pub payload: serde_json::Value,
}

/// Do the action for `trigger`, giving up after `timeout`.
#[derive(Message)]
#[rtype(result = "Result<Outcome, ExecError>")]
pub struct Run {
    pub trigger: Trigger,
    pub timeout: Duration,
    /// The lock the run holds: what it records in Consul is written only while it still
    /// does (the rollout's steps; `exec` and `http` record nothing).
    pub fence: Fence,
}

/// Stop the run for `trigger_id` if one is going (its lock was lost, or the replica stops).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Abort {
    pub trigger_id: String,
}

/// Why a run did not succeed. Every kind is retried with backoff by the Dispatcher.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("could not start: {0}")]
    Spawn(String),
    #[error("exited with {status}: {stderr}")]
    Exit {
        status: String,
        /// The exit code, if the command exited (not killed by a signal).
        code: Option<i32>,
        stderr: String,
    },
    #[error("answered HTTP {0}")]
    Http(u16),
    #[error("{0}")]
    Port(String),
    /// The rollout record is there but does not decode (invalid JSON, wrong types): no step
    /// is taken until it is repaired.
    #[error("{0}")]
    Record(String),
    #[error("aborted")]
    Aborted,
    /// The run's lock was no longer this replica's when it went to record what it did (its
    /// session ended: frozen past the TTL, cut off from its agent). Not the action failing:
    /// the replica that holds the lock now decides, so this one never records a receipt.
    #[error("{0}")]
    LockLost(String),
}

/// The exit status with which an `exec` command says "this trigger is not for me": sysexits'
/// EX_DATAERR. It ends the job with a failed receipt at once instead of retrying.
pub const EXIT_REJECTED: i32 = 65;

impl ExecError {
    /// Whether retrying cannot help: the action rejected this trigger (an exec command exiting
    /// with `EXIT_REJECTED`, a webhook answering 4xx other than 408 and 429). The Dispatcher
    /// then writes a failed receipt saying why, rather than retrying into a loop.
    pub fn is_final(&self) -> bool {
        match self {
            ExecError::Exit { code, .. } => *code == Some(EXIT_REJECTED),
            ExecError::Http(status) => {
                (400..500).contains(status) && *status != 408 && *status != 429
            }
            // Retrying reads the same bytes; the job ends with a failed receipt saying so.
            ExecError::Record(_) => true,
            _ => false,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ExecError::Timeout(_) => "timeout",
            ExecError::Spawn(_) => "spawn",
            ExecError::Exit { .. } => "exit",
            ExecError::Http(_) => "http_status",
            ExecError::Port(_) => "port",
            ExecError::Record(_) => "record",
            ExecError::Aborted => "aborted",
            ExecError::LockLost(_) => "lock_lost",
        }
    }
}
