//! The deployment files, checked without AWS or Docker: `cfn-lint` on `deploy/*.yaml`; the task
//! role's IAM policy against the AWS calls the cloud backends make, in both directions; and the
//! commands the image and the template run (the health check, the ECS task's start script,
//! EventBridge's `fire`) run here through the real binary, so a renamed flag breaks a test and
//! not a production deployment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_yaml::Value as Yaml;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn templates() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no deploy/*.yaml");
    found
}

fn template() -> Yaml {
    let text = std::fs::read_to_string(repo().join("deploy/cloudformation.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn resource<'a>(t: &'a Yaml, name: &str) -> &'a Yaml {
    let r = &t["Resources"][name];
    assert!(!r.is_null(), "the template has no resource {name}");
    r
}

/// A YAML scalar or list of scalars as strings (`Action: x` and `Action: [x, y]` alike).
fn strings(v: &Yaml) -> Vec<String> {
    match v {
        Yaml::String(s) => vec![s.clone()],
        Yaml::Sequence(items) => items.iter().flat_map(strings).collect(),
        Yaml::Null => Vec::new(),
        other => panic!("expected a string or a list of strings, got {other:?}"),
    }
}

/// A `!Sub` string (or a plain one), with `${Name}` replaced from `values`.
fn sub(v: &Yaml, values: &HashMap<&str, &str>) -> String {
    let text = match v {
        Yaml::String(s) => s.clone(),
        Yaml::Tagged(t) if t.tag == "Sub" => t.value.as_str().unwrap().to_owned(),
        other => panic!("expected a string or !Sub, got {other:?}"),
    };
    let mut out = text;
    for (name, value) in values {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    assert!(!out.contains("${"), "unsubstituted placeholder in {out:?}");
    out
}

/// The text of a plain or `!Sub` string, placeholders left as they are; `None` for anything else.
fn raw(v: &Yaml) -> Option<&str> {
    match v {
        Yaml::String(s) => Some(s),
        Yaml::Tagged(t) if t.tag == "Sub" => t.value.as_str(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// cfn-lint

#[test]
fn cfn_lint_passes_on_every_template() {
    let files = templates();
    // The console script, else the module it wraps (pip may put scripts off PATH).
    let run = |program: &str, pre: &[&str]| {
        Command::new(program)
            .args(pre)
            .arg("--")
            .args(&files)
            .output()
    };
    let out = run("cfn-lint", &[]).or_else(|_| {
        run(
            "python3",
            &[
                "-c",
                "import sys; from cfnlint.runner import main; sys.argv[0] = 'cfn-lint'; sys.exit(main())",
            ],
        )
    });
    let out = out.expect("neither cfn-lint nor python3 could be started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'cfnlint'"),
        "cfn-lint is not installed: `python3 -m pip install cfn-lint` (scripts/test.sh does)"
    );
    assert!(
        out.status.success(),
        "cfn-lint found problems ({}):\n{}{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

// ---------------------------------------------------------------------------------------------
// The task role's policy against the code

/// Allowed without a direct SDK call, each for a reason the code cannot show.
const IMPLIED: &[(&str, &str)] = &[
    (
        "ec2:CreateTags",
        "RunInstances with TagSpecifications (the rehydrator:cluster and token tags) needs it",
    ),
    (
        "iam:PassRole",
        "RunInstances from a launch template with an instance profile passes that role, and \
         StartTask passes the Consul task definition's roles",
    ),
];

/// The AWS SDKs the backends use: the crate name in the code and the IAM service prefix.
const SDKS: &[(&str, &str)] = &[
    ("aws-sdk-ec2", "ec2"),
    ("aws-sdk-ecs", "ecs"),
    ("aws-sdk-autoscaling", "autoscaling"),
    ("aws-sdk-s3", "s3"),
    ("aws-sdk-cloudwatch", "cloudwatch"),
];

/// API operations whose IAM action has another name.
const IAM_NAMES: &[(&str, &str)] = &[("s3:ListObjectsV2", "s3:ListBucket")];

/// Every operation of an SDK crate: snake_case method name -> API name, read from the crate's
/// own sources (`src/operation/<op>.rs` declares `pub struct <Op>;`), so the test knows every
/// call the crate offers without a list to keep up to date.
fn sdk_operations(package: &str) -> BTreeMap<String, String> {
    let host = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .unwrap();
    let host = String::from_utf8(host.stdout).unwrap();
    let host = host
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap()
        .to_owned();
    // --filter-platform keeps cargo from wanting other platforms' crates it never downloaded.
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == package)
        .unwrap_or_else(|| panic!("{package} is not in the dependency graph"))["manifest_path"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = Path::new(&manifest).parent().unwrap().join("src/operation");
    let mut ops = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension() != Some("rs".as_ref()) {
            continue;
        }
        let snake = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let pascal = text
            .lines()
            .find_map(|l| l.strip_prefix("pub struct ")?.strip_suffix(';'))
            .unwrap_or_else(|| panic!("no operation struct in {}", path.display()));
        ops.insert(snake, pascal.to_owned());
    }
    assert!(
        ops.len() > 50,
        "{package}: only {} operations found",
        ops.len()
    );
    ops
}

/// `text` without `//` comments (doc comments name operations they do not call).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_string = false;
        let mut escaped = false;
        let mut cut = line.len();
        let bytes = line.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if in_string {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
            } else if b == b'"' {
                in_string = true;
            } else if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
                cut = i;
                break;
            }
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// `text` without its `#[cfg(test)]` modules: tests may drive a client the production code
/// does not need permission for.
fn strip_test_modules(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let Some(open) = after.find('{') else {
            return out;
        };
        let mut depth = 0usize;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Every `.<name>(` in `code`.
fn method_calls(code: &str) -> BTreeSet<String> {
    let bytes = code.as_bytes();
    let mut calls = BTreeSet::new();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'.' {
            continue;
        }
        let start = i + 1;
        let end = bytes[start..]
            .iter()
            .position(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_'))
            .map_or(bytes.len(), |n| start + n);
        if end > start && bytes.get(end) == Some(&b'(') {
            calls.insert(code[start..end].to_owned());
        }
    }
    calls
}

/// The IAM actions the cloud backends call: each `.operation(` in a `src/cloud/` file that uses
/// that SDK (names it `aws_sdk_…`), outside comments and test modules. A file that does not
/// name an SDK cannot hold its client (`process.rs` has a `register_image` of its own).
fn actions_the_code_calls() -> BTreeMap<String, Vec<String>> {
    let sdks: Vec<(String, &str, BTreeMap<String, String>)> = SDKS
        .iter()
        .map(|(krate, prefix)| (krate.replace('-', "_"), *prefix, sdk_operations(krate)))
        .collect();
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut files: Vec<PathBuf> = ["src/cloud", "src/gate"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(repo().join(dir)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for file in files {
        let code = strip_test_modules(&strip_comments(&std::fs::read_to_string(&file).unwrap()));
        let calls = method_calls(&code);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for (krate, prefix, ops) in &sdks {
            if !code.contains(krate.as_str()) {
                continue;
            }
            for call in &calls {
                if let Some(op) = ops.get(call) {
                    let action = format!("{prefix}:{op}");
                    let action = IAM_NAMES
                        .iter()
                        .find(|(api, _)| *api == action)
                        .map_or(action.clone(), |(_, iam)| (*iam).to_owned());
                    found.entry(action).or_default().push(name.clone());
                }
            }
        }
    }
    found
}

/// The task role's Allow statements.
fn task_role_statements(t: &Yaml) -> Vec<Yaml> {
    let policies = resource(t, "TaskRole")["Properties"]["Policies"]
        .as_sequence()
        .expect("TaskRole has inline Policies");
    let mut out = Vec::new();
    for p in policies {
        for s in p["PolicyDocument"]["Statement"].as_sequence().unwrap() {
            // `!If [condition, statement, !Ref AWS::NoValue]`: the statement when it applies.
            let s = match s {
                Yaml::Tagged(t) if t.tag == "If" => &t.value[1],
                s => s,
            };
            assert_eq!(s["Effect"], "Allow", "the task role only allows: {s:?}");
            out.push(s.clone());
        }
    }
    out
}

#[test]
fn the_task_role_allows_exactly_what_the_code_calls() {
    let called = actions_the_code_calls();
    // The scan itself must see the calls it exists for.
    for known in [
        "ec2:RunInstances",
        "ec2:TerminateInstances",
        "ec2:DescribeImages",
        "autoscaling:SetDesiredCapacity",
        "autoscaling:TerminateInstanceInAutoScalingGroup",
        "s3:PutObject",
        "s3:ListBucket",
        "cloudwatch:DescribeAlarms",
    ] {
        assert!(
            called.contains_key(known),
            "the scan missed {known}: {called:?}"
        );
    }
    let t = template();
    let mut allowed = BTreeSet::new();
    for s in task_role_statements(&t) {
        for a in strings(&s["Action"]) {
            assert!(!a.contains('*'), "no wildcard actions: {a}");
            allowed.insert(a);
        }
    }
    let missing: Vec<String> = called
        .iter()
        .filter(|(a, _)| !allowed.contains(*a))
        .map(|(a, files)| format!("{a} (called in {})", files.join(", ")))
        .collect();
    assert!(
        missing.is_empty(),
        "the code calls actions the task role does not allow (add them to TaskRole in \
         deploy/cloudformation.yaml, scoped): {missing:#?}"
    );
    let implied: BTreeSet<&str> = IMPLIED.iter().map(|(a, _)| *a).collect();
    let extra: Vec<&String> = allowed
        .iter()
        .filter(|a| !called.contains_key(*a) && !implied.contains(a.as_str()))
        .collect();
    assert!(
        extra.is_empty(),
        "the task role allows actions no code calls (remove them, or list them in IMPLIED \
         with the reason): {extra:?}"
    );
    for (action, why) in IMPLIED {
        assert!(
            allowed.contains(*action),
            "{action} is needed ({why}) but not allowed"
        );
    }
}

#[test]
fn the_task_role_is_scoped_by_the_cluster_tag() {
    let t = template();
    let statements = task_role_statements(&t);
    let with = |action: &str| -> Vec<&Yaml> {
        statements
            .iter()
            .filter(|s| strings(&s["Action"]).iter().any(|a| a == action))
            .collect()
    };
    let cluster_ref =
        |v: &Yaml| matches!(v, Yaml::Tagged(t) if t.tag == "Ref" && t.value == "RehydratorCluster");

    // Terminate only instances tagged with the cluster.
    for s in with("ec2:TerminateInstances") {
        assert!(
            cluster_ref(&s["Condition"]["StringEquals"]["aws:ResourceTag/rehydrator:cluster"]),
            "TerminateInstances must be conditioned on the instance's cluster tag: {s:?}"
        );
    }
    // A launched instance must carry the cluster's tag.
    let launches = with("ec2:RunInstances");
    let instance_statements: Vec<&&Yaml> = launches
        .iter()
        .filter(|s| raw(&s["Resource"]).is_some_and(|r| r.ends_with(":instance/*")))
        .collect();
    assert_eq!(instance_statements.len(), 1, "{launches:?}");
    assert!(cluster_ref(
        &instance_statements[0]["Condition"]["StringEquals"]["aws:RequestTag/rehydrator:cluster"]
    ));
    // Every RunInstances statement goes through the launch template.
    for s in &launches {
        assert!(
            !s["Condition"]["ArnLike"]["ec2:LaunchTemplate"].is_null(),
            "RunInstances outside the launch template: {s:?}"
        );
    }
    // Tags as part of RunInstances, or the token alone on the cluster's own instances (a
    // group's replacement claimed by a launch): never the cluster tag on another instance.
    for s in with("ec2:CreateTags") {
        let at_launch = s["Condition"]["StringEquals"]["ec2:CreateAction"] == "RunInstances";
        let claim =
            cluster_ref(&s["Condition"]["StringEquals"]["aws:ResourceTag/rehydrator:cluster"])
                && strings(&s["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"])
                    == ["rehydrator:token"];
        assert!(at_launch || claim, "{s:?}");
    }
    // The group's calls name the one group.
    let group = "autoScalingGroupName/${ConsulAutoScalingGroup}";
    for s in &statements {
        let acts = strings(&s["Action"]);
        let steers = acts
            .iter()
            .any(|a| a.starts_with("autoscaling:") && !a.contains(":Describe"));
        if steers {
            let resource = match &s["Resource"] {
                Yaml::Tagged(t) if t.tag == "Sub" => t.value.as_str().unwrap_or("").to_owned(),
                other => panic!("group calls on {other:?}"),
            };
            assert!(resource.ends_with(group), "{resource}");
        }
    }
    // Only the Consul servers' instance role, to EC2, and the Consul task's roles, to ECS.
    let passes = with("iam:PassRole");
    assert_eq!(passes.len(), 2, "{passes:?}");
    for s in passes {
        let to = match &s["Resource"] {
            Yaml::Tagged(t) if t.tag == "Ref" && t.value == "ConsulServerRoleArn" => {
                "ec2.amazonaws.com"
            }
            Yaml::Tagged(t) if t.tag == "Ref" && t.value == "ConsulTaskRoleArns" => {
                "ecs-tasks.amazonaws.com"
            }
            other => panic!("iam:PassRole on {other:?}"),
        };
        assert_eq!(s["Condition"]["StringEquals"]["iam:PassedToService"], to);
    }
    // `Resource: "*"` only for read-only calls, or under a condition.
    for s in &statements {
        if s["Resource"] != "*" {
            continue;
        }
        for a in strings(&s["Action"]) {
            let op = a.split(':').nth(1).unwrap();
            assert!(
                op.starts_with("Describe") || op.starts_with("List") || !s["Condition"].is_null(),
                "{a} on every resource without a condition: {s:?}"
            );
        }
    }
}

#[test]
fn the_guards_hooks_are_the_ones_the_code_completes_and_only_with_the_guard() {
    let t = template();
    let mut seen = BTreeMap::new();
    for (name, transition, default) in [
        (
            "GuardTerminatingHook",
            "autoscaling:EC2_INSTANCE_TERMINATING",
            "CONTINUE",
        ),
        (
            "GuardLaunchingHook",
            "autoscaling:EC2_INSTANCE_LAUNCHING",
            "ABANDON",
        ),
    ] {
        let hook = resource(&t, name);
        assert_eq!(hook["Type"], "AWS::AutoScaling::LifecycleHook");
        assert_eq!(hook["Condition"], "HasGuard", "{name} only with the guard");
        let p = &hook["Properties"];
        let hook_name = p["LifecycleHookName"].as_str().unwrap().to_owned();
        assert!(
            hook_name.starts_with(rehydrator::cloud::asg::HOOK_PREFIX),
            "{hook_name}: the guard completes only hooks named {}*",
            rehydrator::cloud::asg::HOOK_PREFIX
        );
        assert_eq!(p["LifecycleTransition"], transition);
        assert_eq!(p["DefaultResult"], default);
        seen.insert(hook_name, transition);
    }
    assert_eq!(seen.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// The service's shape

#[test]
fn the_service_runs_three_replicas_spread_across_zones() {
    let t = template();
    assert_eq!(t["Parameters"]["DesiredCount"]["Default"], 3);
    let service = &resource(&t, "Service")["Properties"];
    let strategies = service["PlacementStrategies"].as_sequence().unwrap();
    assert!(
        strategies
            .iter()
            .any(|s| s["Type"] == "spread" && s["Field"] == "attribute:ecs.availability-zone"),
        "{strategies:?}"
    );
    let task = &resource(&t, "TaskDefinition")["Properties"]["ContainerDefinitions"][0];
    assert_eq!(task["StopTimeout"], 30);
    assert_eq!(task["LogConfiguration"]["LogDriver"], "awslogs");
    let secrets: Vec<&Yaml> = task["Secrets"].as_sequence().unwrap().iter().collect();
    assert!(
        secrets.iter().any(|s| s["Name"] == "CONSUL_HTTP_TOKEN"),
        "the token comes from a secret: {secrets:?}"
    );
    assert!(
        task["Environment"]
            .as_sequence()
            .unwrap()
            .iter()
            .all(|e| e["Name"] != "CONSUL_HTTP_TOKEN"),
        "the token must not be a plain environment variable"
    );
}

// ---------------------------------------------------------------------------------------------
// The commands the image and the template run, through the real binary

/// A loopback server answering every connection with `answer`, until the test process ends.
fn http_server(answer: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(answer.as_bytes());
        }
    });
    format!("http://{addr}/healthz")
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for `child` at most `limit`, killing it past that.
fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `rehydrator <args>` to completion (bounded), with no Consul or AWS environment.
fn rehydrator(args: &[String]) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rehydrator"))
        .args(args)
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(20));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

/// `args` with the value after `--url` replaced by `url`.
fn with_url(args: &[String], url: &str) -> Vec<String> {
    let at = args
        .iter()
        .position(|a| a == "--url")
        .expect("the health check names its URL");
    let mut out = args.to_vec();
    out[at + 1] = url.to_owned();
    out
}

/// The JSON array after `instruction` in the Dockerfile (continuation lines joined).
fn dockerfile_exec_form(instruction: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let line = joined
        .lines()
        .rfind(|l| l.trim_start().starts_with(instruction))
        .unwrap_or_else(|| panic!("no {instruction} in the Dockerfile"));
    let json = &line[line.find('[').unwrap()..=line.rfind(']').unwrap()];
    serde_json::from_str(json).unwrap()
}

fn assert_health_check_works(command: &[String], origin: &str) {
    assert_eq!(command[0], "rehydrator", "{origin}: {command:?}");
    assert_eq!(command[1], "healthcheck", "{origin}: {command:?}");
    let args = &command[1..];
    let ok = http_server("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    let (status, err) = rehydrator(&with_url(args, &ok));
    assert_eq!(status.code(), Some(0), "{origin} against a 200: {err}");
    let down = http_server("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n");
    let (status, err) = rehydrator(&with_url(args, &down));
    assert_eq!(status.code(), Some(1), "{origin} against a 503: {err}");
    assert!(err.contains("503"), "{err}");
    let closed = format!("http://127.0.0.1:{}/healthz", closed_port());
    let (status, err) = rehydrator(&with_url(args, &closed));
    assert_eq!(
        status.code(),
        Some(1),
        "{origin} against a closed port: {err}"
    );
}

#[test]
fn the_images_health_check_runs_and_tells_200_from_the_rest() {
    let mut command = dockerfile_exec_form("HEALTHCHECK");
    // `HEALTHCHECK ... CMD [...]`: the array is the command.
    assert_eq!(
        command.first().map(String::as_str),
        Some("rehydrator"),
        "{command:?}"
    );
    assert_health_check_works(&command, "Dockerfile HEALTHCHECK");
    assert_eq!(dockerfile_exec_form("ENTRYPOINT"), ["rehydrator"]);
    // The default command parses: a missing config file is the only complaint (exit 2).
    command = dockerfile_exec_form("CMD");
    assert_eq!(command[..2], ["run", "--config"]);
    let missing = std::env::temp_dir().join("rehydrator-deploy-test-no-such-config.toml");
    let (status, err) = rehydrator(&[
        "run".into(),
        "--config".into(),
        missing.display().to_string(),
    ]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn the_task_definitions_health_check_runs_and_tells_200_from_the_rest() {
    let t = template();
    let task = &resource(&t, "TaskDefinition")["Properties"]["ContainerDefinitions"][0];
    let command = strings(&task["HealthCheck"]["Command"]);
    assert_eq!(command[0], "CMD", "exec form, no shell: {command:?}");
    assert_health_check_works(&command[1..], "task definition HealthCheck");
}

/// The `command` each EventBridge target sends (as its container override), with the
/// template's parameters and the event's fields filled in.
fn fire_commands(t: &Yaml) -> Vec<(String, Vec<String>)> {
    let fire_container =
        &resource(t, "FireTaskDefinition")["Properties"]["ContainerDefinitions"][0];
    let params = HashMap::from([
        ("RehydratorCluster", "prod"),
        ("RehydrateEvent", "consul-rehydrate"),
        ("ImageParameterName", "/images/consul-server"),
    ]);
    let mut out = Vec::new();
    for (name, r) in t["Resources"].as_mapping().unwrap() {
        if r["Type"] != "AWS::Events::Rule" {
            continue;
        }
        let name = name.as_str().unwrap().to_owned();
        for target in r["Properties"]["Targets"].as_sequence().unwrap() {
            assert!(
                matches!(
                    &target["EcsParameters"]["TaskDefinitionArn"],
                    Yaml::Tagged(t) if t.value == "FireTaskDefinition"
                ),
                "{name}: the target runs the fire task"
            );
            let input = match &target["InputTransformer"]["InputTemplate"] {
                Yaml::Null => sub(&target["Input"], &params),
                template => sub(template, &params).replace("<image>", "ami-0123456789abcdef0"),
            };
            let input: serde_json::Value = serde_json::from_str(&input)
                .unwrap_or_else(|e| panic!("{name}: the target's input is not JSON: {e}"));
            let overrides = &input["containerOverrides"][0];
            assert_eq!(
                overrides["name"].as_str(),
                fire_container["Name"].as_str(),
                "{name}: the override names the fire task's container"
            );
            let command: Vec<String> =
                serde_json::from_value(overrides["command"].clone()).unwrap();
            out.push((name.clone(), command));
        }
    }
    out
}

/// What EventBridge's targets run, run against a simulated Consul: each fires the event the
/// replicas watch, with the image as its payload.
#[actix_rt::test]
async fn the_eventbridge_targets_fire_the_rehydrate_event() {
    let t = template();
    let commands = fire_commands(&t);
    let names: BTreeSet<&str> = commands.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains("RegisterImageRule"), "{names:?}");
    let rule = &resource(&t, "RegisterImageRule")["Properties"]["EventPattern"];
    assert_eq!(strings(&rule["detail"]["eventName"]), ["RegisterImage"]);
    assert_eq!(
        strings(&rule["detail"]["eventSource"]),
        ["ec2.amazonaws.com"]
    );

    let sim = common::sim();
    let url = sim.url();
    common::bounded(async move {
        for (rule, command) in &commands {
            assert_eq!(command[0], "fire", "{rule}: {command:?}");
            let (status, err) = {
                let (command, url) = (command.clone(), url.clone());
                actix_rt::task::spawn_blocking(move || {
                    let mut child = Command::new(env!("CARGO_BIN_EXE_rehydrator"))
                        .args(&command)
                        .env("CONSUL_HTTP_ADDR", &url)
                        .env_remove("CONSUL_HTTP_TOKEN")
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap();
                    let status = wait_bounded(&mut child, Duration::from_secs(20));
                    let mut err = String::new();
                    child
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut err)
                        .unwrap();
                    (status, err)
                })
                .await
                .unwrap()
            };
            assert!(status.success(), "{rule}: {command:?}: {err}");
        }
        // The group's lifecycle rule wakes the guard with its own event, the instance as
        // payload; every other rule asks for a rollout.
        let lifecycle: Vec<&(String, Vec<String>)> = commands
            .iter()
            .filter(|(_, c)| c.iter().any(|a| a == "rehydrator-lifecycle"))
            .collect();
        assert_eq!(lifecycle.len(), 1, "{commands:?}");
        assert_eq!(lifecycle[0].0, "GroupLifecycleRule");
        let rehydrate = commands.len() - lifecycle.len();
        let mut resp = awc::Client::default()
            .get(format!("{url}/v1/event/list?name=consul-rehydrate"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let events: serde_json::Value = resp.json().await.unwrap();
        let payloads: Vec<String> = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                use base64::Engine as _;
                let b = base64::engine::general_purpose::STANDARD
                    .decode(e["Payload"].as_str().unwrap_or_default())
                    .unwrap();
                String::from_utf8(b).unwrap()
            })
            .collect();
        assert_eq!(payloads.len(), rehydrate, "{events}");
        assert!(
            payloads.iter().any(|p| p == "ami-0123456789abcdef0"),
            "the AMI's ID is the payload: {payloads:?}"
        );
    })
    .await;
    sim.stop().await;
}

/// The replica container as ECS starts it: the task definition's entry point and command, its
/// environment, the configuration from the SSM "secret", against a simulated Consul. It must
/// become healthy by its own health check and stop cleanly on SIGTERM within stopTimeout.
#[actix_rt::test]
async fn the_replica_task_starts_healthy_and_stops_on_sigterm() {
    let t = template();
    let task = resource(&t, "TaskDefinition")["Properties"]["ContainerDefinitions"][0].clone();
    let entry = strings(&task["EntryPoint"]);
    assert_eq!(entry, ["sh", "-c"]);
    let dir = std::env::temp_dir().join(format!("rehydrator-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The container's /tmp is its own; here the script writes into a directory of the test's.
    let script = strings(&task["Command"])[0].replace("/tmp/", &format!("{}/", dir.display()));
    let config = std::fs::read_to_string(repo().join("config/samples/minimal.toml")).unwrap();
    let status_port = closed_port();
    let health = strings(&task["HealthCheck"]["Command"]);
    let health_url = format!("http://127.0.0.1:{status_port}/healthz");
    let health_args = with_url(&health[2..], &health_url);

    let sim = common::sim();
    let url = sim.url();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_rehydrator"))
        .parent()
        .unwrap()
        .to_owned();
    let mut env: Vec<(String, String)> = Vec::new();
    for e in task["Environment"].as_sequence().unwrap() {
        let name = e["Name"].as_str().unwrap().to_owned();
        let value = match name.as_str() {
            "CONSUL_HTTP_ADDR" => url.clone(),
            "REHYDRATOR_CLUSTER__NAME" => "deploy-test".into(),
            "AWS_REGION" => "eu-west-1".into(),
            // 0.0.0.0 in the container; loopback and a free port here.
            "REHYDRATOR_STATUS__LISTEN" => format!("127.0.0.1:{status_port}"),
            _ => e["Value"].as_str().unwrap().to_owned(),
        };
        env.push((name, value));
    }
    env.push(("REHYDRATOR_CONFIG_TOML".into(), config));
    env.push(("CONSUL_HTTP_TOKEN".into(), "deploy-test-token".into()));
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    common::bounded_for(Duration::from_secs(90), async move {
        let outcome = actix_rt::task::spawn_blocking(move || {
            let mut child = Command::new(&entry[0])
                .arg(&entry[1])
                .arg(&script)
                .env_clear()
                .env("PATH", path)
                .envs(env)
                // Files, not pipes read only after the exit: a chatty replica would block on a
                // full pipe and miss its health check.
                .stdout(std::fs::File::create(&out_path).unwrap())
                .stderr(std::fs::File::create(&err_path).unwrap())
                .spawn()
                .unwrap();
            // Healthy by the task's own check within its start period (30 s).
            let start = Instant::now();
            let healthy = loop {
                let out = Command::new(env!("CARGO_BIN_EXE_rehydrator"))
                    .args(&health_args)
                    .output()
                    .unwrap();
                if out.status.success() {
                    break true;
                }
                if start.elapsed() > Duration::from_secs(30) || child.try_wait().unwrap().is_some()
                {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            // ECS's StopTask: SIGTERM to PID 1, which `exec` made rehydrator itself.
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let stopped = Instant::now();
            let status = wait_bounded(&mut child, Duration::from_secs(30));
            let took = stopped.elapsed();
            let logs = std::fs::read_to_string(&out_path).unwrap_or_default();
            let err = std::fs::read_to_string(&err_path).unwrap_or_default();
            let both = format!("{err}{logs}");
            (healthy, status, took, logs, both)
        })
        .await
        .unwrap();
        let (healthy, status, took, logs, err) = outcome;
        assert!(healthy, "the task never passed its health check:\n{err}");
        assert!(status.success(), "exit after SIGTERM: {status}\n{err}");
        assert!(took < Duration::from_secs(30), "stopped in {took:?}");
        // JSON lines on stdout, as the awslogs driver gets them.
        let first = logs
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        assert!(
            serde_json::from_str::<serde_json::Value>(first).is_ok(),
            "logs are JSON lines: {first:?}"
        );
    })
    .await;
    sim.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Prometheus' own checker accepts the shipped alert rules (Debian's promtool 2.24.1).
#[test]
fn promtool_accepts_the_alert_rules() {
    let Some(prometheus) = crate::common::prometheus_bin() else {
        return;
    };
    let promtool = prometheus.with_file_name("promtool");
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(repo().join("deploy/prometheus-alerts.yml"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

/// Every series the shipped alert rules name is one rehydrator exports (a renamed metric must
/// not silently break an operator's alert).
#[test]
fn the_alert_rules_name_only_series_rehydrator_exports() {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus-alerts.yml")).unwrap();
    let rules: Yaml = serde_yaml::from_str(&text).unwrap();
    // A family shows once it has a series: a held lock gives the lock-age family one.
    let metrics = rehydrator_actors::metrics::Metrics::new();
    metrics.observe(&rehydrator_actors::metrics::Observed {
        held: vec![rehydrator_actors::metrics::HeldLock::default()],
        ..Default::default()
    });
    let exported = metrics.encode().unwrap();
    let families: Vec<&str> = exported
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut named = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let alert = rule["alert"].as_str().unwrap();
            let expr = rule["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("rehydrator_") {
                    continue;
                }
                named += 1;
                let family = word.strip_suffix("_total").unwrap_or(word);
                assert!(
                    families.contains(&family),
                    "{alert} names {word}, which rehydrator does not export: {families:?}"
                );
            }
            assert!(rule["for"].as_str().is_some(), "{alert} has no `for`");
        }
    }
    assert!(named >= 6, "the rules name rehydrator's series: {named}");
}
