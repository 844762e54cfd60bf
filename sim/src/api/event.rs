//! Consul user events: the agent's ring buffer (`Events`) and `/v1/event/fire` and
//! `/v1/event/list`.
//!
//! rehydrator's `fire` command and the demo fire events here and watch the list. Events are
//! gossip, not Raft: firing needs no leader, and the list's blocking index is not a Raft index
//! but a hash of the newest event's ID (`uuidToUint64` in Consul's `agent/event_endpoint.go`).
//! The simulator has one agent, so the buffer is that agent's view.

use std::collections::VecDeque;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use serde::{Serialize, Serializer};

use crate::http::{
    blocking, only, ApiError, Consistency, Fresh, Params, QueryOptions, Read, MAX_WAIT,
};
use crate::state::{Sim, State};
use crate::watch::{Change, Topic};

/// How many recent events an agent keeps.
pub const EVENT_BUFFER: usize = 256;
/// The user-event version Consul writes.
pub const EVENT_VERSION: u32 = 1;
/// Serf's default `UserEventSizeLimit`, on the encoded message.
pub const EVENT_SIZE_LIMIT: usize = 512;
/// Consul's internal remote-exec event, never listed.
const REMOTE_EXEC: &str = "_rexec";

/// One user event as Consul's JSON shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UserEvent {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    #[serde(serialize_with = "payload_b64")]
    pub payload: Option<Vec<u8>>,
    pub node_filter: String,
    pub service_filter: String,
    pub tag_filter: String,
    pub version: u32,
    /// The Lamport time serf stamped on it; 0 in the fire response, which precedes delivery.
    #[serde(rename = "LTime")]
    pub ltime: u64,
}

fn payload_b64<S: Serializer>(p: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(bytes) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes)),
        None => s.serialize_none(),
    }
}

/// The agent's recent events, oldest first, and serf's event clock.
#[derive(Debug)]
pub struct Events {
    buffer: VecDeque<UserEvent>,
    /// Serf starts its Lamport clocks at 1.
    clock: u64,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            buffer: VecDeque::with_capacity(EVENT_BUFFER),
            clock: 1,
        }
    }
}

impl Events {
    /// The buffered events, oldest first, optionally only those named `name`.
    pub fn list(&self, name: Option<&str>) -> Vec<UserEvent> {
        self.buffer
            .iter()
            .filter(|e| name.is_none_or(|n| n == e.name))
            .cloned()
            .collect()
    }

    /// Stamps `event` with the next Lamport time and, if it passes the agent's filters,
    /// buffers it (dropping the oldest past 256). Returns whether it was buffered.
    fn deliver(&mut self, mut event: UserEvent, agent_node: &str) -> bool {
        event.ltime = self.clock;
        self.clock += 1;
        if !passes_filters(&event, agent_node) || event.name == REMOTE_EXEC {
            return false;
        }
        if self.buffer.len() == EVENT_BUFFER {
            self.buffer.pop_front();
        }
        self.buffer.push_back(event);
        true
    }
}

/// Whether the agent named `agent_node` processes `event` (`shouldProcessUserEvent`). The
/// simulated agent runs no services, so a service filter never matches it.
fn passes_filters(event: &UserEvent, agent_node: &str) -> bool {
    if !event.node_filter.is_empty() {
        match Regex::parse(&event.node_filter) {
            Ok(re) if re.is_match(agent_node) => {}
            _ => return false,
        }
    }
    event.service_filter.is_empty()
}

/// The index of an event list: 1 when empty, else the newest event's ID folded to 64 bits
/// (the XOR of its two halves), as Consul's `uuidToUint64`.
pub fn list_index(events: &[UserEvent]) -> u64 {
    events.last().map_or(1, |e| uuid_to_u64(&e.id))
}

/// Consul's `uuidToUint64`: the first 16 hex digits XOR the last 16.
pub fn uuid_to_u64(uuid: &str) -> u64 {
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    let half = |r: std::ops::Range<usize>| {
        hex.get(r)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0)
    };
    half(0..16) ^ half(16..32)
}

/// A fire request: the event name, payload and filters.
#[derive(Debug, Clone, Default)]
pub struct Fire {
    pub name: String,
    pub payload: Option<Vec<u8>>,
    pub node_filter: String,
    pub service_filter: String,
    pub tag_filter: String,
}

