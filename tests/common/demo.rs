//! Shared by the tests that run `rehydrator demo` (tests/cli_demo.rs, tests/dashboard.rs):
//! reading what it announces about its replica processes.
#![allow(clippy::unwrap_used)]

/// The replica PIDs the demo announced ("replica demo-1 started (pid 1234), ...").
pub fn replica_pids(stdout: &str) -> Vec<u32> {
    stdout
        .lines()
        .filter(|l| l.starts_with("replica demo-"))
        .filter_map(|l| l.split("(pid ").nth(1))
        .filter_map(|rest| rest.split(')').next())
        .map(|pid| pid.parse().unwrap())
        .collect()
}

/// A process that exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}
