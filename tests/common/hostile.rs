//! A hostile Consul agent on loopback: raw TCP, so that it can do what no well-behaved HTTP
//! server would: cut a body short, close mid-body, trickle a byte a second, send 50 MB, leave
//! out `X-Consul-Index`. Each path is one case; it counts the requests each case gets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the agent does for a request, chosen by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Case {
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with a proxy's HTML error page.
    Html,
    /// Headers promise 1,000 bytes; 10 are sent, then the connection closes.
    MidBody,
    /// A complete JSON document, shorter than the Content-Length, then the connection closes.
    Short,
    /// Headers, then a byte a second for as long as the client listens.
    Trickle,
    /// A 50 MB JSON answer.
    Huge,
    /// A good answer without `X-Consul-Index`.
    NoIndex,
    /// A good answer whose `X-Consul-Index` is not a number.
    BadIndex,
    /// An object where Consul sends a list.
    Object,
    /// The event list: one event at first, then a new event's ID listed 1,000 times.
    DupEvents,
    /// A well-behaved key: one change, then blocking reads that wait out `?wait`.
    Good,
}

impl Case {
    pub const HOSTILE: [Case; 10] = [
        Case::Garbage,
        Case::Html,
        Case::MidBody,
        Case::Short,
        Case::Trickle,
        Case::Huge,
        Case::NoIndex,
        Case::BadIndex,
        Case::Object,
        Case::DupEvents,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::Garbage => "garbage",
            Case::Html => "html",
            Case::MidBody => "midbody",
            Case::Short => "short",
            Case::Trickle => "trickle",
            Case::Huge => "huge",
            Case::NoIndex => "noindex",
            Case::BadIndex => "badindex",
            Case::Object => "object",
            Case::DupEvents => "dupevents",
            Case::Good => "good",
        }
    }

    fn of_path(path: &str) -> Option<Case> {
        let (path, _) = path.split_once('?').unwrap_or((path, ""));
        if path == "/v1/event/list" {
            return Some(Case::DupEvents);
        }
        if path == "/v1/health/service/object" {
            return Some(Case::Object);
        }
        let key = path.strip_prefix("/v1/kv/")?;
        [Case::Good]
            .into_iter()
            .chain(Case::HOSTILE)
            .find(|c| c.name() == key)
    }
}

pub struct Hostile {
    pub url: String,
    counts: Arc<Mutex<HashMap<Case, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Hostile {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let c = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, c.clone()));
            }
        });
        Self { url, counts, task }
    }

    /// Requests `case` has had so far.
    pub fn count(&self, case: Case) -> usize {
        self.counts.lock().unwrap().get(&case).copied().unwrap_or(0)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: requests one after another (keep-alive) until a case closes it.
async fn serve(mut conn: TcpStream, counts: Arc<Mutex<HashMap<Case, usize>>>) {
    loop {
        let Some(target) = read_head(&mut conn).await else {
            return;
        };
        let Some(case) = Case::of_path(&target) else {
            let _ = respond(&mut conn, 404, &[], b"no such case").await;
            continue;
        };
        *counts.lock().unwrap().entry(case).or_default() += 1;
        if !answer(&mut conn, case, &target).await {
            return;
        }
    }
}

/// The request line's target, after the whole head is read; `None` when the client is gone.
async fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.ok()?;
        if n == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1).map(str::to_owned)
}

fn query_index(target: &str) -> Option<u64> {
    let (_, q) = target.split_once('?')?;
    q.split('&')
        .find_map(|p| p.strip_prefix("index="))
        .and_then(|v| v.parse().ok())
}

fn query_wait(target: &str) -> Duration {
    target
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|p| p.strip_prefix("wait=")))
        .and_then(|w| w.strip_suffix('s'))
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs)
}

fn kv(key: &str, value: &str, index: u64) -> Vec<u8> {
    use base64::Engine;
    let v = base64::engine::general_purpose::STANDARD.encode(value);
    format!(
        r#"[{{"LockIndex":0,"Key":"{key}","Flags":0,"Value":"{v}","CreateIndex":{index},"ModifyIndex":{index}}}]"#
    )
    .into_bytes()
}

async fn respond(
    conn: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body).await
}

