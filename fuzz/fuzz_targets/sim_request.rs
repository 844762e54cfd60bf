//! The simulator's request decoding (paths, query strings, durations, JSON bodies) through its
//! real handlers: whatever the request, it answers (a blocking query may park), and never
//! panics. The input is a method
//! (its first byte), a path and query (up to the first newline), then the body.
#![no_main]

use std::time::Duration;

use actix_web::http::{Method, Uri};
use actix_web::{test, App};
use libfuzzer_sys::fuzz_target;
use rehydrator_sim::{Sim, SimConfig};

const METHODS: [Method; 4] = [Method::GET, Method::PUT, Method::POST, Method::DELETE];

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(first) % METHODS.len()].clone();
    let (line, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    let uri = if line.starts_with('/') {
        line.to_owned()
    } else {
        format!("/v1/{line}")
    };
    if Uri::try_from(uri.as_str()).is_err() {
        return;
    }
    let body = body.to_vec();
    SIM.with(|(rt, sim)| {
        rt.block_on(ask(sim, method, uri, body));
    });
});

thread_local! {
    /// One simulator for the whole run (a fresh one per input costs most of the time): its
    /// state grows with the requests, as an agent's does.
    static SIM: (actix_rt::SystemRunner, Sim) = {
        let rt = actix_rt::System::new();
        let sim = rt.block_on(async { Sim::new(SimConfig::default()) });
        (rt, sim)
    };
}

async fn ask(sim: &Sim, method: Method, uri: String, body: Vec<u8>) {
    {
        let app =
            test::init_service(App::new().configure(rehydrator_sim::server::configure(sim))).await;
        let req = test::TestRequest::default()
            .method(method)
            .uri(&uri)
            .set_payload(body)
            .to_request();
        // A blocking query (`index`) may park for its wait: it is let go unanswered. Any other
        // request answers at once.
        let blocking = uri.contains("index=");
        let bound = if blocking {
            Duration::from_millis(20)
        } else {
            Duration::from_secs(10)
        };
        let answered = tokio::time::timeout(bound, test::call_service(&app, req)).await;
        assert!(
            answered.is_ok() || blocking,
            "{uri}: no answer within {bound:?}"
        );
    }
}
