#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Barrier;

/// A stand-in agent: answers `version` as Consul 1.8.7 does, and otherwise sleeps.
const STAND_IN: &str =
    "#!/bin/sh\n[ \"$1\" = version ] && { echo '{\"Version\": \"1.8.7\"}'; exit 0; }\nsleep 60\n";

use rehydrator_actors::ports::{ErrorKind, PortError};

use super::*;

/// A data directory with a stand-in agent: a shell script that sleeps, so its command
/// line (and /proc) shows the agent's arguments, as consul's would. Every process it
/// started is killed and the directory removed on drop, panics included.
struct Rig {
    cloud: ProcessCloud,
    dir: PathBuf,
}

impl Rig {
    fn new(name: &str) -> Self {
        Self::with_consul(name, "false")
    }

    /// `consul_bin` runs `consul leave`; `false` makes every leave fail.
    fn with_consul(name: &str, consul_bin: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rehydrator-process-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&dir).unwrap();
        let agent = dir.join("agent.sh");
        fs::write(&agent, STAND_IN).unwrap();
        fs::set_permissions(&agent, fs::Permissions::from_mode(0o755)).unwrap();
        let cloud = ProcessCloud::new(ProcessOptions {
            consul_bin: PathBuf::from(consul_bin),
            data_dir: dir.join("cloud"),
            agent_hcl: Vec::new(),
            acl_token: None,
        })
        .unwrap();
        cloud.register_image("a", Some(&agent)).unwrap();
        Self { cloud, dir }
    }

    /// Another replica's view of the same data directory: no child handles.
    fn replica(&self) -> ProcessCloud {
        ProcessCloud::new(self.cloud.inner.options.clone()).unwrap()
    }

    fn record(&self, id: &str) -> Record {
        read_record(&self.cloud.record_path(id), "test")
            .unwrap()
            .unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.cloud.stop_all();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn record(id: &str) -> Record {
    Record {
        id: id.into(),
        image: "b".into(),
        token: "r1-launch-0".into(),
        launched_at: 1_714_564_800_000,
        pid: Some(4242),
        ports: AgentPorts {
            http: 18500,
            server: 18300,
            serf_lan: 18301,
        },
        binary: PathBuf::from("/usr/bin/consul"),
        retired: false,
    }
}

/// Polls `done` for up to 10s: process exits are observed, not slept on.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 10s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_server_runs_on_loopback_with_its_own_ports_and_the_image_in_node_meta() {
    let r = record("consul-0123");
    let args = server_args(
        &r,
        Path::new("/d/machines/consul-0123/data"),
        &[18401, 18402],
        Some(3),
    );
    for want in [
        "agent",
        "-server",
        "-node=consul-0123",
        "-node-meta=image:b",
        "-bind=127.0.0.1",
        "-advertise=127.0.0.1",
        "-client=127.0.0.1",
        "-data-dir=/d/machines/consul-0123/data",
        "-http-port=18500",
        "-server-port=18300",
        "-serf-lan-port=18301",
        "-serf-wan-port=-1",
        "-dns-port=-1",
        "-grpc-port=-1",
        "-bootstrap-expect=3",
        "-retry-join=127.0.0.1:18401",
        "-retry-join=127.0.0.1:18402",
        "-config-dir=/d/machines/consul-0123/config",
    ] {
        assert!(
            args.iter().any(|a| a == want),
            "{want} missing from {args:?}"
        );
    }
    assert_eq!(args[0], "agent", "the subcommand comes first: {args:?}");
    // Later servers join the cluster; only the first ones bootstrap it.
    let later = server_args(&r, Path::new("/d"), &[18401], None);
    assert!(
        !later.iter().any(|a| a.starts_with("-bootstrap")),
        "{later:?}"
    );
    // The client agent is no server and holds no server port.
    let client = client_args(&r, Path::new("/d"), &[18401]);
    assert!(
        !client
            .iter()
            .any(|a| a == "-server" || a.starts_with("-server-port")),
        "{client:?}"
    );
    assert!(client.iter().any(|a| a == "-http-port=18500"), "{client:?}");
}

