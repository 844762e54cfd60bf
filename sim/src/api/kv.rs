//! The `/v1/kv/...` endpoint (`agent/kvs_endpoint.go`): decodes the request, reads the table
//! (`store::kv`) or applies a write through the leader (`fsm::kv`), and answers as Consul does.
//! rehydrator's lock and the demo's clients read and write here over HTTP.

use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::fsm::kv::apply;
use crate::http::{blocking, hold_for_leader, ApiError, Fresh, Params, QueryOptions, Read};
use crate::state::Sim;
use crate::store::kv::KvOp;
use crate::watch::Topic;

/// Consul's default `kv_max_value_size`.
pub const MAX_VALUE_SIZE: usize = 512 * 1024;

/// Registers `/v1/kv/{key}` for every method; the handler answers 405 itself, as Consul does.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/kv/{key:.*}", web::route().to(kv_endpoint));
}

async fn kv_endpoint(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let params = Params::from_request(&req);
    let opts = QueryOptions::parse(&params)?;
    // Consul takes the key from the decoded path, so `%2F` is a slash like any other.
    let raw = req.path().strip_prefix("/v1/kv/").unwrap_or_default();
    let key = percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned();
    match *req.method() {
        Method::GET if params.has("keys") => get_keys(&sim, &opts, &params, key).await,
        Method::GET => get(&sim, &opts, &params, key).await,
        Method::PUT => put(&sim, &opts, &params, &req, key, body).await,
        Method::DELETE => delete(&sim, &opts, &params, key).await,
        ref m => Err(ApiError::method_not_allowed(
            m.as_str(),
            &["GET", "PUT", "DELETE"],
        )),
    }
}

async fn get(
    sim: &Sim,
    opts: &QueryOptions,
    params: &Params,
    key: String,
) -> Result<HttpResponse, ApiError> {
    let recurse = params.has("recurse");
    if !recurse && key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    let (meta, entries) = blocking(sim, opts, Fresh::Greater, |st| {
        if recurse {
            let (index, entries) = st.kv.list(&key);
            Ok(Read {
                index,
                value: entries.into_iter().cloned().collect::<Vec<_>>(),
                topics: vec![Topic::Prefix(key.clone())],
            })
        } else {
            let (index, entry) = st.kv.get(&key);
            Ok(Read {
                index,
                value: entry.cloned().into_iter().collect(),
                topics: vec![Topic::Key(key.clone())],
            })
        }
    })
    .await?;
    if entries.is_empty() {
        let mut b = HttpResponse::NotFound();
        meta.headers(&mut b);
        return Ok(b.finish());
    }
    if params.has("raw") && !recurse {
        let mut b = HttpResponse::Ok();
        meta.headers(&mut b);
        // Consul's guard against a stored value being served as a page.
        b.content_type("text/plain")
            .insert_header(("X-Content-Type-Options", "nosniff"))
            .insert_header(("Content-Security-Policy", "sandbox"));
        let value = entries
            .into_iter()
            .next()
            .map(|e| e.value)
            .unwrap_or_default();
        return Ok(b.body(value));
    }
    Ok(meta.json(&entries))
}

async fn get_keys(
    sim: &Sim,
    opts: &QueryOptions,
    params: &Params,
    prefix: String,
) -> Result<HttpResponse, ApiError> {
    // Consul still honours its historic misspelling; the right spelling wins.
    let sep = params
        .get("separator")
        .or_else(|| params.get("seperator"))
        .unwrap_or_default()
        .to_owned();
    let (meta, keys) = blocking(sim, opts, Fresh::Greater, |st| {
        let (index, keys) = st.kv.keys(&prefix, &sep);
        Ok(Read {
            index,
            value: keys,
            topics: vec![Topic::Prefix(prefix.clone())],
        })
    })
    .await?;
    // The root answers an empty list; any other prefix with no keys is a 404.
    if keys.is_empty() && !prefix.is_empty() {
        let mut b = HttpResponse::NotFound();
        meta.headers(&mut b);
        return Ok(b.finish());
    }
    Ok(meta.json(&keys))
}

