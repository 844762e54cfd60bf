//! moto's EC2 server for the tests that run the EC2 backend through the real SDK client: a
//! child process on an ephemeral loopback port, killed on drop, and the SDK configured for it
//! with static test keys (the process environment is left alone).
//!
//! moto is a Python package (`moto[server]`) that `scripts/test.sh` installs; without it the
//! tests fail saying so rather than pass without testing anything.

use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{InstanceType, RequestLaunchTemplateData};
use rehydrator::cloud::ec2::https_client;
use rehydrator_config::AwsSettings;

/// How long moto may take to start answering (it imports a lot of Python).
const MOTO_START: Duration = Duration::from_secs(30);

/// moto's EC2 server on an ephemeral loopback port; killed when dropped.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free right now on 127.0.0.1 (moto binds it a moment later).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn moto_command(program: &str, args: &[&str], port: u16) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        // moto signs nothing, but the same variables a client would see keep it off any real
        // account and off the instance metadata service.
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Starts `moto_server` (else `python3 -m moto.server`) and waits until it answers HTTP.
pub fn moto() -> Moto {
    let port = free_port();
    let child = moto_command("moto_server", &[], port)
        .spawn()
        .or_else(|_| moto_command("python3", &["-m", "moto.server"], port).spawn())
        .expect("neither moto_server nor python3 could be started: install moto with `python3 -m pip install 'moto[server]'` (scripts/test.sh does)");
    let mut moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + MOTO_START;
    loop {
        if let Some(status) = moto.child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut stderr) = moto.child.stderr.take() {
                let _ = stderr.read_to_string(&mut err);
            }
            panic!(
                "moto's server exited ({status}) before answering; is moto installed? \
                 `python3 -m pip install 'moto[server]'` (scripts/test.sh does). Its stderr:\n{err}"
            );
        }
        if answers_http(addr) {
            return moto;
        }
        assert!(
            Instant::now() < deadline,
            "moto's server did not answer on {addr} within {MOTO_START:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether something on `addr` answers an HTTP request with a status line.
fn answers_http(addr: SocketAddr) -> bool {
    use std::io::Write as _;
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

pub fn credentials() -> Credentials {
    Credentials::new("testing", "testing", None, None, "tests")
}

/// The SDK configured explicitly for moto: static test keys, its endpoint, us-east-1.
pub fn client(url: &str) -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(credentials())
        .endpoint_url(url)
        .http_client(https_client())
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

pub fn settings(url: &str) -> AwsSettings {
    AwsSettings {
        region: Some("us-east-1".into()),
        endpoint_url: Some(url.into()),
        launch_template: "consul-server".into(),
        image_name: "consul-server-*".into(),
        image_owners: vec!["self".into()],
        ecs_cluster: None,
        task_definition: None,
        registration_timeout: None,
    }
}

/// Registers an AMI owned by moto's account; its CreationDate is now, to the second.
pub async fn register(ec2: &aws_sdk_ec2::Client, name: &str) -> String {
    ec2.register_image()
        .name(name)
        .send()
        .await
        .unwrap()
        .image_id()
        .unwrap()
        .to_owned()
}

/// The launch template `settings` names ("consul-server"), on `image` by default.
pub async fn launch_template(ec2: &aws_sdk_ec2::Client, image: &str) {
    ec2.create_launch_template()
        .launch_template_name("consul-server")
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(image)
                .instance_type(InstanceType::T3Micro)
                .build(),
        )
        .send()
        .await
        .unwrap();
}
