//! Every file in config/samples/ is loaded: `bad*.toml` must fail with the errors it was
//! written to show, every other sample must load.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rehydrator_config::{
    load_with_env, ActionKind, AlarmPattern, CloudSettings, Launch, WatchKind,
};

fn samples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name)
}

fn no_env() -> HashMap<String, String> {
    HashMap::new()
}

#[test]
fn every_sample_loads_or_fails_as_named() {
    let files = samples();
    assert!(files.len() >= 4, "samples missing: {files:?}");
    for f in files {
        let bad = f.file_name().unwrap().to_string_lossy().starts_with("bad");
        let result = load_with_env(&f, &no_env());
        match (bad, result) {
            (false, Err(e)) => panic!("{} should load:\n{e}", f.display()),
            (true, Ok(_)) => panic!("{} should be refused", f.display()),
            _ => {}
        }
    }
}

#[test]
fn bad_sample_reports_every_error_with_file_and_field() {
    let path = sample("bad.toml");
    let err = load_with_env(&path, &no_env()).unwrap_err();
    let text = err.to_string();
    let expected = [
        "cluster.name: is required",
        "cluster.desired_servers: must be a whole number",
        "lock.session_ttl: must be between 10s and 24h",
        "lock.lock_delay: invalid duration \"soon\"",
        "lock.check_ttl: must be 0s (off) or between 1s and lock.session_ttl",
        "cloud.type: unknown cloud type \"gcp\"",
        "status.listen: \"everywhere\" is not an address",
        "action.notify.command: is required for type \"exec\"",
        "action.hook.url: is not an http:// or https:// URL",
        "watch[1].name: \"a\" is already the name of watch[0]",
        "watch[1].key: does not apply to a watch of type \"keyprefix\"",
        "watch[1].prefix: is required",
        "watch[1].action: no action named \"missing\"",
        "watch[2].type: unknown watch type \"servce\" (expected one of \"key\", \"keyprefix\", \"services\", \"nodes\", \"service\", \"checks\", \"event\", \"schedule\", \"image\")",
    ];
    for e in expected {
        let line = format!("{}: {e}", path.display());
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(
        err.errors.len(),
        expected.len(),
        "unexpected extra errors:\n{text}"
    );
}

#[test]
fn misspelt_field_is_named() {
    let err = load_with_env(&sample("bad-unknown-field.toml"), &no_env()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("bad-unknown-field.toml"), "{text}");
    assert!(
        text.contains("bad-unknown-field.toml: cluster.desired_server: unknown field"),
        "{text}"
    );
    assert!(
        text.contains("expected one of `name`, `desired_servers`"),
        "{text}"
    );
}

#[test]
fn every_error_is_reported_in_one_pass_with_what_was_meant() {
    let path = sample("bad-all-at-once.toml");
    let text = load_with_env(&path, &no_env()).unwrap_err().to_string();
    let expected = [
        "cluster.desired_server: unknown field, expected one of `name`, `desired_servers`, \
         `service` (did you mean `desired_servers`?)",
        "lock.colour: unknown field",
        "lock.receipts_kept: invalid type: string \"many\"",
        "lock.session_ttl: must be between 10s and 24h",
        "watch[0].type: unknown watch type \"servce\"",
        "(did you mean \"service\"?)",
        "watch[0].action: no action named \"spin-upp\" (defined: \"spin-up\") (did you mean \
         \"spin-up\"?)",
    ];
    for e in expected {
        assert!(text.contains(e), "missing {e:?} in:\n{text}");
    }
    assert!(
        text.contains("6 error(s)") || text.lines().count() >= 6,
        "{text}"
    );
}

#[test]
fn full_sample_is_typed_as_written() {
    let s = load_with_env(&sample("full.toml"), &no_env()).unwrap();
    assert_eq!(s.cluster.desired_servers.get(), 5);
    assert_eq!(s.lock.session_ttl, Duration::from_secs(20));
    assert_eq!(s.lock.check_ttl, Duration::from_secs(4));
    assert_eq!(s.lock.receipt_timeout, Duration::from_secs(900));
    assert!(matches!(&s.cloud, CloudSettings::Ec2(a) if a.image_owners.len() == 2));
    assert_eq!(s.watches.len(), 7);
    assert_eq!(s.watches[0].actions, vec!["notify", "webhook"]);
    assert_eq!(s.watches[1].debounce, Some(Duration::from_secs(2)));
    assert!(matches!(
        &s.watches[5].kind,
        WatchKind::Service { passingonly: true, tag, .. } if tag == &["server"]
    ));
    assert_eq!(s.actions["webhook"].lock, "notify");
    assert_eq!(s.actions["notify"].lock, "notify");
    assert!(matches!(
        &s.actions["webhook"].kind,
        ActionKind::Http { url } if url.expose().starts_with("https://")
    ));
}

#[test]
fn defaults_are_documented_values() {
    let s = load_with_env(&sample("minimal.toml"), &no_env()).unwrap();
    assert_eq!(s.cluster.desired_servers.get(), 3);
    assert_eq!(s.cluster.service, "consul");
    assert_eq!(s.consul.address, "http://127.0.0.1:8500");
    assert!(s.consul.tls_verify);
    assert_eq!(s.lock.session_ttl, Duration::from_secs(15));
    assert_eq!(s.lock.lock_delay, Duration::from_secs(15));
    assert_eq!(s.lock.check_ttl, Duration::from_secs(5));
    assert_eq!(s.actions["notify"].timeout, Duration::from_secs(300));
    assert_eq!(
        s.status.listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9090")
    );
    assert!(matches!(s.cloud, CloudSettings::Sim { url: None }));
}

#[test]
fn environment_overrides_the_file_and_consul_variables_fill_defaults() {
    let env: HashMap<String, String> = [
        ("REHYDRATOR_LOCK__SESSION_TTL", "30s"),
        ("REHYDRATOR_CLUSTER__DESIRED_SERVERS", "5"),
        ("REHYDRATOR_LOG_FORMAT", "json"),
        ("CONSUL_HTTP_ADDR", "https://10.1.2.3:8501"),
        ("CONSUL_HTTP_TOKEN", "s3cr3t-token"),
        ("CONSUL_HTTP_SSL_VERIFY", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let s = load_with_env(&sample("minimal.toml"), &env).unwrap();
    assert_eq!(s.lock.session_ttl, Duration::from_secs(30));
    assert_eq!(s.cluster.desired_servers.get(), 5);
    assert_eq!(s.consul.address, "https://10.1.2.3:8501");
    assert!(!s.consul.tls_verify);
    assert_eq!(s.consul.token.as_ref().unwrap().expose(), "s3cr3t-token");
    // The effective configuration never shows the token.
    let shown = s.to_toml();
    assert!(!shown.contains("s3cr3t-token"), "{shown}");
    assert!(shown.contains("token = \"***\""), "{shown}");
    assert!(!format!("{s:?}").contains("s3cr3t-token"));
}

#[test]
fn effective_config_round_trips_through_the_loader() {
    let s = load_with_env(&sample("full.toml"), &no_env()).unwrap();
    let dir = std::env::temp_dir().join(format!("rehydrator-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let again = dir.join("effective.toml");
    // The masked token would be taken literally; drop it to compare the rest.
    let text = s.to_toml().replace("token = \"***\"\n", "");
    std::fs::write(&again, &text).unwrap();
    let back = load_with_env(&again, &no_env());
    std::fs::remove_dir_all(&dir).unwrap();
    let back = back.unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
    assert_eq!(back.to_toml(), text);
}

#[test]
fn rollout_sample_shares_the_step_lock_and_ticks() {
    let s = load_with_env(&sample("rollout.toml"), &no_env()).unwrap();
    let snapshots = s.rollout.snapshots.as_ref().expect("snapshots on");
    assert_eq!(
        snapshots.dest,
        rehydrator_config::SnapshotDest::Dir("/var/lib/rehydrator/snapshots".into())
    );
    assert_eq!(
        (
            snapshots.kept.get(),
            snapshots.required,
            snapshots.max_mib.get()
        ),
        (20, true, 512)
    );
    // The gate is shown commented out: the sample runs without a Prometheus.
    assert!(s.rollout.prometheus_gate.is_none());
    assert_eq!(s.actions["spin-up"].kind, ActionKind::SpinUp);
    assert_eq!(s.actions["spin-up"].lock, "step");
    assert_eq!(s.actions["spin-down"].lock, "step");
    assert_eq!(s.actions["spin-down"].timeout, Duration::from_secs(900));
    assert_eq!(s.rollout.mode, rehydrator_config::RolloutMode::Manual);
    assert_eq!(s.rollout.stable_timeout, Duration::from_secs(600));
    assert!(matches!(
        s.watches[2].kind,
        WatchKind::Schedule { every } if every == Duration::from_secs(30)
    ));
}

#[test]
fn ecs_sample_names_the_cluster_task_and_registration_timeout() {
    let s = load_with_env(&sample("ecs.toml"), &no_env()).unwrap();
    let CloudSettings::Ecs(aws) = &s.cloud else {
        panic!("ecs.toml is an ecs cloud: {:?}", s.cloud)
    };
    assert_eq!(aws.ecs_cluster.as_deref(), Some("consul"));
    assert_eq!(aws.task_definition.as_deref(), Some("consul-server:7"));
    assert_eq!(aws.registration_timeout, Some(Duration::from_secs(300)));
    assert_eq!(aws.image_owners, vec!["self"]);
    // The effective configuration shows the timeout as written and loads back the same.
    let shown = s.to_toml();
    assert!(shown.contains("registration_timeout = \"5m\""), "{shown}");

    // Without registration_timeout: ten minutes.
    let text = std::fs::read_to_string(sample("ecs.toml"))
        .unwrap()
        .replace("registration_timeout = \"5m\"\n", "");
    let dir = std::env::temp_dir().join(format!("rehydrator-config-ecs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ecs-default.toml");
    std::fs::write(&path, text).unwrap();
    let s = load_with_env(&path, &no_env());
    std::fs::remove_dir_all(&dir).unwrap();
    let CloudSettings::Ecs(aws) = s.unwrap().cloud else {
        panic!("still ecs")
    };
    assert_eq!(aws.registration_timeout, Some(Duration::from_secs(600)));
}

#[test]
fn the_samples_launch_from_a_template_or_through_a_group() {
    let s = load_with_env(&sample("ec2.toml"), &no_env()).unwrap();
    let CloudSettings::Ec2(aws) = &s.cloud else {
        panic!("ec2.toml is an ec2 cloud: {:?}", s.cloud)
    };
    assert_eq!(aws.launch, Launch::LaunchTemplate("consul-server".into()));

    let s = load_with_env(&sample("asg.toml"), &no_env()).unwrap();
    let CloudSettings::Ec2(aws) = &s.cloud else {
        panic!("asg.toml is an ec2 cloud: {:?}", s.cloud)
    };
    assert_eq!(
        aws.launch,
        Launch::AutoScalingGroup("consul-servers".into())
    );
    // The effective configuration names the group as written and loads back the same.
    let shown = s.to_toml();
    assert!(
        shown.contains("auto_scaling_group = \"consul-servers\""),
        "{shown}"
    );
    assert!(!shown.contains("launch_template"), "{shown}");

    assert_eq!(s.actions["guard"].kind, ActionKind::LifecycleGuard);
    assert_eq!(
        s.actions["guard"].lock, "step",
        "the guard never runs beside a rollout step"
    );

    // The guard without a group has no hooks to work: refused, naming the action.
    let text = std::fs::read_to_string(sample("ec2.toml")).unwrap()
        + "\n[action.guard]\ntype = \"lifecycle-guard\"\n";
    let dir = std::env::temp_dir().join(format!("rehydrator-config-guard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("guard.toml");
    std::fs::write(&path, text).unwrap();
    let err = load_with_env(&path, &no_env()).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        err.contains("action.guard.type: \"lifecycle-guard\" works an Auto Scaling group's"),
        "{err}"
    );

    let path = sample("bad-asg.toml");
    let err = load_with_env(&path, &no_env()).unwrap_err();
    let text = err.to_string();
    let line = format!(
        "{}: cloud.launch_template: leave it out with cloud.auto_scaling_group",
        path.display()
    );
    assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    assert_eq!(err.errors.len(), 1, "{text}");

    // Neither: the template is what is missing, and the group is named as the other way.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("auto_scaling_group = \"consul-servers\"\n", "")
        .replace("launch_template = \"consul-server\"\n", "");
    let dir = std::env::temp_dir().join(format!("rehydrator-config-asg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let neither = dir.join("neither.toml");
    std::fs::write(&neither, text).unwrap();
    let err = load_with_env(&neither, &no_env()).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        err.contains("cloud.launch_template: is required unless cloud.auto_scaling_group"),
        "{err}"
    );
}

#[test]
fn ecs_fields_are_required_for_ecs_and_refused_elsewhere() {
    let path = sample("bad-ecs.toml");
    let err = load_with_env(&path, &no_env()).unwrap_err();
    let text = err.to_string();
    let expected = [
        "cloud.ecs_cluster: is required for type \"ecs\"",
        "cloud.task_definition: is required for type \"ecs\"",
        "cloud.registration_timeout: invalid duration \"a while\"",
    ];
    for e in expected {
        let line = format!("{}: {e}", path.display());
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(err.errors.len(), expected.len(), "{text}");

    let path = sample("bad-ec2-ecs-fields.toml");
    let err = load_with_env(&path, &no_env()).unwrap_err();
    let text = err.to_string();
    for field in ["ecs_cluster", "task_definition", "registration_timeout"] {
        let line = format!(
            "{}: cloud.{field}: applies to type \"ecs\", not \"ec2\"",
            path.display()
        );
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(err.errors.len(), 3, "{text}");
}

#[test]
fn process_sample_names_the_binary_and_the_shared_data_dir() {
    let s = load_with_env(&sample("process.toml"), &no_env()).unwrap();
    let CloudSettings::Process(p) = &s.cloud else {
        panic!("process.toml is a process cloud: {:?}", s.cloud)
    };
    assert_eq!(p.consul_bin, PathBuf::from("/usr/local/bin/consul"));
    assert_eq!(p.data_dir, PathBuf::from("/tmp/rehydrator-laptop"));
    assert!(p
        .agent_hcl
        .as_ref()
        .unwrap()
        .expose()
        .contains("server_stabilization_time"));
    // The effective configuration says which cloud it is.
    assert!(
        s.to_toml().contains("type = \"process\""),
        "{}",
        s.to_toml()
    );

    // Without consul_bin in the file, CONSUL_BIN names the binary.
    let text = std::fs::read_to_string(sample("process.toml"))
        .unwrap()
        .replace("consul_bin = \"/usr/local/bin/consul\"\n", "");
    let dir =
        std::env::temp_dir().join(format!("rehydrator-config-process-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("process-env.toml");
    std::fs::write(&path, text).unwrap();
    let env = HashMap::from([("CONSUL_BIN".to_owned(), "/opt/consul/bin/consul".to_owned())]);
    let s = load_with_env(&path, &env).unwrap();
    let CloudSettings::Process(p) = &s.cloud else {
        panic!("still process")
    };
    assert_eq!(p.consul_bin, PathBuf::from("/opt/consul/bin/consul"));
    // Neither: the error names both ways to give it.
    let err = load_with_env(&path, &no_env()).unwrap_err().to_string();
    assert!(
        err.contains("cloud.consul_bin: is required for type \"process\"")
            && err.contains("CONSUL_BIN"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn process_fields_are_checked_for_process_and_refused_elsewhere() {
    let path = sample("bad-process.toml");
    let err = load_with_env(&path, &no_env()).unwrap_err();
    let text = err.to_string();
    let expected = [
        "cloud.consul_bin: is required for type \"process\"",
        "cloud.data_dir: \"relative/dir\" must be an absolute path",
        "cloud.launch_template: does not apply to type \"process\"",
    ];
    for e in expected {
        let line = format!("{}: {e}", path.display());
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(err.errors.len(), expected.len(), "{text}");

    // A process field under another cloud type is named, not silently ignored.
    let text = std::fs::read_to_string(sample("rollout.toml"))
        .unwrap()
        .replace("type = \"sim\"", "type = \"sim\"\ndata_dir = \"/tmp/x\"");
    let dir = std::env::temp_dir().join(format!(
        "rehydrator-config-process-elsewhere-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sim-with-data-dir.toml");
    std::fs::write(&path, text).unwrap();
    let err = load_with_env(&path, &no_env()).unwrap_err().to_string();
    assert!(
        err.contains("cloud.data_dir: applies to type \"process\", not \"sim\""),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn triggers_sample_types_windows_image_watch_and_notify() {
    use jiff::civil::{time, Weekday};
    let env: HashMap<String, String> = [(
        "REHYDRATOR_NOTIFY_TOKEN".to_owned(),
        "n0tify-s3cret".to_owned(),
    )]
    .into();
    let s = load_with_env(&sample("triggers.toml"), &env).unwrap();
    assert_eq!(s.rollout.windows.len(), 2);
    let w = &s.rollout.windows[0];
    assert_eq!(w.days.len(), 5);
    assert_eq!(w.days[0], Weekday::Monday);
    assert_eq!((w.start, w.end), (time(2, 0, 0, 0), time(5, 0, 0, 0)));
    assert_eq!(w.time_zone, "Europe/Berlin");
    assert_eq!(s.rollout.windows[1].days, vec![Weekday::Saturday]);
    assert!(matches!(
        s.watches[0].kind,
        WatchKind::Image { interval } if interval == Duration::from_secs(120)
    ));
    let request = s.watches.iter().find(|w| w.name == "request").unwrap();
    assert!(request.request, "the request key asks for a rollout");
    assert!(
        !s.watches[0].request,
        "an image watch asks without the flag"
    );
    assert_eq!(
        s.notify.url.as_ref().map(|u| u.expose()),
        Some("https://hooks.example.com/rehydrator")
    );
    assert_eq!(s.notify.token.as_ref().unwrap().expose(), "n0tify-s3cret");
    // check-config's output masks the token and shows the windows as written.
    let shown = s.to_toml();
    assert!(!shown.contains("n0tify-s3cret"), "{shown}");
    assert!(!format!("{s:?}").contains("n0tify-s3cret"));
    assert!(shown.contains("token = \"***\""), "{shown}");
    assert!(shown.contains("start = \"22:00\""), "{shown}");
    assert!(shown.contains("\"mon\""), "{shown}");
    // And what it shows loads back the same (less the masked token, which is not a field).
    let dir =
        std::env::temp_dir().join(format!("rehydrator-config-trig-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let again = dir.join("effective.toml");
    let text = shown.replace("token = \"***\"\n", "");
    std::fs::write(&again, &text).unwrap();
    let back = load_with_env(&again, &env);
    std::fs::remove_dir_all(&dir).unwrap();
    let back = back.unwrap_or_else(|e| panic!("{e}\n---\n{text}"));
    assert_eq!(back.to_toml(), shown);
    // Without the environment variable there is no token; the interval defaults to 5m.
    let text = std::fs::read_to_string(sample("triggers.toml"))
        .unwrap()
        .replace("interval = \"2m\"\n", "");
    let dir = std::env::temp_dir().join(format!("rehydrator-config-trig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("triggers-default.toml");
    std::fs::write(&path, text).unwrap();
    let s = load_with_env(&path, &no_env());
    std::fs::remove_dir_all(&dir).unwrap();
    let s = s.unwrap();
    assert!(s.notify.token.is_none());
    assert!(matches!(
        s.watches[0].kind,
        WatchKind::Image { interval } if interval == Duration::from_secs(300)
    ));
}

#[test]
fn trigger_mistakes_are_each_named() {
    let path = sample("bad-triggers.toml");
    let err = load_with_env(&path, &no_env()).unwrap_err();
    let text = err.to_string();
    let expected = [
        "rollout.windows[0].days: unknown day \"funday\"",
        "rollout.windows[0].start: \"2am\" is not a time like \"02:00\"",
        "rollout.windows[1].time_zone: unknown time zone \"Europe/Berln\"",
        "rollout.windows[2].days: is required",
        "rollout.windows[2].end: equals start",
        "notify.url: is not an http:// or https:// URL",
        "watch[0].interval: must be at least 10s",
        "watch[1].interval: does not apply to a watch of type \"schedule\"",
        "watch[0].type: an \"image\" watch polls the rollout's cloud: it needs a spin-up or spin-down action",
        "watch[2].request: asks for a rollout, so the watch needs a spin-up or spin-down action",
    ];
    for e in expected {
        let line = format!("{}: {e}", path.display());
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(err.errors.len(), expected.len(), "{text}");
}

#[test]
fn durations_that_would_hurt_at_run_time_are_each_named() {
    let path = sample("bad-bounds.toml");
    let err = load_with_env(&path, &no_env()).unwrap_err();
    let text = err.to_string();
    let expected = [
        "lock.receipt_timeout: must be longer than zero",
        "rollout.stable_timeout: must be longer than zero",
        "rollout.step_timeout: \"18446744073709551615s\" is longer than the most any duration here may be, 30 days",
        "watch[0].every: must be at least 1s",
        "watch[1].debounce: \"1000000d\" is longer than the most any duration here may be, 30 days",
    ];
    for e in expected {
        let line = format!("{}: {e}", path.display());
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(err.errors.len(), expected.len(), "{text}");
}

#[test]
fn an_empty_status_listen_turns_the_endpoint_off() {
    let env: HashMap<String, String> =
        [("REHYDRATOR_STATUS__LISTEN".to_owned(), String::new())].into();
    let s = load_with_env(&sample("minimal.toml"), &env).unwrap();
    assert_eq!(s.status.listen, None);
    assert!(s.to_toml().contains("listen = \"\""), "{}", s.to_toml());
}

#[test]
fn windows_without_a_timer_on_the_rollout_are_refused() {
    let path = sample("bad-window-without-timer.toml");
    let err = load_with_env(&path, &no_env()).unwrap_err();
    let text = err.to_string();
    let line = format!(
        "{}: rollout.windows: a rollout waiting for a window resumes only when triggered: add a [[watch]] of type \"schedule\" for the spin-up/spin-down actions",
        path.display()
    );
    assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    assert_eq!(err.errors.len(), 1, "{text}");
}

/// Action and lock names become KV key segments: what Consul 1.21.5+ refuses (a `..` segment,
/// an encoded one), what an HTTP client folds away, and what needs escaping, is refused by name.
#[test]
fn action_and_lock_names_must_be_kv_key_segments() {
    let dir = std::env::temp_dir().join(format!("rehydrator-config-names-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("names.toml");
    std::fs::write(
        &path,
        r#"[cluster]
name = "prod"
[action."a b"]
type = "exec"
command = ["true"]
[action."a%2F.."]
type = "exec"
command = ["true"]
[action.fine]
type = "exec"
command = ["true"]
lock = "x/y"
[action.other]
type = "exec"
command = ["true"]
lock = ".."
"#,
    )
    .unwrap();
    let err = load_with_env(&path, &no_env()).unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    let text = err.to_string();
    let expected = [
        "action.a b: the name \"a b\" may hold only letters, digits, '-' and '_' (it names KV keys)",
        "action.a%2F..: the name \"a%2F..\" may hold only letters, digits, '-' and '_' (it names KV keys)",
        "action.fine.lock: \"x/y\" may hold only letters, digits, '-' and '_' (it names KV keys)",
        "action.other.lock: \"..\" may hold only letters, digits, '-' and '_' (it names KV keys)",
    ];
    for e in expected {
        let line = format!("{}: {e}", path.display());
        assert!(text.contains(&line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(err.errors.len(), expected.len(), "{text}");
}

/// `[consul]` resolves as the consul CLI resolves its variables, the file's fields first, for
/// every command: CONSUL_HTTP_SSL makes a bare address https; with both CONSUL_HTTP_TOKEN and
/// CONSUL_HTTP_TOKEN_FILE the token wins (as in the CLI); the TLS variables fill what the file
/// leaves out; a bad address is refused naming the field.
#[test]
fn consul_settings_resolve_as_the_cli_does() {
    let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let c = rehydrator_config::consul_from_env(&env(&[
        ("CONSUL_HTTP_ADDR", "10.0.0.1:8501"),
        ("CONSUL_HTTP_SSL", "true"),
        ("CONSUL_HTTP_TOKEN", "tok"),
        ("CONSUL_HTTP_TOKEN_FILE", "/etc/token"),
        ("CONSUL_CAPATH", "/etc/cas"),
        ("CONSUL_CLIENT_CERT", "/c.pem"),
        ("CONSUL_CLIENT_KEY", "/k.pem"),
        ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
    ]))
    .unwrap();
    assert_eq!(c.address, "https://10.0.0.1:8501");
    assert_eq!(c.token.as_ref().map(|t| t.expose()), Some("tok"));
    assert_eq!(c.token_file, None);
    assert_eq!(c.ca_path, Some(PathBuf::from("/etc/cas")));
    assert_eq!(c.client_cert, Some(PathBuf::from("/c.pem")));
    assert_eq!(c.tls_server_name.as_deref(), Some("server.dc1.consul"));

    let errs =
        rehydrator_config::consul_from_env(&env(&[("CONSUL_CLIENT_CERT", "/c.pem")])).unwrap_err();
    assert!(
        errs.iter().any(|e| e.field == "consul.client_key"),
        "{errs:?}"
    );
    let errs =
        rehydrator_config::consul_from_env(&env(&[("CONSUL_HTTP_SSL", "yes please")])).unwrap_err();
    assert!(errs.iter().any(|e| e.field == "consul.ssl"), "{errs:?}");

    for (address, why) in [
        ("not a url at all", "is not a host name or address"),
        ("ftp://consul:8500", "unsupported scheme"),
        ("http://user:pass@consul:8500", "must not hold credentials"),
        ("http://consul:8500/v1", "no path"),
        ("consul:99999", "is not a port"),
    ] {
        let errs =
            rehydrator_config::consul_from_env(&env(&[("CONSUL_HTTP_ADDR", address)])).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.field == "consul.address" && e.reason.contains(why)),
            "{address}: {errs:?}"
        );
        assert!(
            !errs.iter().any(|e| e.reason.contains("pass")),
            "{address}: the credentials are not echoed: {errs:?}"
        );
    }
}

#[test]
fn a_prometheus_gate_needs_an_http_url_and_a_query_only_with_one() {
    let dir = std::env::temp_dir().join(format!("rehydrator-gate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let load = |rollout: &str| {
        let path = dir.join("gate.toml");
        let text = format!("[cluster]\nname = \"prod\"\n[rollout]\n{rollout}\n");
        std::fs::write(&path, text).unwrap();
        load_with_env(&path, &no_env())
    };
    let on = load(
        "gate_prometheus_url = \"http://prom:9090\"\n\
         gate_prometheus_query = 'ALERTS{alertstate=\"firing\", severity=\"critical\"}'",
    )
    .unwrap();
    assert_eq!(
        on.rollout.prometheus_gate.unwrap().query,
        r#"ALERTS{alertstate="firing", severity="critical"}"#
    );
    let on = load(r#"gate_prometheus_url = "https://user:pw@prom:9090/""#).unwrap();
    let gate = on.rollout.prometheus_gate.unwrap();
    assert_eq!(gate.query, rehydrator_config::DEFAULT_GATE_QUERY);
    assert_eq!(gate.url.expose(), "https://user:pw@prom:9090");
    assert!(
        !format!("{}", gate.url).contains("pw"),
        "the password shows"
    );

    let e = load(r#"gate_prometheus_query = "up == 0""#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rollout.gate_prometheus_query: applies only with rollout.gate_prometheus_url"),
        "{e}"
    );
    let e = load("gate_prometheus_url = \"prom:9090\"\ngate_prometheus_query = \" \"")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rollout.gate_prometheus_url: is not an http"),
        "{e}"
    );
    assert!(e.contains("rollout.gate_prometheus_query: is empty"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_cloudwatch_gate_takes_alarm_names_and_prefixes() {
    let dir = std::env::temp_dir().join(format!("rehydrator-cwgate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let load = |alarms: &str| {
        let path = dir.join("gate.toml");
        let text =
            format!("[cluster]\nname = \"prod\"\n[rollout]\ngate_cloudwatch_alarms = {alarms}\n");
        std::fs::write(&path, text).unwrap();
        load_with_env(&path, &no_env())
    };
    let on = load(r#"["consul-*", "api-5xx", "*"]"#).unwrap();
    assert_eq!(
        on.rollout.cloudwatch_gate,
        [
            AlarmPattern::Prefix("consul-".into()),
            AlarmPattern::Name("api-5xx".into()),
            AlarmPattern::Prefix(String::new()),
        ]
    );
    assert!(load("[]").unwrap().rollout.cloudwatch_gate.is_empty());

    let e = load(r#"["", "a*b", "ok"]"#).unwrap_err().to_string();
    assert!(
        e.contains("rollout.gate_cloudwatch_alarms[0]: is empty"),
        "{e}"
    );
    assert!(
        e.contains("rollout.gate_cloudwatch_alarms[1]: has a * before its end"),
        "{e}"
    );
    assert!(!e.contains("[2]"), "{e}");
    let long = format!("[\"{}\"]", "x".repeat(256));
    assert!(load(&long)
        .unwrap_err()
        .to_string()
        .contains("is not an alarm name"));
    let many = format!(
        "[{}]",
        (0..21)
            .map(|i| format!("\"a{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let e = load(&many).unwrap_err().to_string();
    assert!(e.contains("lists 21 alarms, over 20"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn snapshots_go_to_a_directory_or_an_s3_bucket() {
    let dir = std::env::temp_dir().join(format!("rehydrator-snapdest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let load = |value: &str| {
        let path = dir.join("snap.toml");
        let text = format!("[cluster]\nname = \"prod\"\n[rollout]\nsnapshot_dir = {value:?}\n");
        std::fs::write(&path, text).unwrap();
        load_with_env(&path, &no_env())
    };
    let dest = |value: &str| load(value).unwrap().rollout.snapshots.unwrap().dest;
    use rehydrator_config::SnapshotDest;
    assert_eq!(
        dest("s3://consul-backups/prod/snapshots/"),
        SnapshotDest::S3 {
            bucket: "consul-backups".into(),
            prefix: "prod/snapshots/".into()
        }
    );
    assert_eq!(
        dest("s3://consul-backups"),
        SnapshotDest::S3 {
            bucket: "consul-backups".into(),
            prefix: String::new()
        }
    );
    assert_eq!(dest("/var/snap"), SnapshotDest::Dir("/var/snap".into()));
    let e = load("s3://Bad_Bucket/x").unwrap_err().to_string();
    assert!(
        e.contains("rollout.snapshot_dir: s3://BUCKET/PREFIX"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
