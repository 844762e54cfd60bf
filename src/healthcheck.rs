//! `rehydrator healthcheck`: one GET of the status endpoint's `/healthz`, for the container's
//! `HEALTHCHECK` and the ECS task definition's health check. The runtime image has no curl, and
//! this runs every 30 seconds in every replica's container, so it is a few lines of blocking std
//! I/O under one deadline rather than an HTTP client and an async runtime.
//!
//! Healthy means the server answered `200` within the deadline; anything else (refused, no
//! answer, another status, not HTTP) is unhealthy, with the reason for Docker's health log.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Where the image's status endpoint listens (`REHYDRATOR_STATUS__LISTEN=0.0.0.0:9090`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:9090/healthz";
/// A status line longer than this is not HTTP.
const MAX_STATUS_LINE: usize = 1024;

/// Why the endpoint is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    /// The URL is not `http://host[:port][/path]`.
    #[error("healthcheck URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// No connection could be made.
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: std::io::Error,
    },
    /// No status line before the deadline.
    #[error("{url} did not answer within {after:?}")]
    Timeout { url: String, after: Duration },
    /// The endpoint answered, but not 200.
    #[error("{url} answered {status}")]
    Unhealthy { url: String, status: u16 },
    /// The answer does not start with an HTTP status line.
    #[error("{url} did not answer HTTP: {line:?}")]
    NotHttp { url: String, line: String },
}

/// The parts of an `http://` URL the check needs.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// `host:port`, for resolving and for the Host header.
    authority: String,
    path: String,
}

fn parse(url: &str) -> Result<Target, HealthcheckError> {
    let bad = |reason: &str| HealthcheckError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    // The check runs beside the listener it checks: plain http only.
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    // A port is present when the text after the last ':' is outside any IPv6 brackets.
    let has_port = authority
        .rfind(':')
        .is_some_and(|i| !authority[i..].contains(']'));
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok(Target {
        authority,
        path: path.to_owned(),
    })
}

/// GETs `url` and answers `Ok` only for a 200 within `timeout`.
pub fn check(url: &str, timeout: Duration) -> Result<(), HealthcheckError> {
    let target = parse(url)?;
    let deadline = Instant::now() + timeout;
    let timed_out = || HealthcheckError::Timeout {
        url: url.to_owned(),
        after: timeout,
    };
    let unreachable = |source| HealthcheckError::Unreachable {
        url: url.to_owned(),
        source,
    };
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };

    let addrs: Vec<SocketAddr> = target
        .authority
        .to_socket_addrs()
        .map_err(unreachable)?
        .collect();
    let mut last = std::io::Error::new(ErrorKind::NotFound, "the host resolved to no address");
    let mut stream = None;
    for addr in addrs {
        let left = remaining().ok_or_else(timed_out)?;
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let mut stream = match stream {
        Some(s) => s,
        None if last.kind() == ErrorKind::TimedOut => return Err(timed_out()),
        None => return Err(unreachable(last)),
    };

    let io = |e: std::io::Error| match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => timed_out(),
        _ => unreachable(e),
    };
    stream
        .set_write_timeout(Some(remaining().ok_or_else(timed_out)?))
        .map_err(io)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: rehydrator-healthcheck\r\n\r\n",
        target.path, target.authority
    );
    stream.write_all(request.as_bytes()).map_err(io)?;

    // Only the status line matters; read until its end, the deadline, or the size cap.
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < MAX_STATUS_LINE {
        stream
            .set_read_timeout(Some(remaining().ok_or_else(timed_out)?))
            .map_err(io)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or_default();
    let status = status_code(line).ok_or_else(|| HealthcheckError::NotHttp {
        url: url.to_owned(),
        line: line.chars().take(80).collect(),
    })?;
    if status == 200 {
        Ok(())
    } else {
        Err(HealthcheckError::Unhealthy {
            url: url.to_owned(),
            status,
        })
    }
}

/// The status of `HTTP/1.x NNN reason`.
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls_name_host_port_and_path() {
        let t = parse("http://127.0.0.1:9090/healthz").unwrap();
        assert_eq!(t.authority, "127.0.0.1:9090");
        assert_eq!(t.path, "/healthz");
        assert_eq!(parse("http://localhost").unwrap().authority, "localhost:80");
        assert_eq!(parse("http://localhost").unwrap().path, "/");
        assert_eq!(
            parse("http://[::1]:9090/x").unwrap().authority,
            "[::1]:9090"
        );
        assert_eq!(parse("http://[::1]/x").unwrap().authority, "[::1]:80");
        assert!(matches!(
            parse("https://127.0.0.1/healthz"),
            Err(HealthcheckError::Url { .. })
        ));
        assert!(matches!(
            parse("http:///healthz"),
            Err(HealthcheckError::Url { .. })
        ));
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_code("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(status_code("SSH-2.0-OpenSSH_9.2"), None);
        assert_eq!(status_code("HTTP/1.1 20 OK"), None);
        assert_eq!(status_code(""), None);
    }

    /// A server that answers one connection with `answer` (after reading the request).
    fn serve_once(answer: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer);
            }
        });
        format!("http://{addr}/healthz")
    }

    #[test]
    fn only_200_is_healthy() {
        let ok = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        check(&ok, Duration::from_secs(5)).unwrap();
        let down = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert!(matches!(
            check(&down, Duration::from_secs(5)),
            Err(HealthcheckError::Unhealthy { status: 503, .. })
        ));
        let garbage = serve_once(b"hello\r\n");
        assert!(matches!(
            check(&garbage, Duration::from_secs(5)),
            Err(HealthcheckError::NotHttp { .. })
        ));
    }

    #[test]
    fn a_silent_server_times_out_within_the_bound() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz", listener.local_addr().unwrap());
        // Accepted by the kernel's backlog, never answered.
        let started = Instant::now();
        let got = check(&url, Duration::from_millis(300));
        assert!(
            matches!(got, Err(HealthcheckError::Timeout { .. })),
            "{got:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }

    #[test]
    fn a_closed_port_is_unreachable() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let got = check(
            &format!("http://127.0.0.1:{port}/healthz"),
            Duration::from_secs(2),
        );
        assert!(
            matches!(got, Err(HealthcheckError::Unreachable { .. })),
            "{got:?}"
        );
    }
}
