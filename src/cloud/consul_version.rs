//! What version a `consul` binary is, asked once per binary (`consul version -format=json`,
//! which every release from 1.8 answers), and the agent flags that differ by version. The
//! process backend starts agents from whatever binary an image names, from Consul 1.8 to today,
//! and must pass each only the flags it knows: 1.8 refuses to start on a flag it lacks.
//!
//! | flag or behaviour | since | what the process backend does |
//! |---|---|---|
//! | `-grpc-tls-port` | 1.14 | passes `-grpc-tls-port=-1` only from 1.14 (older agents have no gRPC TLS listener to move) |

use std::fmt;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `consul version` may take: it prints and exits at once, so a binary that does not
/// is not a consul.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of its answer that is read.
const MAX_ANSWER: u64 = 64 * 1024;

/// A Consul release, major.minor.patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// `1.8.7`, `v1.16.4`, `1.17.0-rc1`, `1.15.2+ent`: the numbers before any suffix.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().trim_start_matches('v');
        let core = text
            .split(|c: char| c == '-' || c == '+' || c.is_whitespace())
            .next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
        let v = Self::new(
            parts.next()??,
            parts.next()??,
            parts.next().unwrap_or(Some(0))?,
        );
        parts.next().is_none().then_some(v)
    }

    /// The flags an agent of this version needs beyond those every version from 1.8 knows.
    pub fn agent_flags(self) -> Vec<String> {
        let mut flags = Vec::new();
        if self >= Self::new(1, 14, 0) {
            // Every agent shares 127.0.0.1: the default gRPC TLS port would collide.
            flags.push("-grpc-tls-port=-1".to_owned());
        }
        flags
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why a binary's version could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{binary}: {reason}")]
pub struct VersionError {
    pub binary: String,
    pub reason: String,
}

/// Asks `binary` its version: `consul version -format=json`'s `Version`, or the `Consul vX.Y.Z`
/// first line of the plain answer. Bounded by [`ASK_TIMEOUT`] and [`MAX_ANSWER`].
pub fn ask(binary: &Path) -> Result<Version, VersionError> {
    let err = |reason: String| VersionError {
        binary: binary.display().to_string(),
        reason,
    };
    let mut child = Command::new(binary)
        .args(["version", "-format=json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| err(format!("cannot run it: {e}")))?;
    let deadline = Instant::now() + ASK_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err(format!(
                    "`version` did not answer within {ASK_TIMEOUT:?}"
                )));
            }
            Err(e) => return Err(err(e.to_string())),
        }
    };
    let mut out = String::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = stdout.take(MAX_ANSWER).read_to_string(&mut out);
    }
    if !status.success() {
        return Err(err(format!("`version` exited with {status}")));
    }
    parse_answer(&out).ok_or_else(|| {
        err(format!(
            "`version` answered no version: {:?}",
            out.chars().take(80).collect::<String>()
        ))
    })
}

/// The version in `consul version`'s answer, JSON or plain.
fn parse_answer(out: &str) -> Option<Version> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(out) {
        return v.get("Version")?.as_str().and_then(Version::parse);
    }
    let first = out.lines().next()?.trim();
    Version::parse(first.strip_prefix("Consul ")?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_with_and_without_their_suffixes() {
        assert_eq!(Version::parse("1.8.7"), Some(Version::new(1, 8, 7)));
        assert_eq!(Version::parse("v1.16.4"), Some(Version::new(1, 16, 4)));
        assert_eq!(Version::parse("1.17.0-rc1"), Some(Version::new(1, 17, 0)));
        assert_eq!(Version::parse("1.15.2+ent"), Some(Version::new(1, 15, 2)));
        for bad in ["", "one.two", "1", "1.2.3.4", "v"] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_answer_is_read_as_json_or_as_its_first_line() {
        let json = "{\n   \"Version\": \"1.8.7\",\n   \"Revision\": \"\"\n}";
        assert_eq!(parse_answer(json), Some(Version::new(1, 8, 7)));
        let plain = "Consul v1.16.4\nRevision 39f2c42a\n";
        assert_eq!(parse_answer(plain), Some(Version::new(1, 16, 4)));
        assert_eq!(parse_answer("usage: consul ..."), None);
    }

    #[test]
    fn the_grpc_tls_port_flag_goes_only_to_agents_that_know_it() {
        assert!(Version::new(1, 8, 7).agent_flags().is_empty());
        assert!(Version::new(1, 13, 9).agent_flags().is_empty());
        assert_eq!(Version::new(1, 14, 0).agent_flags(), ["-grpc-tls-port=-1"]);
    }
}
