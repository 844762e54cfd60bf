//! An agent's command line and the configuration files beside it (ACL tokens go in owner-only
//! files, never in arguments).

use super::*;

/// A server agent's arguments.
pub fn server_args(
    record: &Record,
    data_dir: &Path,
    join: &[u16],
    bootstrap_expect: Option<usize>,
) -> Vec<String> {
    let mut args = vec![
        "agent".to_owned(),
        "-server".to_owned(),
        format!("-node={}", record.id),
        format!("-node-meta=image:{}", record.image),
        format!("-server-port={}", record.ports.server),
        // Servers join the WAN pool on a port of their own; one datacenter needs none.
        "-serf-wan-port=-1".to_owned(),
    ];
    if let Some(n) = bootstrap_expect {
        args.push(format!("-bootstrap-expect={n}"));
    }
    args.extend(common_args(record, data_dir, join));
    args
}

/// The client agent's arguments.
pub fn client_args(record: &Record, data_dir: &Path, join: &[u16]) -> Vec<String> {
    let mut args = vec!["agent".to_owned(), format!("-node={}", record.id)];
    args.extend(common_args(record, data_dir, join));
    args
}

pub(super) fn common_args(record: &Record, data_dir: &Path, join: &[u16]) -> Vec<String> {
    let mut args = vec![
        "-bind=127.0.0.1".to_owned(),
        "-advertise=127.0.0.1".to_owned(),
        "-client=127.0.0.1".to_owned(),
        format!("-data-dir={}", data_dir.display()),
        format!("-http-port={}", record.ports.http),
        format!("-serf-lan-port={}", record.ports.serf_lan),
        // Every agent shares 127.0.0.1: the fixed default ports would collide.
        "-dns-port=-1".to_owned(),
        "-grpc-port=-1".to_owned(),
        // Consul's default of 30s between join attempts would stall a bootstrap whose peers
        // start a moment later.
        "-retry-interval=1s".to_owned(),
        // The HCL (which may hold ACL tokens) is in files only this user reads, never in the
        // arguments every user on the machine sees: see `write_agent_config`.
        format!("-config-dir={}", config_dir(data_dir).display()),
    ];
    args.extend(join.iter().map(|p| format!("-retry-join=127.0.0.1:{p}")));
    args
}

/// An agent's configuration folder, beside its data folder.
pub(super) fn config_dir(data_dir: &Path) -> PathBuf {
    data_dir.with_file_name("config")
}

/// Writes [`DEFAULT_HCL`] and each `agent_hcl` fragment as a file of its own (Consul reads
/// them in name order and merges them as it would `-hcl` flags), owner-only.
pub(super) fn write_agent_config(data_dir: &Path, hcl: &[String]) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let dir = config_dir(data_dir);
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    for (i, text) in std::iter::once(DEFAULT_HCL)
        .chain(hcl.iter().map(String::as_str))
        .enumerate()
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(format!("{i:02}.hcl")))?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
    }
    Ok(())
}