/// Fires a user event as the agent does: validates it, gives it an ID and delivers it to the
/// agent's buffer. Returns the event as the fire response shows it (LTime 0). Needs no leader.
pub fn fire(st: &mut State, req: Fire) -> Result<UserEvent, ApiError> {
    if req.name.is_empty() {
        return Err(ApiError::internal("User event missing name"));
    }
    if !req.tag_filter.is_empty() && req.service_filter.is_empty() {
        return Err(ApiError::internal(
            "Cannot provide tag filter without service filter",
        ));
    }
    for (what, filter) in [
        ("node", &req.node_filter),
        ("service", &req.service_filter),
        ("tag", &req.tag_filter),
    ] {
        if !filter.is_empty() {
            Regex::parse(filter).map_err(|e| {
                ApiError::internal(format!("Invalid {what} filter: error parsing regexp: {e}"))
            })?;
        }
    }
    let event = UserEvent {
        id: uuid::Uuid::new_v4().to_string(),
        name: req.name,
        payload: req.payload,
        node_filter: req.node_filter,
        service_filter: req.service_filter,
        tag_filter: req.tag_filter,
        version: EVENT_VERSION,
        ltime: 0,
    };
    // Approximates serf's check on the encoded message: the event (ID, name, payload,
    // filters) in msgpack inside serf's envelope, which repeats the name with a prefix.
    let encoded = 96
        + 2 * event.name.len()
        + event.payload.as_ref().map_or(0, Vec::len)
        + event.node_filter.len()
        + event.service_filter.len()
        + event.tag_filter.len();
    if encoded > EVENT_SIZE_LIMIT {
        return Err(ApiError::internal(format!(
            "encoded user event exceeds configured limit of {EVENT_SIZE_LIMIT} bytes after encoding"
        )));
    }
    let agent_node = st.config.agent_node.clone();
    if st.events.deliver(event.clone(), &agent_node) {
        st.notify(Change::table(Topic::Events));
    }
    Ok(event)
}

/// Registers `/v1/event/fire/{name}` (PUT) and `/v1/event/list` (GET).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/event/fire/{name:.*}", web::route().to(fire_endpoint))
        .route("/v1/event/list", web::route().to(list_endpoint));
}

async fn fire_endpoint(
    sim: web::Data<Sim>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    only(&req, "PUT")?;
    let params = Params::from_request(&req);
    let raw = req
        .path()
        .strip_prefix("/v1/event/fire/")
        .unwrap_or_default();
    let name = percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned();
    if name.is_empty() {
        return Err(ApiError::bad_request("Missing name"));
    }
    let filter = |k: &str| params.get(k).unwrap_or_default().to_owned();
    let fire_req = Fire {
        name,
        payload: (!body.is_empty()).then(|| body.to_vec()),
        node_filter: filter("node"),
        service_filter: filter("service"),
        tag_filter: filter("tag"),
    };
    let mut st = sim.lock();
    if let Some(dc) = params.get("dc").filter(|d| !d.is_empty()) {
        if dc != st.config.datacenter {
            return Err(ApiError::internal("No path to datacenter"));
        }
    }
    let event = fire(&mut st, fire_req)?;
    Ok(HttpResponse::Ok().json(event))
}

async fn list_endpoint(sim: web::Data<Sim>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    only(&req, "GET")?;
    let params = Params::from_request(&req);
    let opts = list_options(&params)?;
    let name = params
        .get("name")
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let (meta, events) = blocking(&sim, &opts, Fresh::Different, |st| {
        let events = st.events.list(name.as_deref());
        Ok(Read {
            index: list_index(&events),
            value: events,
            topics: vec![Topic::Events],
        })
    })
    .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("X-Consul-Index", meta.index.to_string()))
        .json(events))
}

/// How `/v1/event/list` reads its query: Consul's handler parses only `wait` and `index` (so
/// `?stale&consistent` is no error here), waits its maximum when given an index and no wait,
/// and adds no jitter. The list is the local agent's memory: no leader, no datacenter. Stale
/// consistency keeps `blocking` from asking for a leader; only the index header is sent.
fn list_options(params: &Params) -> Result<QueryOptions, ApiError> {
    let mut opts = QueryOptions::parse_wait(params)?;
    opts.consistency = Consistency::Stale;
    opts.jitter = false;
    if opts.wait.is_zero() {
        opts.wait = MAX_WAIT;
    }
    Ok(opts)
}

