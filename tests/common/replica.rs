//! One `rehydrator run` process as operators run a replica: the real binary, in its own process
//! group so that killing the group ends everything it started, as a container's end would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// One `rehydrator run` process; its process group is killed when this is dropped.
pub struct Replica {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Replica {
    pub fn spawn(dir: &Path, config: &Path, name: &str) -> Self {
        use std::os::unix::process::CommandExt;
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_rehydrator"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(["--replica", name])
            .env("RUST_LOG", "info,rehydrator_actors=debug")
            .env("NO_COLOR", "1")
            .env_remove("REHYDRATOR_REPLICA")
            .env_remove("REHYDRATOR_FAULT")
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            // Its own group, so that killing it ends everything it started, as a container's
            // end would.
            .process_group(0)
            .spawn()
            .unwrap();
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    /// The replica's PID (its process group's ID too).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL to the replica and everything it started.
    pub fn kill_group(&self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
    }

    /// Waits until `watches` of the replica's watches have taken their baselines: an event
    /// fired from then on is one each of them sees.
    pub async fn await_baselines(&self, watches: usize, bound: Duration) {
        super::eventually(
            &format!("replica {}'s watches to take their baselines", self.name),
            bound,
            || async {
                (self.log_text().matches("Baseline taken.").count() >= watches).then_some(())
            },
        )
        .await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "replica {} did not exit within {limit:?}",
                self.name
            );
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill_group();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
