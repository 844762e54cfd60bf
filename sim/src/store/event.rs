//! The agent's user events (`agent/user_event.go`): the ring buffer of the last 256 events
//! with their LTimes, the node/service/tag filters (a subset of Go's RE2 syntax), and the
//! blocking index of the list, a hash of the newest event's ID (`uuidToUint64`). Events are
//! gossip, not Raft. Plain data; `fsm::event` fires.

use std::collections::VecDeque;

use base64::Engine;
use serde::{Serialize, Serializer};

/// How many recent events an agent keeps.
pub const EVENT_BUFFER: usize = 256;
/// The user-event version Consul writes.
pub const EVENT_VERSION: u32 = 1;
/// Serf's default `UserEventSizeLimit`, on the encoded message.
pub const EVENT_SIZE_LIMIT: usize = 512;
/// Consul's internal remote-exec event, never listed.
pub const REMOTE_EXEC: &str = "_rexec";

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
    pub fn deliver(&mut self, mut event: UserEvent, agent_node: &str) -> bool {
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