/// The subset of Go's RE2 syntax node filters use: literals, `.`, classes (`[a-z]`, `[^x]`,
/// `\d \w \s`), anchors, groups with alternation, and the `* + ?` repetitions. Matching is
/// unanchored, as Go's `MatchString`.
#[derive(Debug, Clone)]
pub struct Regex {
    alts: Vec<Vec<Node>>,
}

#[derive(Debug, Clone)]
enum Node {
    Char(char),
    Any,
    Class {
        ranges: Vec<(char, char)>,
        negated: bool,
    },
    Start,
    End,
    Group(Vec<Vec<Node>>),
    Repeat {
        node: Box<Node>,
        min: usize,
        max: Option<usize>,
    },
}

impl Regex {
    /// Parses `pattern`; the error is Go's text after "error parsing regexp: ".
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut pos = 0;
        let alts = parse_alts(&chars, &mut pos, pattern, 0)?;
        if pos < chars.len() {
            return Err(format!("unexpected ): `{pattern}`"));
        }
        Ok(Self { alts })
    }

    pub fn is_match(&self, text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        (0..=chars.len()).any(|start| {
            let k: &dyn Fn(usize) -> bool = &|_| true;
            match_alts(&self.alts, &chars, start, k)
        })
    }
}

fn parse_alts(
    c: &[char],
    pos: &mut usize,
    pat: &str,
    depth: usize,
) -> Result<Vec<Vec<Node>>, String> {
    let mut alts = vec![Vec::new()];
    while *pos < c.len() {
        let ch = c[*pos];
        *pos += 1;
        let node = match ch {
            '|' => {
                alts.push(Vec::new());
                continue;
            }
            ')' if depth > 0 => return Ok(alts),
            ')' => return Err(format!("unexpected ): `{pat}`")),
            '(' => {
                // Non-capturing and named groups match the same.
                if c.get(*pos) == Some(&'?') {
                    while *pos < c.len() && c[*pos] != ':' {
                        *pos += 1;
                    }
                    *pos += 1;
                }
                // The inner parse consumes the closing `)` or fails for want of it.
                Node::Group(parse_alts(c, pos, pat, depth + 1)?)
            }
            '*' | '+' | '?' => {
                let Some(last) = alts.last_mut().and_then(Vec::pop) else {
                    return Err(format!("missing argument to repetition operator: `{ch}`"));
                };
                if matches!(last, Node::Repeat { .. }) {
                    return Err(format!("invalid nested repetition operator: `{ch}`"));
                }
                let (min, max) = match ch {
                    '*' => (0, None),
                    '+' => (1, None),
                    _ => (0, Some(1)),
                };
                // A trailing `?` (lazy) matches the same set of strings.
                if c.get(*pos) == Some(&'?') {
                    *pos += 1;
                }
                Node::Repeat {
                    node: Box::new(last),
                    min,
                    max,
                }
            }
            '.' => Node::Any,
            '^' => Node::Start,
            '$' => Node::End,
            '[' => parse_class(c, pos, pat)?,
            '\\' => parse_escape(c, pos, pat)?,
            other => Node::Char(other),
        };
        if let Some(alt) = alts.last_mut() {
            alt.push(node);
        }
    }
    if depth > 0 {
        return Err(format!("missing closing ): `{pat}`"));
    }
    Ok(alts)
}

fn parse_escape(c: &[char], pos: &mut usize, pat: &str) -> Result<Node, String> {
    let Some(&e) = c.get(*pos) else {
        return Err("trailing backslash at end of expression: ``".into());
    };
    *pos += 1;
    Ok(match e {
        'd' => Node::Class {
            ranges: vec![('0', '9')],
            negated: false,
        },
        'D' => Node::Class {
            ranges: vec![('0', '9')],
            negated: true,
        },
        'w' => Node::Class {
            ranges: word(),
            negated: false,
        },
        'W' => Node::Class {
            ranges: word(),
            negated: true,
        },
        's' => Node::Class {
            ranges: space(),
            negated: false,
        },
        'S' => Node::Class {
            ranges: space(),
            negated: true,
        },
        e if e.is_ascii_punctuation() => Node::Char(e),
        'n' => Node::Char('\n'),
        't' => Node::Char('\t'),
        e => return Err(format!("invalid escape sequence: `\\{e}` in `{pat}`")),
    })
}