#[test]
fn machine_ids_are_stable_node_names_per_token() {
    let a = machine_id("r1700000000000-launch-0");
    assert_eq!(a, machine_id("r1700000000000-launch-0"));
    assert_ne!(a, machine_id("r1700000000000-launch-1"));
    assert!(
        a.starts_with("consul-") && a.len() == "consul-".len() + 12,
        "{a}"
    );
    assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    // Fixed, so replicas of different builds agree.
    assert_eq!(machine_id(""), "consul-efd01f60ba99");
}

#[test]
fn the_newest_image_is_the_latest_file_then_the_name() {
    let rig = Rig::new("images");
    rig.cloud.register_image("b", None).unwrap();
    rig.cloud.register_image("c", None).unwrap();
    let images = rig.cloud.data_dir().join("images");
    let set = |name: &str, secs: u64| {
        fs::File::options()
            .write(true)
            .open(images.join(name))
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    };
    set("a", 1_700_000_000);
    set("b", 1_700_000_100);
    set("c", 1_700_000_050);
    let newest = |cloud: &ProcessCloud| {
        futures_util::FutureExt::now_or_never(cloud.newest_image())
            .unwrap()
            .unwrap()
            .unwrap()
    };
    assert_eq!(newest(&rig.cloud).id, "b");
    // The same time: the name decides.
    set("c", 1_700_000_100);
    assert_eq!(newest(&rig.cloud).id, "c");
    // A registration in progress (a dot file) is no image.
    fs::write(images.join(".d.tmp"), "").unwrap();
    let ids: Vec<String> = rig
        .cloud
        .images()
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    // An empty registry has no newest image.
    let empty = Rig::new("no-images");
    fs::remove_file(empty.cloud.data_dir().join("images").join("a")).unwrap();
    assert_eq!(
        futures_util::FutureExt::now_or_never(empty.cloud.newest_image())
            .unwrap()
            .unwrap(),
        None
    );
}

#[test]
fn records_round_trip_and_are_created_once_and_replaced_whole() {
    let rig = Rig::new("records");
    let path = rig.cloud.record_path("consul-1");
    let first = record("consul-1");
    assert!(create_exclusive(&path, &first).unwrap());
    let mut second = first.clone();
    second.token = "another".into();
    assert!(!create_exclusive(&path, &second).unwrap(), "created twice");
    assert_eq!(read_record(&path, "t").unwrap(), Some(first.clone()));
    let mut retired = first.clone();
    retired.retired = true;
    write_record(&path, &retired).unwrap();
    assert_eq!(read_record(&path, "t").unwrap(), Some(retired));
    // No temporary file is left beside it, and listings skip them anyway.
    let names: Vec<String> = fs::read_dir(rig.cloud.machines_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["consul-1.json".to_owned()]);
    // A record that is not one is a decode error naming the file.
    fs::write(rig.cloud.record_path("broken"), "{").unwrap();
    let err = rig.cloud.records().unwrap_err();
    assert!(
        matches!(&err, CloudError::Decode { reason, .. } if reason.contains("broken.json")),
        "{err:?}"
    );
}

#[test]
fn two_replicas_racing_one_token_launch_one_process() {
    let rig = Rig::new("race");
    let replicas = [rig.cloud.clone(), rig.replica()];
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = replicas
        .into_iter()
        .map(|cloud| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                cloud.launch_now("a", "r1-launch-0").unwrap()
            })
        })
        .collect();
    let machines: Vec<Machine> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(machines[0].id, machines[1].id);
    assert!(machines
        .iter()
        .all(|m| m.state != MachineState::Terminated && m.node.as_deref() == Some(&m.id)));
    let records = rig.cloud.records().unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    let pid = records[0].pid.unwrap();
    assert!(pid_runs(pid, &records[0].id));
    // A retry later answers the same machine, from either replica.
    assert_eq!(
        rig.replica().launch_now("a", "r1-launch-0").unwrap().id,
        machines[0].id
    );
    assert_eq!(rig.cloud.records().unwrap().len(), 1);
    // Another token is another machine, on other ports.
    let other = rig.cloud.launch_now("a", "r1-launch-1").unwrap();
    assert_ne!(other.id, machines[0].id);
    let records = rig.cloud.records().unwrap();
    let ports: HashSet<u16> = records
        .iter()
        .flat_map(|r| [r.ports.http, r.ports.server, r.ports.serf_lan])
        .collect();
    assert_eq!(ports.len(), 6, "{records:?}");
    // The second joins the first.
    let cmdline = fs::read(format!(
        "/proc/{}/cmdline",
        rig.record(&other.id).pid.unwrap()
    ));
    if let Ok(cmdline) = cmdline {
        let join = format!(
            "-retry-join=127.0.0.1:{}",
            rig.record(&machines[0].id).ports.serf_lan
        );
        assert!(
            cmdline.split(|b| *b == 0).any(|a| a == join.as_bytes()),
            "{}",
            String::from_utf8_lossy(&cmdline)
        );
    }
}

