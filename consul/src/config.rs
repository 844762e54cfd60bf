//! Where the Consul agent is and how to talk to it: address, ACL token, datacenter, TLS.
//!
//! One resolution for every command: the settings crate reads `[consul]` and the `consul`
//! CLI's environment variables (so an operator's shell that works with `consul members` works
//! with rehydrator, with a configuration file or without one); `ConsulConfig::from_settings`
//! turns the result into this, and `Client::new` into a client.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::error::ConsulError;

/// The consul CLI's default agent address.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8500";

/// An ACL token. Its `Debug` prints `***` so a config or client can be logged whole; the only
/// way to the secret is [`Token::expose`], called where the header is set.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(secret: impl Into<String>) -> Self {
        Token(secret.into())
    }

    /// The secret itself, for the `X-Consul-Token` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How HTTPS connections are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the agents' certificates (`CONSUL_CACERT`). Without one
    /// (and without `ca_path`) the system's roots are used.
    pub ca_file: Option<PathBuf>,
    /// Directory of PEM CA files (`CONSUL_CAPATH`).
    pub ca_path: Option<PathBuf>,
    /// Client certificate and key for agents with `verify_incoming` (`CONSUL_CLIENT_CERT`,
    /// `CONSUL_CLIENT_KEY`); both or neither.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The name the agent's certificate must carry when it is not the address's host
    /// (`CONSUL_TLS_SERVER_NAME`), e.g. `server.dc1.consul` for an agent reached by IP.
    pub server_name: Option<String>,
    /// Check the agent's certificate. Only an explicit `CONSUL_HTTP_SSL_VERIFY=false` turns
    /// this off.
    pub verify: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca_file: None,
            ca_path: None,
            client_cert: None,
            client_key: None,
            server_name: None,
            verify: true,
        }
    }
}

/// Everything the client needs to reach one Consul agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsulConfig {
    /// Base URL of the agent, `http://host:port` or `https://host:port`, without a trailing `/`.
    pub address: String,
    /// Sent as `X-Consul-Token` on every request when set.
    pub token: Option<Token>,
    /// Sent as `?dc=` on every request when set; default: the agent's own datacenter.
    pub datacenter: Option<String>,
    pub tls: TlsConfig,
    /// Timeout of a request that does not block; a blocking query gets its wait on top.
    /// Default 30s.
    pub timeout: Duration,
    /// Timeout of establishing a connection (TCP and TLS). Default 5s.
    pub connect_timeout: Duration,
    /// Most connections open to the agent at once; 0 (the default) means no limit.
    ///
    /// A blocking query holds its connection for as long as it waits (5 minutes by default),
    /// so every watch needs a connection of its own. awc's default cap of 100 would make the
    /// 101st watch, and every lock, session and receipt call behind it, queue until some
    /// watch's query answers. Each idle connection costs a socket (mind `ulimit -n`: 10,000
    /// watches need 10,000 descriptors) and a few KiB.
    pub max_connections: usize,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            address: DEFAULT_ADDRESS.into(),
            token: None,
            datacenter: None,
            tls: TlsConfig::default(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_connections: 0,
        }
    }
}

impl ConsulConfig {
    /// A config for the agent at `address` (a URL or `host:port`), other settings default.
    pub fn with_address(address: &str) -> Result<Self, ConsulError> {
        Ok(Self {
            address: normalize_address(address, false)?,
            ..Self::default()
        })
    }

    /// The client settings `[consul]` resolved to (`rehydrator_config`, which applies the
    /// consul CLI's variables): reads the token file, if one is named.
    pub fn from_settings(c: &rehydrator_config::ConsulSettings) -> Result<Self, ConsulError> {
        let mut config = Self::with_address(&c.address)?;
        config.token = match (&c.token, &c.token_file) {
            (Some(t), _) => Some(Token::new(t.expose())),
            (None, Some(file)) => Some(read_token_file(file)?),
            (None, None) => None,
        };
        config.datacenter = c.datacenter.clone();
        config.tls = TlsConfig {
            ca_file: c.ca_file.clone(),
            ca_path: c.ca_path.clone(),
            client_cert: c.client_cert.clone(),
            client_key: c.client_key.clone(),
            server_name: c.tls_server_name.clone(),
            verify: c.tls_verify,
        };
        config.validate()?;
        Ok(config)
    }

    /// From the consul CLI's variables in the process environment alone.
    pub fn from_env() -> Result<Self, ConsulError> {
        let env: std::collections::HashMap<String, String> = std::env::vars().collect();
        let settings = rehydrator_config::consul_from_env(&env)
            .map_err(|errs| ConsulError::Config(field_errors(&errs)))?;
        Self::from_settings(&settings)
    }