fn word() -> Vec<(char, char)> {
    vec![('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')]
}

fn space() -> Vec<(char, char)> {
    vec![('\t', '\n'), ('\x0c', '\r'), (' ', ' ')]
}

fn parse_class(c: &[char], pos: &mut usize, pat: &str) -> Result<Node, String> {
    let start = *pos - 1;
    let missing = || {
        format!(
            "missing closing ]: `{}`",
            c[start..].iter().collect::<String>()
        )
    };
    let negated = c.get(*pos) == Some(&'^');
    if negated {
        *pos += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let Some(&ch) = c.get(*pos) else {
            return Err(missing());
        };
        *pos += 1;
        if ch == ']' && !first {
            break;
        }
        first = false;
        let lo = if ch == '\\' {
            match parse_escape(c, pos, pat)? {
                Node::Char(x) => x,
                Node::Class { ranges: r, .. } => {
                    ranges.extend(r);
                    continue;
                }
                _ => return Err(missing()),
            }
        } else {
            ch
        };
        if c.get(*pos) == Some(&'-') && c.get(*pos + 1).is_some_and(|n| *n != ']') {
            let hi = c[*pos + 1];
            *pos += 2;
            if hi < lo {
                return Err(format!("invalid character class range: `{lo}-{hi}`"));
            }
            ranges.push((lo, hi));
        } else {
            ranges.push((lo, lo));
        }
    }
    Ok(Node::Class { ranges, negated })
}

fn match_alts(alts: &[Vec<Node>], t: &[char], i: usize, k: &dyn Fn(usize) -> bool) -> bool {
    alts.iter().any(|seq| match_seq(seq, t, i, k))
}

fn match_seq(seq: &[Node], t: &[char], i: usize, k: &dyn Fn(usize) -> bool) -> bool {
    let Some((node, rest)) = seq.split_first() else {
        return k(i);
    };
    let next = |j: usize| match_seq(rest, t, j, k);
    match_node(node, t, i, &next)
}

fn match_node(node: &Node, t: &[char], i: usize, k: &dyn Fn(usize) -> bool) -> bool {
    match node {
        Node::Char(c) => t.get(i) == Some(c) && k(i + 1),
        Node::Any => t.get(i).is_some_and(|c| *c != '\n') && k(i + 1),
        Node::Class { ranges, negated } => {
            t.get(i)
                .is_some_and(|c| ranges.iter().any(|(lo, hi)| lo <= c && c <= hi) != *negated)
                && k(i + 1)
        }
        Node::Start => i == 0 && k(i),
        Node::End => i == t.len() && k(i),
        Node::Group(alts) => match_alts(alts, t, i, k),
        Node::Repeat { node, min, max } => match_repeat(node, *min, *max, t, i, k, 0),
    }
}