#[test]
fn liveness_follows_the_process_for_its_spawner_and_for_other_replicas() {
    let rig = Rig::new("alive");
    let m = rig.cloud.launch_now("a", "t-alive").unwrap();
    assert_eq!(m.state, MachineState::Running);
    assert_eq!(
        m.address, None,
        "agents share 127.0.0.1: matched by node name"
    );
    let other = rig.replica();
    assert_eq!(other.live_machines().unwrap().len(), 1);
    let pid = rig.record(&m.id).pid.unwrap();
    // A PID whose command line names another node is not this machine (PID reuse).
    assert!(!pid_runs(pid, "consul-someone-else"));
    assert!(!pid_runs(std::process::id(), &m.id));
    // The agent dies: both replicas see the machine gone; the spawner reaps it.
    signal_group(pid, "KILL");
    eventually("the spawner seeing the agent die", || {
        rig.cloud.live_machines().unwrap().is_empty()
    });
    assert!(rig.cloud.children().is_empty(), "the child was reaped");
    assert!(!pid_runs(pid, &m.id), "no zombie left");
    assert!(other.live_machines().unwrap().is_empty());
    // A record whose launcher died before spawning is pending for a while, then gone.
    let mut orphan = record("consul-orphan");
    orphan.pid = None;
    orphan.launched_at = now_ms();
    create_exclusive(&rig.cloud.record_path("consul-orphan"), &orphan).unwrap();
    assert_eq!(
        rig.cloud.live_machines().unwrap()[0].state,
        MachineState::Pending
    );
    orphan.launched_at = now_ms() - 60_000;
    write_record(&rig.cloud.record_path("consul-orphan"), &orphan).unwrap();
    assert!(rig.cloud.live_machines().unwrap().is_empty());
}

