//! `rehydrator doctor`'s checks: what would make a rollout (or the lifecycle guard) unsafe or
//! stuck, judged from facts read beforehand, each a [`Finding`] with its fix. The reading is
//! the command's; the judging here is pure, so each rule is tested on its own.
//!
//! - `consul`: reaching the cluster, versions and the leadership path, autopilot's
//!   configuration, the cluster's health, the ACL token's rights;
//! - `group`: the servers' Auto Scaling group.

pub mod consul;
pub mod group;
pub mod launch;
pub mod raft;

use serde::Serialize;

use crate::cloud::aws::DryRun;

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

/// The permissions finding: the reads the doctor made proved the Describe calls; EC2's
/// changing calls are asked with DryRun; what has no dry run (`unchecked` says what) cannot
/// be checked without acting.
pub fn permissions(dry: &[(&'static str, DryRun)], unchecked: &str) -> Finding {
    let denied: Vec<String> = dry
        .iter()
        .filter_map(|(action, answer)| match answer {
            DryRun::Denied(why) => Some(format!("{action} ({why})")),
            _ => None,
        })
        .collect();
    let unknown: Vec<String> = dry
        .iter()
        .filter_map(|(action, answer)| match answer {
            DryRun::Unknown(why) => Some(format!("{action}: {why}")),
            _ => None,
        })
        .collect();
    if !denied.is_empty() {
        not(
            "permissions",
            Level::Fail,
            format!("denied: {}", denied.join("; ")),
            "allow them in the task role, scoped as deploy/cloudformation.yaml does".into(),
        )
    } else if dry.is_empty() {
        ok(
            "permissions",
            format!("the Describe calls are allowed (read above); no server to dry-run EC2's calls on; {unchecked}"),
        )
    } else if !unknown.is_empty() {
        not(
            "permissions",
            Level::Warning,
            format!("EC2's DryRun did not say: {}", unknown.join("; ")),
            "check the task role against deploy/cloudformation.yaml".into(),
        )
    } else {
        ok(
            "permissions",
            format!(
                "allowed by EC2's DryRun: {}; the Describe calls too; {unchecked}",
                dry.iter().map(|(a, _)| *a).collect::<Vec<_>>().join(", ")
            ),
        )
    }
}