fn match_repeat(
    node: &Node,
    min: usize,
    max: Option<usize>,
    t: &[char],
    i: usize,
    k: &dyn Fn(usize) -> bool,
    count: usize,
) -> bool {
    // Greedy: one more repetition first (if it consumes input), then stop here.
    let more = max.is_none_or(|m| count < m)
        && match_node(node, t, i, &|j| {
            j > i && match_repeat(node, min, max, t, j, k, count + 1)
        });
    more || (count >= min && k(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list_opts(query: &str) -> Result<QueryOptions, String> {
        let req = actix_web::test::TestRequest::with_uri(&format!("/v1/event/list?{query}"))
            .to_http_request();
        list_options(&Params::from_request(&req)).map_err(|e| e.message)
    }

    #[test]
    fn the_list_reads_only_wait_and_index_and_waits_without_jitter() {
        let o = list_opts("index=5&stale&consistent&max_stale=bogus");
        assert_eq!(o.as_ref().map(|o| o.index).ok(), Some(5), "{:?}", o.err());
        assert_eq!(list_opts("index=5").map(|o| o.timeout()), Ok(MAX_WAIT));
        assert_eq!(
            list_opts("index=5&wait=7s").map(|o| o.timeout()),
            Ok(std::time::Duration::from_secs(7))
        );
        assert_eq!(
            list_opts("index=5&wait=1h").map(|o| o.timeout()),
            Ok(MAX_WAIT)
        );
        assert_eq!(list_opts("index=x").err().as_deref(), Some("Invalid index"));
    }

    fn ev(name: &str) -> UserEvent {
        UserEvent {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.into(),
            payload: None,
            node_filter: String::new(),
            service_filter: String::new(),
            tag_filter: String::new(),
            version: EVENT_VERSION,
            ltime: 0,
        }
    }

    #[test]
    fn ring_buffer_keeps_the_last_256_with_lamport_times() {
        let mut events = Events::default();
        for i in 0..300 {
            assert!(events.deliver(ev(&format!("e{i}")), "agent"));
        }
        let list = events.list(None);
        assert_eq!(list.len(), EVENT_BUFFER);
        assert_eq!(list.first().map(|e| e.name.as_str()), Some("e44"));
        assert_eq!(list.last().map(|e| e.name.as_str()), Some("e299"));
        assert_eq!(
            list.first().map(|e| e.ltime),
            Some(45),
            "serf's clock starts at 1"
        );
        assert_eq!(list.last().map(|e| e.ltime), Some(300));
        assert_eq!(events.list(Some("e299")).len(), 1);
    }

    #[test]
    fn index_is_the_uuid_folded_to_64_bits() {
        assert_eq!(list_index(&[]), 1);
        assert_eq!(
            uuid_to_u64("00000000-0000-0001-0000-000000000003"),
            1 ^ 3,
            "the first 16 hex digits XOR the last 16"
        );
        assert_eq!(
            uuid_to_u64("b54fe110-7af5-cafc-d1fb-afc8ba432b1c"),
            0xb54fe1107af5cafc ^ 0xd1fbafc8ba432b1c
        );
    }

    #[test]
    fn filters_decide_what_the_agent_keeps() {
        let mut events = Events::default();
        let mut e = ev("a");
        e.node_filter = "^sim-".into();
        assert!(events.deliver(e.clone(), "sim-agent"));
        e.node_filter = "^server".into();
        assert!(!events.deliver(e, "sim-agent"));
        let mut s = ev("b");
        s.service_filter = "web".into();
        assert!(
            !events.deliver(s, "sim-agent"),
            "the agent runs no services"
        );
        assert!(!events.deliver(ev(REMOTE_EXEC), "sim-agent"));
        assert_eq!(events.list(None).len(), 1);
    }

    #[test]
    fn the_regex_subset_matches_like_go() {
        let m = |p: &str, t: &str| Regex::parse(p).map(|r| r.is_match(t));
        assert_eq!(m("server", "consul-server-1"), Ok(true), "unanchored");
        assert_eq!(m("^server-[0-9]+$", "server-12"), Ok(true));
        assert_eq!(m("^server-[0-9]+$", "server-"), Ok(false));
        assert_eq!(m("a.*c", "abbbc"), Ok(true));
        assert_eq!(m("^(web|db)-\\d$", "db-1"), Ok(true));
        assert_eq!(m("^(web|db)-\\d$", "cache-1"), Ok(false));
        assert_eq!(m("colou?r", "color"), Ok(true));
        assert_eq!(m("[^a-z]", "abc"), Ok(false));
        assert_eq!(m("", "anything"), Ok(true));
        assert!(m("[abc", "a").is_err_and(|e| e == "missing closing ]: `[abc`"));
        assert!(m("(a", "a").is_err());
        assert!(m("a)", "a").is_err());
        assert!(m("*a", "a").is_err());
    }

    #[test]
    fn event_json_matches_consul() {
        let mut e = ev("deploy");
        e.id = "b54fe110-7af5-cafc-d1fb-afc8ba432b1c".into();
        let v = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"ID":"b54fe110-7af5-cafc-d1fb-afc8ba432b1c","Name":"deploy",
                "Payload":null,"NodeFilter":"","ServiceFilter":"","TagFilter":"",
                "Version":1,"LTime":0})
        );
        e.payload = Some(b"hi".to_vec());
        assert_eq!(
            serde_json::to_value(&e).unwrap_or_default()["Payload"],
            "aGk="
        );
    }
}

#[cfg(test)]
mod http_tests {
    use actix_web::http::Method;

    use super::uuid_to_u64;
    use crate::api::kv::testkit::{bounded, Api};