#[actix_rt::test]
async fn retiring_a_dead_agent_marks_it_retired_and_retiring_again_is_done() {
    let rig = Rig::new("retire-dead");
    let m = rig.cloud.launch_now("a", "t-dead").unwrap();
    signal_group(rig.record(&m.id).pid.unwrap(), "KILL");
    let bound = Duration::from_secs(20);
    tokio::time::timeout(bound, rig.cloud.retire(&m.id))
        .await
        .unwrap()
        .unwrap();
    assert!(rig.record(&m.id).retired);
    tokio::time::timeout(bound, rig.replica().retire(&m.id))
        .await
        .unwrap()
        .unwrap();
    // The token still answers its machine, now terminated, rather than a second one.
    let again = rig.cloud.launch_now("a", "t-dead").unwrap();
    assert_eq!(
        (again.id.as_str(), again.state),
        (m.id.as_str(), MachineState::Terminated)
    );
    let err = tokio::time::timeout(bound, rig.cloud.retire("consul-nobody"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Rejected, "{err:?}");
    assert!(err.message.contains("consul-nobody"), "{err:?}");
}

#[actix_rt::test]
async fn retiring_an_agent_whose_leave_fails_terminates_its_process_group() {
    let rig = Rig::new("retire-live");
    let m = rig.cloud.launch_now("a", "t-live").unwrap();
    let pid = rig.record(&m.id).pid.unwrap();
    // Another replica retires it: no child handle, so /proc tells when it is gone.
    let other = rig.replica();
    tokio::time::timeout(Duration::from_secs(20), other.retire(&m.id))
        .await
        .unwrap()
        .unwrap();
    assert!(rig.record(&m.id).retired);
    // The spawner never asks about a retired machine again, yet its listing reaps it.
    eventually("the spawner reaping its child", || {
        rig.cloud.live_machines().unwrap();
        rig.cloud.children().is_empty()
    });
    assert!(!pid_runs(pid, &m.id));
    assert!(rig.cloud.live_machines().unwrap().is_empty());
    // The leave was tried first, and its failure is in the machine's log.
    let log = fs::read_to_string(rig.cloud.record_path(&m.id).with_extension("log"));
    assert!(log.is_ok(), "the agent's log exists");
}

#[test]
fn unknown_images_and_labels_that_are_not_names_are_refused() {
    let rig = Rig::new("refused");
    let err = rig.cloud.launch_now("zzz", "t-1").unwrap_err();
    assert!(
        matches!(
            &err,
            CloudError::Refused { reason, .. } if reason.contains("\"zzz\" is not registered")
        ),
        "{err:?}"
    );
    assert_eq!(PortError::from(err).kind, ErrorKind::Rejected);
    for bad in ["", "../etc", ".hidden", "a b", "x/y"] {
        assert!(
            matches!(
                rig.cloud.register_image(bad, None),
                Err(CloudError::Refused { .. })
            ),
            "{bad:?} accepted"
        );
    }
    assert!(rig.cloud.records().unwrap().is_empty(), "nothing launched");
    // A binary that cannot start leaves no record: a retry may launch.
    rig.cloud
        .register_image("gone", Some(Path::new("/nonexistent/consul")))
        .unwrap();
    let err = rig.cloud.launch_now("gone", "t-2").unwrap_err();
    assert!(
        matches!(&err, CloudError::Local { reason, .. } if reason.contains("/nonexistent/consul")),
        "{err:?}"
    );
    assert!(PortError::from(err).is_retryable());
    assert!(rig.cloud.records().unwrap().is_empty());
}

#[test]
fn bootstrap_starts_n_servers_expecting_each_other_once() {
    let rig = Rig::new("bootstrap");
    assert!(matches!(
        rig.cloud.bootstrap(0, "a"),
        Err(CloudError::Refused { .. })
    ));
    let machines = rig.cloud.bootstrap(3, "a").unwrap();
    assert_eq!(machines.len(), 3);
    assert!(machines
        .iter()
        .all(|m| m.state == MachineState::Running && m.image == "a"));
    let records = rig.cloud.records().unwrap();
    assert_eq!(records.len(), 3);
    let pid = records[0].pid.unwrap();
    let proc_cmdline = format!("/proc/{pid}/cmdline");
    // Read until it has content: CI once read it empty under load (a process being set up
    // or gone reads as empty); a process that stays so is reported, not skipped.
    let mut cmdline = fs::read(&proc_cmdline);
    let deadline = Instant::now() + Duration::from_secs(2);
    while cmdline.as_ref().is_ok_and(|c| c.is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        cmdline = fs::read(&proc_cmdline);
    }
    if let Ok(cmdline) = cmdline {
        assert!(
            !cmdline.is_empty(),
            "process {pid} has an empty command line (alive: {})",
            rig.cloud.is_alive(&records[0])
        );
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert!(args.iter().any(|a| a == "-bootstrap-expect=3"), "{args:?}");
        let joins = args
            .iter()
            .filter(|a| a.starts_with("-retry-join="))
            .count();
        assert_eq!(joins, 2, "each server joins the other two: {args:?}");
    }
    // A second bootstrap over running servers would make a second cluster: refused.
    let err = rig.cloud.bootstrap(3, "a").unwrap_err();
    assert!(
        matches!(&err, CloudError::Refused { reason, .. } if reason.contains("still run")),
        "{err:?}"
    );
    // The client agent (the default binary: here the stand-in too) joins them, and asking
    // again answers the running one.
    let cloud = ProcessCloud::new(ProcessOptions {
        consul_bin: rig.dir.join("agent.sh"),
        ..rig.cloud.inner.options.clone()
    })
    .unwrap();
    let port = cloud.start_client(0).unwrap();
    assert_eq!(cloud.start_client(0).unwrap(), port);
    assert_eq!(rig.replica().start_client(0).unwrap(), port);
    assert_eq!(cloud.stop_all().unwrap(), 4);
    assert!(rig.cloud.live_machines().unwrap().is_empty());
}
