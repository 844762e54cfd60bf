//! `rehydrator doctor`'s checks: what would make a rollout (or the lifecycle guard) unsafe or
//! stuck, judged from facts read beforehand, each a [`Finding`] with its fix. The reading is
//! the command's; the judging here is pure, so each rule is tested on its own.
//!
//! - `consul`: reaching the cluster, versions and the leadership path, autopilot's
//!   configuration, the cluster's health, the ACL token's rights;
//! - `group`: the servers' Auto Scaling group.

pub mod consul;
pub mod group;

use serde::Serialize;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Fail,
}

impl Level {
    pub fn mark(self) -> &'static str {
        match self {
            Level::Ok => "✓",
            Level::Warning => "!",
            Level::Fail => "✗",
        }
    }
}

/// One check's outcome, with the fix when it is not fine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

pub fn ok(check: &'static str, detail: String) -> Finding {
    Finding {
        check,
        level: Level::Ok,
        detail,
        fix: None,
    }
}

pub fn not(check: &'static str, level: Level, detail: String, fix: String) -> Finding {
    Finding {
        check,
        level,
        detail,
        fix: Some(fix),
    }
}