async fn put(
    sim: &Sim,
    opts: &QueryOptions,
    params: &Params,
    req: &HttpRequest,
    key: String,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    conflicting_flags(params, &["cas", "acquire", "release"])?;
    let flags = match params.get("flags") {
        Some(f) => parse_uint(f)?,
        None => 0,
    };
    let cas = params.get("cas").map(parse_uint).transpose()?;
    // Consul checks the declared length before reading the body.
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|l| *l > MAX_VALUE_SIZE as u64) {
        return Err(too_large(len));
    }
    let value = match body.to_bytes_limited(MAX_VALUE_SIZE).await {
        Ok(Ok(bytes)) => bytes.to_vec(),
        Ok(Err(e)) => return Err(ApiError::internal(e.to_string())),
        Err(_) => return Err(too_large(MAX_VALUE_SIZE as u64 + 1)),
    };
    let op = if let Some(session) = params.get("release") {
        KvOp::Unlock {
            key,
            value,
            flags,
            session: session.to_owned(),
        }
    } else if let Some(session) = params.get("acquire") {
        KvOp::Lock {
            key,
            value,
            flags,
            session: session.to_owned(),
        }
    } else if let Some(index) = cas {
        KvOp::Cas {
            key,
            value,
            flags,
            index,
        }
    } else {
        KvOp::Set { key, value, flags }
    };
    hold_for_leader(sim, opts.dc.as_deref()).await;
    let mut st = sim.lock();
    opts.check_dc(&st)?;
    let ok = apply(&mut st, op)?;
    Ok(json_bool(ok))
}

async fn delete(
    sim: &Sim,
    opts: &QueryOptions,
    params: &Params,
    key: String,
) -> Result<HttpResponse, ApiError> {
    conflicting_flags(params, &["recurse", "cas"])?;
    let op = if params.has("recurse") {
        KvOp::DeleteTree { prefix: key }
    } else if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    } else if let Some(cas) = params.get("cas") {
        KvOp::DeleteCas {
            key,
            index: parse_uint(cas)?,
        }
    } else {
        KvOp::Delete { key }
    };
    hold_for_leader(sim, opts.dc.as_deref()).await;
    let mut st = sim.lock();
    opts.check_dc(&st)?;
    let ok = apply(&mut st, op)?;
    Ok(json_bool(ok))
}

fn json_bool(b: bool) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(if b { "true" } else { "false" })
}

fn too_large(len: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "Request body({len} bytes) too large, max size: {MAX_VALUE_SIZE} bytes. See \
             https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
        ),
    )
}

/// Consul answers a pair of flags that cannot be combined with 400 and the query re-encoded.
fn conflicting_flags(params: &Params, flags: &[&str]) -> Result<(), ApiError> {
    if flags.iter().filter(|f| params.has(f)).count() > 1 {
        return Err(ApiError::bad_request(format!(
            "Conflicting flags: {}\n",
            params.encode()
        )));
    }
    Ok(())
}

/// Go's `strconv.ParseUint(s, 10, 64)`; Consul returns its error as a 500.
fn parse_uint(s: &str) -> Result<u64, ApiError> {
    let err = |why: &str| ApiError::internal(format!("strconv.ParseUint: parsing {s:?}: {why}"));
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("invalid syntax"));
    }
    s.parse::<u64>().map_err(|_| err("value out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_uint_matches_go() {
        assert_eq!(parse_uint("42").ok(), Some(42));
        let e = parse_uint("abc").err().map(|e| (e.status, e.message));
        assert_eq!(
            e,
            Some((
                StatusCode::INTERNAL_SERVER_ERROR,
                "strconv.ParseUint: parsing \"abc\": invalid syntax".to_string()
            ))
        );
        assert!(parse_uint("+1").is_err());
        assert!(parse_uint("99999999999999999999").is_err());
    }
}

#[cfg(test)]
mod http_tests {
    use std::time::Duration;

    use super::*;
    use crate::testkit::{bounded, Api};
    use crate::watch::Change;

    #[actix_rt::test]
    async fn put_get_keys_raw_and_404_over_http() {
        bounded(async {
            let api = Api::start(1.0);
            let r = api.get("/v1/kv/app/a").await;
            assert_eq!(r.status, 404);
            assert!(r.body.is_empty(), "Consul's 404 has no body");
            assert!(
                r.index.is_some_and(|i| i >= 1),
                "404 still carries X-Consul-Index"
            );
            let r = api.put("/v1/kv/app/a?flags=42", b"hello").await;
            assert_eq!((r.status, r.text()), (200, "true".into()));
            api.put("/v1/kv/app/b/c", b"").await;
            let r = api.get("/v1/kv/app/a").await;
            let e = &r.json()[0];
            assert_eq!(e["Value"], "aGVsbG8=");
            assert_eq!(e["Flags"], 42);
            assert!(e.get("Session").is_none(), "Session is omitempty");
            assert_eq!(r.index, e["ModifyIndex"].as_u64());
            let r = api.get("/v1/kv/app/a?raw").await;
            assert_eq!(r.body, b"hello");
            assert_eq!(r.header("Content-Type").as_deref(), Some("text/plain"));
            let r = api.get("/v1/kv/app/?recurse").await;
            assert_eq!(r.json().as_array().map(Vec::len), Some(2));
            assert_eq!(r.json()[1]["Value"], serde_json::Value::Null);
            let r = api.get("/v1/kv/app/?keys&separator=/").await;
            assert_eq!(r.json(), serde_json::json!(["app/a", "app/b/"]));
            let r = api.get("/v1/kv/nothing/?keys").await;
            assert_eq!(r.status, 404);
            let r = api.get("/v1/kv/?keys").await;
            assert_eq!(
                (r.status, r.json().as_array().map(Vec::len)),
                (200, Some(2))
            );
        })
        .await;
    }