fn index(i: u64) -> Vec<(&'static str, String)> {
    vec![
        ("X-Consul-Index", i.to_string()),
        ("Content-Type", "application/json".into()),
    ]
}

/// Answers one request; false when the connection is done.
async fn answer(conn: &mut TcpStream, case: Case, target: &str) -> bool {
    let ok = match case {
        Case::Garbage => respond(conn, 200, &index(5), b"{{{ not json").await,
        Case::Html => {
            let page = b"<html><body><h1>502 Bad Gateway</h1></body></html>";
            let headers = [
                ("X-Consul-Index", "5".to_owned()),
                ("Content-Type", "text/html".to_owned()),
            ];
            respond(conn, 200, &headers, page).await
        }
        Case::MidBody => {
            let head = "HTTP/1.1 200 OK\r\nX-Consul-Index: 5\r\nContent-Length: 1000\r\n\r\n";
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(b"[{\"Key\":\"m").await;
            return false;
        }
        Case::Short => {
            let body = kv("short", "x", 5);
            let head = format!(
                "HTTP/1.1 200 OK\r\nX-Consul-Index: 5\r\nContent-Length: {}\r\n\r\n",
                body.len() + 500
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(&body).await;
            return false;
        }
        Case::Trickle => {
            let head = "HTTP/1.1 200 OK\r\nX-Consul-Index: 5\r\nContent-Length: 100000\r\n\r\n";
            if conn.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            loop {
                if conn.write_all(b" ").await.is_err() {
                    return false;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Case::Huge => {
            // 50 entries of 1 MB, written a chunk at a time so the agent itself stays small.
            let entry = format!("{{\"Key\":\"huge\",\"Value\":\"{}\"}}", "x".repeat(1 << 20));
            let len = 2 + 50 * entry.len() + 49;
            let head = format!(
                "HTTP/1.1 200 OK\r\nX-Consul-Index: 5\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n["
            );
            let mut sent = conn.write_all(head.as_bytes()).await;
            for i in 0..50 {
                if sent.is_err() {
                    break;
                }
                if i > 0 {
                    sent = conn.write_all(b",").await;
                }
                if sent.is_ok() {
                    sent = conn.write_all(entry.as_bytes()).await;
                }
            }
            match sent {
                Ok(()) => conn.write_all(b"]").await,
                Err(e) => Err(e),
            }
        }
        Case::NoIndex => {
            let headers = [("Content-Type", "application/json".to_owned())];
            respond(conn, 200, &headers, &kv("noindex", "x", 5)).await
        }
        Case::BadIndex => {
            let headers = [("X-Consul-Index", "abc".to_owned())];
            respond(conn, 200, &headers, &kv("badindex", "x", 5)).await
        }
        Case::Object => respond(conn, 200, &index(5), br#"{"not":"a list"}"#).await,
        Case::DupEvents => {
            let event = |id: &str, ltime: u64| {
                format!(
                    r#"{{"ID":"{id}","Name":"go","Payload":null,"NodeFilter":"","ServiceFilter":"","TagFilter":"","Version":1,"LTime":{ltime}}}"#
                )
            };
            match query_index(target) {
                None => {
                    let body = format!("[{}]", event("e-1", 1));
                    respond(conn, 200, &index(101), body.as_bytes()).await
                }
                Some(101) => {
                    let mut list = vec![event("e-1", 1)];
                    list.extend((0..1000).map(|_| event("e-2", 2)));
                    let body = format!("[{}]", list.join(","));
                    respond(conn, 200, &index(202), body.as_bytes()).await
                }
                Some(i) => {
                    tokio::time::sleep(query_wait(target)).await;
                    let mut list = vec![event("e-1", 1)];
                    list.extend((0..1000).map(|_| event("e-2", 2)));
                    let body = format!("[{}]", list.join(","));
                    respond(conn, 200, &index(i), body.as_bytes()).await
                }
            }
        }
        Case::Good => match query_index(target) {
            None => respond(conn, 200, &index(10), &kv("good", "v1", 10)).await,
            Some(10) => respond(conn, 200, &index(11), &kv("good", "v2", 11)).await,
            Some(i) => {
                tokio::time::sleep(query_wait(target)).await;
                respond(conn, 200, &index(i), &kv("good", "v2", i)).await
            }
        },
    };
    ok.is_ok()
}