    #[actix_rt::test]
    async fn the_list_ignores_consistency_flags() {
        bounded(async {
            let api = Api::start(1.0);
            let r = api.get("/v1/event/list?stale&consistent").await;
            assert_eq!((r.status, r.index), (200, Some(1)), "{}", r.text());
        })
        .await;
    }

    #[actix_rt::test]
    async fn fire_then_list_with_lamport_times_and_the_id_index() {
        bounded(async {
            let api = Api::start(1.0);
            let r = api.get("/v1/event/list").await;
            assert_eq!((r.json(), r.index), (serde_json::json!([]), Some(1)));
            assert!(
                r.header("X-Consul-KnownLeader").is_none(),
                "only the index is sent"
            );
            let r = api.put("/v1/event/fire/deploy", b"v2").await;
            assert_eq!(r.status, 200);
            let fired = r.json();
            assert_eq!(fired["LTime"], 0, "the fire response precedes delivery");
            assert_eq!(fired["Payload"], "djI=");
            assert_eq!(fired["Version"], 1);
            let r = api.put("/v1/event/fire/other", b"").await;
            assert_eq!(r.json()["Payload"], serde_json::Value::Null);
            let r = api.get("/v1/event/list").await;
            let list = r.json();
            assert_eq!(list[0]["ID"], fired["ID"]);
            assert_eq!(
                (list[0]["LTime"].as_u64(), list[1]["LTime"].as_u64()),
                (Some(1), Some(2))
            );
            let last_id = list[1]["ID"].as_str().unwrap_or_default().to_owned();
            assert_eq!(r.index, Some(uuid_to_u64(&last_id)));
            let r = api.get("/v1/event/list?name=deploy").await;
            assert_eq!(r.json().as_array().map(Vec::len), Some(1));
            let first_id = fired["ID"].as_str().unwrap_or_default();
            assert_eq!(r.index, Some(uuid_to_u64(first_id)));
        })
        .await;
    }

    #[actix_rt::test]
    async fn blocking_list_returns_when_the_index_differs() {
        bounded(async {
            let api = Api::start(1.0);
            let uri = "/v1/event/list?name=mine&index=1&wait=30s";
            let mut read = Box::pin(api.get(uri));
            api.until_parked(&mut read, 1).await;
            // An event the name filter drops wakes the query, which parks again.
            api.put("/v1/event/fire/theirs", b"").await;
            api.until_parked(&mut read, 1).await;
            let (r, fired) = tokio::join!(read, api.put("/v1/event/fire/mine", b"x"));
            assert_eq!(r.json()[0]["ID"], fired.json()["ID"]);
            assert_ne!(r.index, Some(1));
        })
        .await;
    }

    #[actix_rt::test]
    async fn fire_needs_no_leader_and_checks_its_filters() {
        bounded(async {
            let api = Api::start(1.0);
            api.sim().lock().cluster.leader = None;
            let r = api.put("/v1/event/fire/gossip", b"").await;
            assert_eq!(r.status, 200, "events are gossip: {}", r.text());
            let r = api.get("/v1/event/list").await;
            assert_eq!(r.json().as_array().map(Vec::len), Some(1));
            let r = api.put("/v1/event/fire/x?tag=v1", b"").await;
            assert_eq!(
                (r.status, r.text()),
                (
                    500,
                    "Cannot provide tag filter without service filter".into()
                )
            );
            let r = api.put("/v1/event/fire/x?node=[", b"").await;
            assert_eq!(
                (r.status, r.text()),
                (
                    500,
                    "Invalid node filter: error parsing regexp: missing closing ]: `[`".into()
                )
            );
            let r = api.put("/v1/event/fire/x?node=^nomatch$", b"").await;
            assert_eq!(r.status, 200, "a filter the agent fails still fires");
            assert_eq!(
                api.get("/v1/event/list?name=x").await.json(),
                serde_json::json!([])
            );
            let r = api.put("/v1/event/fire/", b"").await;
            assert_eq!((r.status, r.text()), (400, "Missing name".into()));
            let r = api.call(Method::POST, "/v1/event/fire/x", b"").await;
            assert_eq!(r.status, 405);
            let r = api.put("/v1/event/fire/x?dc=dc9", b"").await;
            assert_eq!((r.status, r.text()), (500, "No path to datacenter".into()));
            let big = vec![b'p'; 1024];
            let r = api.put("/v1/event/fire/big", &big).await;
            assert_eq!(r.status, 500);
        })
        .await;
    }
}