    #[actix_rt::test]
    async fn kv_reads_carry_setmeta_headers_but_no_effective_consistency() {
        bounded(async {
            let api = Api::start(1.0);
            api.put("/v1/kv/h", b"v").await;
            for path in [
                "/v1/kv/h",
                "/v1/kv/h?stale",
                "/v1/kv/missing",
                "/v1/kv/?keys",
            ] {
                let r = api.get(path).await;
                assert_eq!(
                    r.header("X-Consul-Query-Backend").as_deref(),
                    Some("blocking-query"),
                    "{path}"
                );
                assert_eq!(r.header("X-Consul-KnownLeader").as_deref(), Some("true"));
                // Consul's KV handlers never fill in QueryMeta.ConsistencyLevel, and
                // setConsistency writes nothing for an empty one.
                assert_eq!(r.header("X-Consul-Effective-Consistency"), None, "{path}");
            }
        })
        .await;
    }

    #[actix_rt::test]
    async fn bad_requests_answer_as_consul_does() {
        bounded(async {
            let api = Api::start(1.0);
            let r = api.put("/v1/kv/", b"x").await;
            assert_eq!((r.status, r.text()), (400, "Missing key name".into()));
            let r = api.get("/v1/kv/").await;
            assert_eq!(r.status, 400);
            let r = api.put("/v1/kv/k?cas=0&acquire=s", b"x").await;
            assert_eq!(
                (r.status, r.text()),
                (400, "Conflicting flags: acquire=s&cas=0\n".into())
            );
            let r = api.put("/v1/kv/k?cas=abc", b"x").await;
            assert_eq!(
                (r.status, r.text()),
                (
                    500,
                    "strconv.ParseUint: parsing \"abc\": invalid syntax".into()
                )
            );
            let r = api.put("/v1/kv/k?flags=-1", b"x").await;
            assert_eq!(r.status, 500);
            let r = api
                .call(Method::DELETE, "/v1/kv/k?recurse&cas=1", b"")
                .await;
            assert_eq!(r.status, 400);
            let big = vec![b'x'; MAX_VALUE_SIZE + 1];
            let r = api.put("/v1/kv/big", &big).await;
            assert_eq!(r.status, 413);
            assert!(r
                .text()
                .starts_with("Request body(524289 bytes) too large, max size: 524288"));
            let r = api.call(Method::POST, "/v1/kv/k", b"x").await;
            assert_eq!(r.status, 405);
            assert_eq!(r.header("Allow").as_deref(), Some("OPTIONS,GET,PUT,DELETE"));
            let r = api.put("/v1/kv/k?dc=elsewhere", b"x").await;
            assert_eq!((r.status, r.text()), (500, "No path to datacenter".into()));
        })
        .await;
    }

    #[actix_rt::test]
    async fn writes_need_a_leader_and_stale_reads_do_not() {
        bounded(async {
            // 100x: the 7s hold for a leader is 70ms of wall time.
            let api = Api::start(100.0);
            api.put("/v1/kv/k", b"v").await;
            api.sim().lock().cluster.leader = None;
            let started = tokio::time::Instant::now();
            let r = api.put("/v1/kv/k", b"w").await;
            assert_eq!((r.status, r.text()), (500, "No cluster leader".into()));
            assert!(
                started.elapsed() >= Duration::from_millis(70),
                "gave up before rpc_hold_timeout: {:?}",
                started.elapsed()
            );
            let r = api.get("/v1/kv/k").await;
            assert_eq!(r.status, 500);
            let started = tokio::time::Instant::now();
            let r = api.get("/v1/kv/k?stale").await;
            assert_eq!(r.status, 200);
            assert!(
                started.elapsed() < Duration::from_millis(70),
                "a stale read waited for a leader"
            );
        })
        .await;
    }

