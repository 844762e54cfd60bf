//! TLS and the token, one way everywhere, against real Consul agents serving HTTPS only
//! (`CONSUL_BIN`, Debian's 1.8.7 in CI), with a CA and certificates the test makes with
//! `consul tls ca create` / `consul tls cert create`.
//!
//! Every client here is built the way every command builds one: `[consul]` and the consul
//! CLI's variables resolved by `rehydrator_config`, then `ConsulConfig::from_settings`. Cases:
//! server-only TLS through the variables alone and through a configuration file whose bare
//! `host:port` address meets `CONSUL_HTTP_SSL=true` (it used to go out as plain HTTP, token
//! included); mutual TLS without and with a client certificate; a wrong CA; a wrong server
//! name and the right one; plain HTTP to the TLS port; and `rehydrator status --config` as an
//! operator runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::moto::distinct_free_ports;
use rehydrator::consul::{Client, ConsulConfig, ConsulError};

/// How long an agent may take to serve HTTPS.
const START_BOUND: Duration = Duration::from_secs(30);

/// A scratch directory with a CA, a server and a client certificate from `consul tls`, and a
/// second CA that signed nothing of the agents'.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(bin: &Path) -> Self {
        let dir = std::env::temp_dir().join(format!("rehydrator-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let other = dir.join("other");
        std::fs::create_dir_all(&other).unwrap();
        let consul = |args: &[&str], cwd: &Path| {
            let out = Command::new(bin)
                .args(args)
                .current_dir(cwd)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "consul {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        consul(&["tls", "ca", "create"], &dir);
        consul(&["tls", "cert", "create", "-server", "-dc", "dc1"], &dir);
        consul(&["tls", "cert", "create", "-client", "-dc", "dc1"], &dir);
        consul(&["tls", "ca", "create"], &other);
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn ca(&self) -> String {
        self.path("consul-agent-ca.pem")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A dev agent serving HTTPS only on its own port; `mutual`: it asks for a client certificate.
struct TlsAgent {
    port: u16,
    child: Child,
}

impl Drop for TlsAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsAgent {
    /// Started on fresh ports, again if another process took one of them first (as the
    /// plain dev agent is).
    async fn start(bin: &Path, pki: &Pki, mutual: bool) -> Self {
        for _ in 0..3 {
            if let Some(agent) = Self::try_start(bin, pki, mutual).await {
                return agent;
            }
        }
        panic!("the TLS agent lost its ports to other processes three times");
    }

    /// `None` when the agent exited because a port was taken.
    async fn try_start(bin: &Path, pki: &Pki, mutual: bool) -> Option<Self> {
        let [port, lan, wan, server] = distinct_free_ports();
        let hcl = format!(
            r#"ports {{
  http = -1
  https = {port}
  dns = -1
  grpc = -1
  serf_lan = {lan}
  serf_wan = {wan}
  server = {server}
}}
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
verify_incoming_https = {mutual}
"#,
            ca = pki.ca(),
            cert = pki.path("dc1-server-consul-0.pem"),
            key = pki.path("dc1-server-consul-0-key.pem"),
        );
        let file = pki.dir.join(format!("agent-{port}.hcl"));
        std::fs::write(&file, hcl).unwrap();
        // Its output is kept (in the PKI's directory, removed with it) so that a failure to
        // start says why.
        let log = pki.dir.join(format!("agent-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(["agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1"])
            .arg(format!("-config-file={}", file.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut agent = Self { port, child };
        // Up once its HTTPS port answers a handshake with the right CA (and the client
        // certificate it may ask for).
        let client = agent.client(pki, &[("CONSUL_CLIENT_CERT", "client")]);
        let started = Instant::now();
        while client.status_leader().await.ok().flatten().is_none() {
            let output = || std::fs::read_to_string(&log).unwrap_or_default();
            if agent.child.try_wait().ok().flatten().is_some()
                && output().contains("address already in use")
            {
                return None;
            }
            assert!(
                started.elapsed() < START_BOUND,
                "the TLS agent did not serve within {START_BOUND:?}; its output: {}",
                output()
            );
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        Some(agent)
    }

    /// A client from the CLI's variables: the agent's address as a bare `host:port` with
    /// `CONSUL_HTTP_SSL=true` and the test CA, plus `extra` (`("CONSUL_CLIENT_CERT", "client")`
    /// stands for the client certificate and key).
    fn client(&self, pki: &Pki, extra: &[(&str, &str)]) -> Client {
        client_from(&self.vars(pki, extra)).unwrap()
    }

    fn vars(&self, pki: &Pki, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = [
            ("CONSUL_HTTP_ADDR", format!("127.0.0.1:{}", self.port)),
            ("CONSUL_HTTP_SSL", "true".to_owned()),
            ("CONSUL_CACERT", pki.ca()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in extra {
            if *k == "CONSUL_CLIENT_CERT" && *v == "client" {
                env.insert(k.to_string(), pki.path("dc1-client-consul-0.pem"));
                env.insert(
                    "CONSUL_CLIENT_KEY".into(),
                    pki.path("dc1-client-consul-0-key.pem"),
                );
            } else {
                env.insert(k.to_string(), v.to_string());
            }
        }
        env
    }
}

/// A client as the commands without `--config` build one.
fn client_from(env: &HashMap<String, String>) -> Result<Client, ConsulError> {
    let settings = rehydrator_config::consul_from_env(env)
        .map_err(|e| ConsulError::Config(rehydrator::consul::config::field_errors(&e)))?;
    Client::new(ConsulConfig::from_settings(&settings)?)
}

/// The leader, or the error's text.
async fn leader(client: &Client) -> Result<String, String> {
    client
        .status_leader()
        .await
        .map(|l| l.unwrap_or_default())
        .map_err(|e| e.to_string())
}

#[actix_rt::test]
async fn tls_and_the_token_one_way_everywhere_on_real_consul() {
    let Some(bin) = common::consul_bin() else {
        return;
    };
    common::bounded_for(Duration::from_secs(120), async {
        let pki = Pki::new(&bin);
        let plain = TlsAgent::start(&bin, &pki, false).await;
        let mutual = TlsAgent::start(&bin, &pki, true).await;
        let mut checks = 0;

        // Server-only TLS from the variables alone: a bare host:port with CONSUL_HTTP_SSL.
        let c = plain.client(&pki, &[]);
        assert!(c.address().starts_with("https://"), "{}", c.address());
        assert!(leader(&c).await.is_ok_and(|l| !l.is_empty()));
        checks += 1;

        // The same through a configuration file: its bare address meets CONSUL_HTTP_SSL=true.
        let file = pki.dir.join("rehydrator.toml");
        std::fs::write(
            &file,
            format!(
                "[cluster]\nname = \"tls\"\n[consul]\naddress = \"127.0.0.1:{}\"\n",
                plain.port
            ),
        )
        .unwrap();
        let env: HashMap<String, String> = [
            ("CONSUL_HTTP_SSL", "true".to_owned()),
            ("CONSUL_CACERT", pki.ca()),
            ("CONSUL_HTTP_TOKEN", "a-token".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let settings = rehydrator_config::load_with_env(&file, &env).unwrap();
        let config = ConsulConfig::from_settings(&settings.consul).unwrap();
        assert!(config.is_https(), "{config:?}");
        let c = Client::new(config).unwrap();
        assert!(leader(&c).await.is_ok());
        checks += 1;

        // Mutual TLS: refused without a client certificate, served with one.
        let refused = leader(&mutual.client(&pki, &[])).await;
        assert!(refused.is_err(), "{refused:?}");
        let with_cert = leader(&mutual.client(&pki, &[("CONSUL_CLIENT_CERT", "client")])).await;
        assert!(with_cert.is_ok(), "{with_cert:?}");
        checks += 2;

        // A CA that signed nothing of the agent's: the handshake fails, naming the certificate.
        let other_ca = pki
            .dir
            .join("other/consul-agent-ca.pem")
            .display()
            .to_string();
        let wrong_ca = leader(&plain.client(&pki, &[("CONSUL_CACERT", &other_ca)])).await;
        assert!(
            wrong_ca
                .as_ref()
                .is_err_and(|e| e.to_lowercase().contains("certificate")),
            "{wrong_ca:?}"
        );
        checks += 1;

        // The name the certificate must carry: a wrong one fails, server.dc1.consul passes.
        let wrong =
            leader(&plain.client(&pki, &[("CONSUL_TLS_SERVER_NAME", "server.dc2.consul")])).await;
        assert!(
            wrong
                .as_ref()
                .is_err_and(|e| e.to_lowercase().contains("certificate")),
            "{wrong:?}"
        );
        let right =
            leader(&plain.client(&pki, &[("CONSUL_TLS_SERVER_NAME", "server.dc1.consul")])).await;
        assert!(right.is_ok(), "{right:?}");
        checks += 2;

        // Plain HTTP to the TLS port says so.
        let http = client_from(&HashMap::from([(
            "CONSUL_HTTP_ADDR".to_owned(),
            format!("http://127.0.0.1:{}", plain.port),
        )]))
        .unwrap();
        let said = leader(&http).await;
        assert!(said.as_ref().is_err_and(|e| e.contains("TLS")), "{said:?}");
        checks += 1;

        // `status --config` as an operator runs it, with the TLS variables in the environment.
        let out = Command::new(env!("CARGO_BIN_EXE_rehydrator"))
            .args(["status", "--config"])
            .arg(&file)
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_TOKEN_FILE")
            .env("CONSUL_HTTP_SSL", "true")
            .env("CONSUL_CACERT", pki.ca())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "status --config over TLS: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        checks += 1;
        println!("TLS on real Consul: {checks} checks passed");
    })
    .await;
}
