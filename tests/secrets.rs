//! No secret in a URL reaches anything: a `rehydrator run` whose `http` actions and `[notify]`
//! URLs carry `user:pass@` and secret query values (`sig`, `apikey`, `token`), logging at
//! trace, with one action posting to a local receiver and one to a closed port (its failure
//! is logged and receipted). Every surface is grepped for every planted secret: the log, the
//! status endpoint (`/v1/status`, the dashboard, `/metrics`), `status` and `status --json`,
//! `check-config`, every value under `rehydrator/` in KV, and the process's arguments. The
//! receiver gets the credentials as Basic auth, and the URL without them. The status endpoint's
//! own token (`status.token_file`) is planted too, and the endpoint read with it and without.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::common::endpoint::{endpoint_url, scratch, spawn_run_at};
use crate::common::{bounded, eventually};
use base64::Engine;

/// What the test plants; none may appear anywhere.
const SECRETS: [&str; 7] = [
    "pa55word-1",
    "SIG-SECRET-2",
    "DEADPASS-3",
    "APIKEY-SECRET-4",
    "NOTIFYPASS-5",
    "NOTIFY-SECRET-6",
    // The status endpoint's token, from status.token_file.
    "STATUS-TOKEN-7",
];

/// What the receiver saw: each request's path and query, and its Authorization header.
#[derive(Default)]
struct Seen(Mutex<Vec<(String, String)>>);

async fn hook(
    req: actix_web::HttpRequest,
    seen: actix_web::web::Data<Seen>,
) -> actix_web::HttpResponse {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let target = req
        .uri()
        .path_and_query()
        .map(ToString::to_string)
        .unwrap_or_default();
    seen.0.lock().unwrap().push((target, auth));
    actix_web::HttpResponse::NoContent().finish()
}

/// Every planted secret found in `text`, named with `surface`.
fn found(surface: &str, text: &str) -> Vec<String> {
    SECRETS
        .iter()
        .filter(|s| text.contains(*s))
        .map(|s| format!("{s} in {surface}"))
        .collect()
}

#[actix_rt::test]
async fn no_secret_in_a_url_reaches_any_surface() {
    bounded(async {
        let sim = common::sim();
        let seen = actix_web::web::Data::new(Seen::default());
        let (hook_url, server) = common::serve_post("/hook", seen.clone(), hook);
        let closed = common::moto::free_port();
        let hook_with_secrets = hook_url.replacen(
            "http://",
            &format!("http://user:{}@", SECRETS[0]),
            1,
        ) + &format!("?sig={}&x=1", SECRETS[1]);
        let dir = scratch("secrets");
        let token_file = dir.join("status-token");
        std::fs::write(&token_file, SECRETS[6]).unwrap();
        let config = dir.join("rehydrator.toml");
        std::fs::write(
            &config,
            format!(
                r#"[cluster]
name = "sec"
[consul]
address = "{consul}"
[status]
listen = "127.0.0.1:0"
token_file = "{token_file}"
[notify]
url = "http://n:{np}@127.0.0.1:{closed}/n?token={nt}"
[action.hook]
type = "http"
url = "{hook_with_secrets}"
[action.dead]
type = "http"
url = "http://d:{dp}@127.0.0.1:{closed}/x?apikey={dk}"
timeout = "2s"
[[watch]]
name = "go"
type = "event"
event = "go"
actions = ["hook", "dead"]
"#,
                consul = sim.url(),
                token_file = token_file.display(),
                np = SECRETS[4],
                nt = SECRETS[5],
                dp = SECRETS[2],
                dk = SECRETS[3],
            ),
        )
        .unwrap();
        let log = dir.join("run.log");
        let run = spawn_run_at(&config, &log, "trace");
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        let status = eventually("the status endpoint", Duration::from_secs(30), || {
            let text = log_text();
            async move { endpoint_url(&text) }
        })
        .await;
        eventually("the event watch's baseline", Duration::from_secs(30), || {
            let text = log_text();
            async move { text.contains("Baseline taken.").then_some(()) }
        })
        .await;
        let http = awc::Client::default();
        let fired = http
            .put(format!("{}/v1/event/fire/go", sim.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(fired.status(), 200);

        // The receiver got the credentials as Basic auth, and a URL without them.
        let (target, auth) = eventually("the hook's post", Duration::from_secs(30), || {
            let first = seen.0.lock().unwrap().first().cloned();
            async move { first }
        })
        .await;
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("user:{}", SECRETS[0]));
        assert_eq!(auth, format!("Basic {basic}"));
        assert!(target.starts_with("/hook?sig="), "{target}");
        // The dead action's failure is logged (and receipted once its attempts are spent).
        eventually("the dead action's failure logged", Duration::from_secs(30), || {
            let text = log_text();
            async move { text.contains("POST http://***@127.0.0.1").then_some(()) }
        })
        .await;

        let mut leaks = Vec::new();
        for path in ["/v1/status", "/", "/metrics"] {
            // With the token, and without it (a 401 for the first two).
            for bearer in [Some(format!("Bearer {}", SECRETS[6])), None] {
                let mut req = http.get(format!("{status}{path}"));
                if let Some(b) = &bearer {
                    req = req.insert_header(("authorization", b.as_str()));
                }
                let mut resp = req.send().await.unwrap();
                assert_eq!(
                    resp.status().as_u16(),
                    if bearer.is_none() && path != "/metrics" { 401 } else { 200 },
                    "{path}"
                );
                let body = resp.body().limit(8 << 20).await.unwrap();
                let mut text = String::from_utf8_lossy(&body).into_owned();
                for (name, value) in resp.headers() {
                    text.push_str(&format!("\n{name}: {}", value.to_str().unwrap_or("")));
                }
                leaks.extend(found(path, &text));
            }
        }
        for args in [
            vec!["status", "--config"],
            vec!["status", "--json", "--config"],
            vec!["check-config", "--config"],
        ] {
            let out = Command::new(env!("CARGO_BIN_EXE_rehydrator"))
                .args(&args)
                .arg(&config)
                .env_remove("CONSUL_HTTP_ADDR")
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            leaks.extend(found(&args.join(" "), &text));
        }
        let mut resp = http
            .get(format!("{}/v1/kv/rehydrator/?recurse", sim.url()))
            .send()
            .await
            .unwrap();
        let entries: serde_json::Value = resp.json().limit(8 << 20).await.unwrap();
        let kv: String = entries
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["Value"].as_str())
            .filter_map(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .collect();
        assert!(!kv.is_empty(), "receipts were written");
        leaks.extend(found("KV", &kv));
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", run.0.id())).unwrap_or_default();
        leaks.extend(found("argv", &String::from_utf8_lossy(&cmdline)));
        drop(run);
        let text = log_text();
        assert!(
            text.contains("TRACE"),
            "the log is at trace: {}",
            &text[..text.len().min(2000)]
        );
        leaks.extend(found("the log", &text));
        server.stop(true).await;
        println!(
            "planted {} secrets; surfaces checked: log (trace, {} bytes), /v1/status, dashboard, /metrics, status, status --json, check-config, KV ({} bytes), argv; found: {}",
            SECRETS.len(),
            text.len(),
            kv.len(),
            leaks.len()
        );
        assert!(leaks.is_empty(), "{leaks:#?}");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
