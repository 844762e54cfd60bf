//! `rehydrator check-config` as a user runs it: every sample validates (or is refused, for the
//! bad ones) through the real binary, with the file and field named and a non-zero exit.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn check(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rehydrator"))
        .arg("check-config")
        .arg(file)
        .env_remove("CONSUL_HTTP_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn every_sample_through_the_binary() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        let out = check(&path);
        let bad = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("bad");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if bad {
            assert_eq!(out.status.code(), Some(2), "{}: {stderr}", path.display());
            assert!(
                stderr.contains(&path.display().to_string()),
                "file not named: {stderr}"
            );
        } else {
            assert!(out.status.success(), "{}: {stderr}", path.display());
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("[cluster]"), "{stdout}");
        }
    }
    assert!(seen >= 4);
}

#[test]
fn bad_sample_lists_every_error() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples/bad.toml");
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("watch[2].type: unknown watch type \"servce\""),
        "{stderr}"
    );
    assert!(stderr.contains("lock.session_ttl"), "{stderr}");
    assert!(stderr.contains("14 error(s)"), "{stderr}");
}

#[test]
fn config_flag_is_taken_like_every_other_command_and_a_file_is_required() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples/full.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_rehydrator"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("[cluster]"));
    let out = Command::new(env!("CARGO_BIN_EXE_rehydrator"))
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("name the file"));
}

#[test]
fn token_never_printed() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples/full.toml");
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        !stdout.contains("00000000-1111-2222-3333-444444444444"),
        "{stdout}"
    );
    assert!(stdout.contains("token = \"***\""), "{stdout}");
}

#[test]
fn missing_file_is_named() {
    let out = check(Path::new("/nonexistent/rehydrator.toml"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/rehydrator.toml: cannot read"),
        "{stderr}"
    );
}

#[test]
fn the_notify_token_is_masked_and_a_window_error_names_its_field() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    let out = Command::new(env!("CARGO_BIN_EXE_rehydrator"))
        .arg("check-config")
        .arg(samples.join("triggers.toml"))
        .env("REHYDRATOR_NOTIFY_TOKEN", "n0tify-s3cret-t0ken")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(!stdout.contains("n0tify-s3cret-t0ken"), "{stdout}");
    assert!(!stderr.contains("n0tify-s3cret-t0ken"), "{stderr}");
    assert!(stdout.contains("[notify]"), "{stdout}");
    assert!(stdout.contains("token = \"***\""), "{stdout}");

    let out = check(&samples.join("bad-triggers.toml"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("rollout.windows[1].time_zone: unknown time zone \"Europe/Berln\""),
        "{stderr}"
    );
}

#[test]
fn the_status_token_is_masked_and_one_source_only() {
    let dir = std::env::temp_dir().join(format!("rehydrator-cc-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |config: &str, env: Option<&str>| {
        let path = dir.join("r.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rehydrator"));
        cmd.arg("check-config").arg(&path);
        if let Some(token) = env {
            cmd.env("REHYDRATOR_STATUS_TOKEN", token);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let base = "[cluster]\nname = \"x\"\n[status]\nlisten = \"127.0.0.1:9090\"\n";
    let (code, stdout, stderr) = run(base, Some("st4tus-s3cret"));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("token = \"***\""), "{stdout}");
    assert!(!stdout.contains("st4tus-s3cret") && !stderr.contains("st4tus-s3cret"));

    let both = format!("{base}token_file = \"/run/secrets/status\"\n");
    let (code, _, stderr) = run(&both, Some("st4tus-s3cret"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("status.token_file: give either REHYDRATOR_STATUS_TOKEN or a token file"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