    #[actix_rt::test]
    async fn a_request_during_an_election_waits_for_the_new_leader() {
        bounded(async {
            let api = Api::start(1.0);
            let leader = api.sim().lock().cluster.leader.take();
            let mut write = Box::pin(api.put("/v1/kv/k", b"v"));
            let mut read = Box::pin(api.get("/v1/kv/other"));
            // Consul holds a leader-bound request up to rpc_hold_timeout (7s) for a leader.
            api.until_parked(&mut write, 1).await;
            api.until_parked(&mut read, 2).await;
            {
                let mut st = api.sim().lock();
                st.cluster.leader = leader;
                st.notify(Change::table(Topic::Raft));
            }
            let (w, r) = tokio::join!(write, read);
            assert_eq!((w.status, w.text()), (200, "true".into()));
            assert_eq!(r.status, 404, "the read ran once the leader was back");
        })
        .await;
    }

    #[actix_rt::test]
    async fn cas_and_delete_over_http() {
        bounded(async {
            let api = Api::start(1.0);
            let r = api.put("/v1/kv/c?cas=0", b"1").await;
            assert_eq!(r.text(), "true");
            let r = api.put("/v1/kv/c?cas=0", b"2").await;
            assert_eq!(r.text(), "false");
            let idx = api.get("/v1/kv/c").await.index.unwrap_or(0);
            let r = api.put(&format!("/v1/kv/c?cas={}", idx + 100), b"2").await;
            assert_eq!(r.text(), "false");
            let r = api.put(&format!("/v1/kv/c?cas={idx}"), b"2").await;
            assert_eq!(r.text(), "true");
            let r = api
                .call(Method::DELETE, &format!("/v1/kv/c?cas={idx}"), b"")
                .await;
            assert_eq!(r.text(), "false", "stale ModifyIndex");
            api.put("/v1/kv/t/1", b"x").await;
            api.put("/v1/kv/t/2", b"x").await;
            let r = api.call(Method::DELETE, "/v1/kv/t/?recurse", b"").await;
            assert_eq!(r.text(), "true");
            let r = api.get("/v1/kv/t/?recurse").await;
            assert_eq!(r.status, 404);
            let tree_index = r.index.unwrap_or(0);
            assert_eq!(
                tree_index,
                api.sim().lock().kv.table_index(),
                "the tombstone's index"
            );
            assert_eq!(api.get("/v1/kv/c").await.status, 200);
        })
        .await;
    }

    #[actix_rt::test]
    async fn blocking_get_wakes_only_for_the_key_it_read() {
        bounded(async {
            let api = Api::start(1.0);
            api.put("/v1/kv/a", b"1").await;
            let idx = api.get("/v1/kv/a").await.index.unwrap_or(0);
            let uri = format!("/v1/kv/a?index={idx}&wait=10s");
            let mut read = Box::pin(api.get(&uri));
            api.until_parked(&mut read, 1).await;
            // Another key moves the table index but must not wake the reader of `a`.
            let wrote = apply(
                &mut api.sim().lock(),
                KvOp::Set {
                    key: "b".into(),
                    value: b"2".to_vec(),
                    flags: 0,
                },
            );
            assert_eq!(wrote.ok(), Some(true));
            assert_eq!(
                api.sim().lock().waiters.len(),
                1,
                "a write to b woke the reader of a"
            );
            let (r, w) = tokio::join!(read, api.put("/v1/kv/a", b"3"));
            assert_eq!(w.text(), "true");
            assert_eq!(r.status, 200);
            assert_eq!(r.json()[0]["Value"], "Mw==");
            assert!(r.index > Some(idx));
        })
        .await;
    }

    #[actix_rt::test]
    async fn blocking_list_wakes_on_a_delete_under_its_prefix() {
        bounded(async {
            let api = Api::start(1.0);
            api.put("/v1/kv/p/1", b"1").await;
            api.put("/v1/kv/p/2", b"2").await;
            let idx = api.get("/v1/kv/p/?recurse").await.index.unwrap_or(0);
            let uri = format!("/v1/kv/p/?recurse&index={idx}");
            let mut read = Box::pin(api.get(&uri));
            api.until_parked(&mut read, 1).await;
            let (r, _) = tokio::join!(read, api.call(Method::DELETE, "/v1/kv/p/1", b""));
            assert_eq!(r.json().as_array().map(Vec::len), Some(1));
            assert!(
                r.index > Some(idx),
                "the tombstone keeps the index moving forward"
            );
        })
        .await;
    }
}