    /// Checks what `Client::new` relies on.
    pub fn validate(&self) -> Result<(), ConsulError> {
        normalize_address(&self.address, false)?;
        if self.tls.client_cert.is_some() != self.tls.client_key.is_some() {
            return Err(ConsulError::Config(
                "CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY must be set together".into(),
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConsulError::Config("timeout must be above zero".into()));
        }
        Ok(())
    }

    /// Whether the agent is reached over HTTPS.
    pub fn is_https(&self) -> bool {
        self.address.starts_with("https://")
    }
}

/// `http://h:p`, `https://h:p` or `h:p` (https when `ssl`) into a base URL without a trailing
/// slash (the settings crate's rule, which `check-config` applies too).
pub fn normalize_address(addr: &str, ssl: bool) -> Result<String, ConsulError> {
    rehydrator_config::normalize_address(addr, ssl)
        .map_err(|why| ConsulError::Config(format!("Consul address {:?}: {why}", redacted(addr))))
}

/// The settings' errors in one line: `consul.address: …; consul.client_key: …`.
pub fn field_errors(errs: &[rehydrator_config::FieldError]) -> String {
    errs.iter()
        .map(|e| format!("{}: {}", e.field, e.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `addr` with any credentials before an `@` shown as `***`.
fn redacted(addr: &str) -> String {
    let addr = addr.trim();
    match addr.rsplit_once('@') {
        None => addr.to_owned(),
        Some((before, after)) => match before.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://***@{after}"),
            None => format!("***@{after}"),
        },
    }
}

fn read_token_file(path: &std::path::Path) -> Result<Token, ConsulError> {
    // The error names the file, never its contents.
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConsulError::Config(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConsulError::Config(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(Token::new(token))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<ConsulConfig, ConsulError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let settings = rehydrator_config::consul_from_env(&map)
            .map_err(|errs| ConsulError::Config(field_errors(&errs)))?;
        ConsulConfig::from_settings(&settings)
    }

    #[test]
    fn defaults_match_the_cli() {
        let c = from(&[]).unwrap();
        assert_eq!(c.address, "http://127.0.0.1:8500");
        assert_eq!(c.token, None);
        assert!(c.tls.verify);
        assert!(!c.is_https());
    }

    #[test]
    fn connections_are_unlimited_by_default() {
        // A watch parks a blocking query on a connection of its own; awc's default cap of 100
        // would starve the 101st watch and the lock calls.
        assert_eq!(ConsulConfig::default().max_connections, 0);
        assert_eq!(from(&[]).unwrap().max_connections, 0);
        assert_eq!(
            ConsulConfig::with_address("h:1").unwrap().max_connections,
            0
        );
    }

    #[test]
    fn address_forms() {
        let c = from(&[("CONSUL_HTTP_ADDR", "10.0.0.1:8500")]).unwrap();
        assert_eq!(c.address, "http://10.0.0.1:8500");
        let c = from(&[("CONSUL_HTTP_ADDR", "https://consul.example:8501/")]).unwrap();
        assert_eq!(c.address, "https://consul.example:8501");
        assert!(c.is_https());
        let c = from(&[
            ("CONSUL_HTTP_ADDR", "consul.example:8501"),
            ("CONSUL_HTTP_SSL", "true"),
        ])
        .unwrap();
        assert_eq!(c.address, "https://consul.example:8501");
        let c = from(&[("CONSUL_HTTP_SSL", "1")]).unwrap();
        assert_eq!(c.address, "https://127.0.0.1:8500");
        assert!(from(&[("CONSUL_HTTP_ADDR", "unix:///var/run/consul.sock")]).is_err());
        assert!(from(&[("CONSUL_HTTP_ADDR", "http://h:1/v1")]).is_err());
    }

    #[test]
    fn token_is_masked_in_debug() {
        let c = from(&[("CONSUL_HTTP_TOKEN", "s3cr3t-token")]).unwrap();
        assert_eq!(c.token.as_ref().map(Token::expose), Some("s3cr3t-token"));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("***"), "{dbg}");
    }

    #[test]
    fn token_file_is_read_and_token_wins_over_it() {
        let dir = std::env::temp_dir().join(format!("rehydrator-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let path = file.to_str().unwrap();
        let c = from(&[("CONSUL_HTTP_TOKEN_FILE", path)]).unwrap();
        assert_eq!(c.token.as_ref().map(Token::expose), Some("from-file"));
        let c = from(&[
            ("CONSUL_HTTP_TOKEN_FILE", path),
            ("CONSUL_HTTP_TOKEN", "from-env"),
        ])
        .unwrap();
        assert_eq!(c.token.as_ref().map(Token::expose), Some("from-env"));
        let missing = from(&[("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/token")]).unwrap_err();
        assert_eq!(missing.kind(), "config");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_settings() {
        let c = from(&[
            ("CONSUL_HTTP_ADDR", "https://c:8501"),
            ("CONSUL_CACERT", "/etc/consul/ca.pem"),
        ])
        .unwrap();
        assert_eq!(c.tls.ca_file, Some(PathBuf::from("/etc/consul/ca.pem")));
        assert!(c.tls.verify);
        let c = from(&[("CONSUL_HTTP_SSL_VERIFY", "false")]).unwrap();
        assert!(!c.tls.verify);
        // A typo must not silently disable verification.
        assert!(from(&[("CONSUL_HTTP_SSL_VERIFY", "nope")]).is_err());
        assert!(from(&[("CONSUL_CLIENT_CERT", "/c.pem")]).is_err());
    }
}
