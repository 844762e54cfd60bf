//! Reads and blocking queries: the options a read sends (`index`, `wait`, consistency), the
//! metadata it gets back (`X-Consul-Index`, `X-Consul-KnownLeader`, `X-Consul-LastContact`),
//! and [`WatchState`], the rules of Consul's "Blocking Queries" page as a small state machine
//! that the Watcher actor drives: which index to send, when to call again, what counts as a
//! change.

use std::time::Duration;

use awc::http::header::HeaderMap;
use rand::Rng;
use tokio::time::Instant;

use super::duration;

/// Consul's wait when `?index` is sent without `?wait`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Consul caps `?wait` at this.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// How stale a read may be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Served by the leader without re-confirming leadership.
    #[default]
    Default,
    /// Any server may answer, also without a leader (`?stale`).
    Stale,
    /// The leader confirms it still leads first (`?consistent`).
    Consistent,
}

/// Options of one read. `QueryOptions::default()` is a plain, non-blocking read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryOptions {
    /// Block until the result's index passes this one (from a previous `QueryMeta::index`).
    pub index: Option<u64>,
    /// How long to block at most; Consul's default is 5m and its cap 10m.
    pub wait: Option<Duration>,
    pub consistency: Consistency,
    /// Overrides the client's datacenter for this read.
    pub datacenter: Option<String>,
}

impl QueryOptions {
    /// A blocking read at `index` waiting at most `wait`.
    pub fn blocking(index: u64, wait: Duration) -> Self {
        Self {
            index: Some(index),
            wait: Some(wait),
            ..Self::default()
        }
    }

    pub fn stale() -> Self {
        Self {
            consistency: Consistency::Stale,
            ..Self::default()
        }
    }

    /// The wait Consul will apply: none for a plain read, else `wait` (default 5m, capped at
    /// 10m).
    pub fn effective_wait(&self) -> Option<Duration> {
        self.index?;
        Some(self.wait.unwrap_or(DEFAULT_WAIT).min(MAX_WAIT))
    }

    /// How long the client waits for the answer: Consul may hold a blocking query up to
    /// `wait + wait/16` (its jitter), so the request timeout goes past that by `slack`.
    pub fn request_timeout(&self, slack: Duration) -> Duration {
        match self.effective_wait() {
            Some(wait) => wait + wait / 16 + slack,
            None => slack,
        }
    }

    /// The query parameters these options add (the datacenter is the client's business).
    pub(crate) fn params(&self) -> Vec<(&'static str, Option<String>)> {
        let mut out = Vec::new();
        if let Some(index) = self.index {
            out.push(("index", Some(index.to_string())));
            if let Some(wait) = self.effective_wait() {
                out.push(("wait", Some(duration::format(wait))));
            }
        }
        match self.consistency {
            Consistency::Default => {}
            Consistency::Stale => out.push(("stale", None)),
            Consistency::Consistent => out.push(("consistent", None)),
        }
        out
    }
}

/// What a read's response headers say about it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryMeta {
    /// `X-Consul-Index`: the index to block on next. 0 when the endpoint sends none.
    pub index: u64,
    /// `X-Consul-KnownLeader`: whether the answering server knew of a leader.
    pub known_leader: bool,
    /// `X-Consul-LastContact`: how long since the answering server heard from the leader
    /// (0 when the leader answered).
    pub last_contact: Duration,
}

impl QueryMeta {
    /// Reads the `X-Consul-*` headers; absent or malformed ones take their zero value, since
    /// several endpoints legitimately send none.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        Self {
            index: text("X-Consul-Index")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            known_leader: text("X-Consul-KnownLeader") == Some("true"),
            last_contact: Duration::from_millis(
                text("X-Consul-LastContact")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            ),
        }
    }
}

/// A read's value with its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Indexed<T> {
    pub value: T,
    pub meta: QueryMeta,
}

impl<T> Indexed<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Indexed<U> {
        Indexed {
            value: f(self.value),
            meta: self.meta,
        }
    }
}

/// How a watch paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchPolicy {
    /// The `?wait` of each blocking call.
    pub wait: Duration,
    /// Least time between the starts of two calls after an answer with nothing new, so that an
    /// endpoint that answers at once with the same index cannot become a busy loop. After a real
    /// change the next call starts at once, for a burst of `CHANGE_BURST` calls that refills at
    /// `CHANGE_RATE` per `min_interval`: a stream of writes is followed without delay, and an
    /// index that
    /// moves on every answer (a hostile or broken agent) costs no more than that rate.
    pub min_interval: Duration,
    /// First delay after an error; doubles with each further consecutive error.
    pub backoff_base: Duration,
    /// The delay after errors never exceeds this.
    pub backoff_max: Duration,
}

impl Default for WatchPolicy {
    fn default() -> Self {
        Self {
            wait: DEFAULT_WAIT,
            min_interval: Duration::from_millis(250),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Calls a watch may start at once after real changes (a token bucket: every call spends one).
const CHANGE_BURST: f64 = 10.0;
/// Credits accrued per `min_interval`: real changes are followed at up to 5 calls per
/// `min_interval` (20 a second by default) once the burst is spent, which still bounds an agent
/// whose index moves on every answer.
const CHANGE_RATE: f64 = 5.0;

/// How an endpoint's index moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexOrder {
    /// A Raft index: it only grows, except after a snapshot restore or a leader with a shorter
    /// log, when the watch must start over.
    Raft,
    /// `/v1/event/list`: a hash of the newest event's ID, so any different value is news and
    /// "smaller" means nothing.
    Hashed,
}

/// What the index of an answer means for the watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexUpdate {
    /// The first answer (or the first after a reset): the current state.
    Initial,
    /// The index moved on: the result may have changed (Consul does not promise it did).
    Changed,
    /// Same index: the wait ran out with nothing new.
    Unchanged,
    /// The index went backwards: the result is current, and the next call starts over without
    /// blocking.
    Reset,
}

impl IndexUpdate {
    /// Whether the caller should look at the result (compare, fire an action).
    pub fn is_news(self) -> bool {
        !matches!(self, IndexUpdate::Unchanged)
    }
}

/// The state of one blocking-query loop.
///
/// The loop goes: wait [`delay`](Self::delay), take [`options`](Self::options) and note
/// [`started`](Self::started), make the call, then report [`observe`](Self::observe) with the
/// answer's index or [`failed`](Self::failed). It carries no I/O, so it is tested as plain data
/// and the Watcher actor owns the timers.
#[derive(Debug, Clone)]
pub struct WatchState {
    policy: WatchPolicy,
    order: IndexOrder,
    /// The index to send next; `None` before the first answer and after a reset.
    index: Option<u64>,
    last_start: Option<Instant>,
    failures: u32,
    /// The last answer was news (a change, a first read, a reset): the next call may start
    /// at once if a credit is left.
    news: bool,
    /// Calls that may still start sooner than `min_interval` after the last, as of `last_start`.
    credits: f64,
}

impl WatchState {
    pub fn new(policy: WatchPolicy) -> Self {
        Self::with_order(policy, IndexOrder::Raft)
    }

    /// A watch on an endpoint whose index is hashed (the event list).
    pub fn with_order(policy: WatchPolicy, order: IndexOrder) -> Self {
        Self {
            policy,
            order,
            index: None,
            last_start: None,
            failures: 0,
            news: false,
            credits: CHANGE_BURST,
        }
    }

    pub fn policy(&self) -> &WatchPolicy {
        &self.policy
    }

    /// The index the next call sends (0 = a plain read), also what a restarted watcher resumes
    /// from.
    pub fn index(&self) -> u64 {
        self.index.unwrap_or(0)
    }

    /// Consecutive failed calls.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The options of the next call: a plain read first, then blocking at the last index.
    pub fn options(&self) -> QueryOptions {
        match self.index {
            None => QueryOptions::default(),
            Some(index) => QueryOptions::blocking(index, self.policy.wait),
        }
    }

    /// How long to wait before the next call, at `now`: the error backoff if the last call
    /// failed; after an answer with news, nothing while burst credits last; otherwise what is
    /// left of `min_interval` since the last start.
    pub fn delay(&self, now: Instant) -> Duration {
        self.delay_with_jitter(now, rand::thread_rng().gen::<f64>())
    }

    fn delay_with_jitter(&self, now: Instant, jitter: f64) -> Duration {
        let rate_limit = match self.last_start {
            None => Duration::ZERO,
            // News: go when a credit is there (CHANGE_RATE accrue per min_interval).
            Some(_) if self.news => {
                let missing = 1.0 - self.credits_at(now);
                if missing <= 1e-9 {
                    Duration::ZERO
                } else {
                    self.policy.min_interval.mul_f64(missing / CHANGE_RATE)
                }
            }
            Some(start) => (start + self.policy.min_interval).saturating_duration_since(now),
        };
        rate_limit.max(self.backoff(jitter))
    }

    /// The burst credits at `now`: `CHANGE_RATE` more per `min_interval` since the last start,
    /// up to `CHANGE_BURST`.
    fn credits_at(&self, now: Instant) -> f64 {
        let Some(start) = self.last_start else {
            return CHANGE_BURST;
        };
        let interval = self.policy.min_interval.as_secs_f64();
        let earned = if interval > 0.0 {
            CHANGE_RATE * now.saturating_duration_since(start).as_secs_f64() / interval
        } else {
            CHANGE_BURST
        };
        (self.credits + earned).min(CHANGE_BURST)
    }

    /// The delay after `failures` consecutive errors: exponential, capped, and with half of it
    /// random so that replicas that failed together do not retry together.
    fn backoff(&self, jitter: f64) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let exp = (self.failures - 1).min(30);
        let full = self
            .policy
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.policy.backoff_max);
        let half = full / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// Notes that a call starts at `now` (the rate limit counts from call starts); every call
    /// spends a credit.
    pub fn started(&mut self, now: Instant) {
        self.credits = (self.credits_at(now) - 1.0).max(0.0);
        self.last_start = Some(now);
    }

    /// Takes the index of a successful answer and says what it means.
    pub fn observe(&mut self, returned: u64) -> IndexUpdate {
        self.failures = 0;
        // Index 0 would make every following call return at once; Consul's docs say to use 1.
        let returned = returned.max(1);
        let previous = self.index;
        let update = match (previous, self.order) {
            (None, _) => IndexUpdate::Initial,
            (Some(prev), _) if prev == returned => IndexUpdate::Unchanged,
            (Some(prev), IndexOrder::Raft) if returned < prev => IndexUpdate::Reset,
            (Some(_), _) => IndexUpdate::Changed,
        };
        self.index = match update {
            // Start over with a plain read: the next answer is the state at the new index.
            IndexUpdate::Reset => None,
            _ => Some(returned),
        };
        self.news = update.is_news();
        update
    }

    /// Notes a failed call; the index is kept, so the watch resumes where it was.
    pub fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
        self.news = false;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use awc::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn meta_from_headers() {
        let m = QueryMeta::from_headers(&headers(&[
            ("x-consul-index", "1234"),
            ("x-consul-knownleader", "true"),
            ("x-consul-lastcontact", "37"),
        ]));
        assert_eq!(
            m,
            QueryMeta {
                index: 1234,
                known_leader: true,
                last_contact: Duration::from_millis(37)
            }
        );
        let m = QueryMeta::from_headers(&headers(&[
            ("x-consul-index", "garbage"),
            ("x-consul-knownleader", "false"),
        ]));
        assert_eq!(m, QueryMeta::default());
    }

    #[test]
    fn params_of_options() {
        assert!(QueryOptions::default().params().is_empty());
        let p = QueryOptions::blocking(42, Duration::from_secs(1)).params();
        assert_eq!(
            p,
            vec![("index", Some("42".into())), ("wait", Some("1s".into()))]
        );
        // index without wait: Consul's default, said out loud so the timeout matches it.
        let o = QueryOptions {
            index: Some(7),
            ..QueryOptions::default()
        };
        assert_eq!(o.params()[1], ("wait", Some("5m0s".into())));
        let o = QueryOptions {
            index: Some(7),
            wait: Some(Duration::from_secs(3600)),
            consistency: Consistency::Stale,
            ..QueryOptions::default()
        };
        assert_eq!(
            o.params(),
            vec![
                ("index", Some("7".into())),
                ("wait", Some("10m0s".into())),
                ("stale", None)
            ]
        );
        assert_eq!(
            QueryOptions {
                consistency: Consistency::Consistent,
                ..QueryOptions::default()
            }
            .params(),
            vec![("consistent", None)]
        );
    }

    #[test]
    fn request_timeout_covers_consul_jitter() {
        let slack = Duration::from_secs(10);
        assert_eq!(QueryOptions::default().request_timeout(slack), slack);
        let o = QueryOptions::blocking(1, Duration::from_secs(160));
        assert_eq!(o.request_timeout(slack), Duration::from_secs(160 + 10 + 10));
        let o = QueryOptions::blocking(1, Duration::from_secs(3600));
        assert!(o.request_timeout(slack) > MAX_WAIT + MAX_WAIT / 16);
    }

    fn policy() -> WatchPolicy {
        WatchPolicy {
            wait: Duration::from_secs(30),
            min_interval: Duration::from_millis(100),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(8),
        }
    }

    #[test]
    fn first_call_is_plain_then_blocks_on_the_answer() {
        let mut w = WatchState::new(policy());
        assert_eq!(w.options(), QueryOptions::default());
        assert_eq!(w.observe(10), IndexUpdate::Initial);
        assert_eq!(
            w.options(),
            QueryOptions::blocking(10, Duration::from_secs(30))
        );
        assert_eq!(w.observe(10), IndexUpdate::Unchanged);
        assert_eq!(w.observe(12), IndexUpdate::Changed);
        assert_eq!(w.index(), 12);
    }

    #[test]
    fn index_going_backwards_resets_to_a_plain_read() {
        let mut w = WatchState::new(policy());
        w.observe(100);
        let update = w.observe(40);
        assert_eq!(update, IndexUpdate::Reset);
        assert!(update.is_news());
        assert_eq!(w.options(), QueryOptions::default());
        assert_eq!(w.index(), 0);
        assert_eq!(w.observe(41), IndexUpdate::Initial);
        assert_eq!(w.options().index, Some(41));
    }

    #[test]
    fn zero_from_the_server_becomes_one() {
        let mut w = WatchState::new(policy());
        w.observe(0);
        assert_eq!(w.options().index, Some(1));
        assert_eq!(w.observe(0), IndexUpdate::Unchanged);
        assert_eq!(w.options().index, Some(1));
        let mut w = WatchState::new(policy());
        w.observe(5);
        // 0 after 5 would be "backwards": normalised to 1 it still is, and starts over.
        assert_eq!(w.observe(0), IndexUpdate::Reset);
    }

    #[test]
    fn hashed_indexes_change_in_any_direction() {
        let mut w = WatchState::with_order(policy(), IndexOrder::Hashed);
        w.observe(900);
        assert_eq!(w.observe(300), IndexUpdate::Changed);
        assert_eq!(w.options().index, Some(300));
        assert_eq!(w.observe(300), IndexUpdate::Unchanged);
    }

    #[test]
    fn unchanged_answers_space_call_starts() {
        let mut w = WatchState::new(policy());
        let t0 = Instant::now();
        assert_eq!(w.delay_with_jitter(t0, 0.5), Duration::ZERO);
        w.started(t0);
        w.observe(3);
        w.observe(3);
        assert_eq!(
            w.delay_with_jitter(t0 + Duration::from_millis(30), 0.5),
            Duration::from_millis(70)
        );
        assert_eq!(
            w.delay_with_jitter(t0 + Duration::from_secs(1), 0.5),
            Duration::ZERO
        );
    }

    #[test]
    fn changes_are_followed_at_once_for_a_burst_then_at_the_rate() {
        let mut w = WatchState::new(policy());
        let t0 = Instant::now();
        let mut now = t0;
        w.started(now);
        w.observe(1);
        // An index that moves on every answer, each answer at once: CHANGE_BURST calls go
        // without delay, then CHANGE_RATE per min_interval (one per 20 ms here).
        let mut immediate = 0;
        for i in 2..40u64 {
            let d = w.delay_with_jitter(now, 0.5);
            if d.is_zero() {
                immediate += 1;
            } else {
                assert!(d <= Duration::from_millis(20), "{d:?}");
            }
            now += d;
            w.started(now);
            assert_eq!(w.observe(i), IndexUpdate::Changed);
        }
        // The first call spent one of the burst.
        assert_eq!(immediate, CHANGE_BURST as usize - 1);
        let elapsed = now - t0;
        assert!(
            elapsed >= Duration::from_millis(575) && elapsed <= Duration::from_millis(585),
            "38 calls, 9 at once, the rest 20 ms apart: {elapsed:?}"
        );
        // Quiet for a while: the burst is back.
        now += Duration::from_secs(5);
        w.started(now);
        w.observe(100);
        for i in 101..105u64 {
            assert_eq!(w.delay_with_jitter(now, 0.5), Duration::ZERO);
            w.started(now);
            w.observe(i);
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_cap_and_resets_on_success() {
        let mut w = WatchState::new(policy());
        let t0 = Instant::now();
        w.observe(3);
        w.failed();
        // 1s base: between 0.5s and 1s.
        assert_eq!(w.delay_with_jitter(t0, 0.0), Duration::from_millis(500));
        assert_eq!(w.delay_with_jitter(t0, 1.0), Duration::from_secs(1));
        w.failed();
        w.failed();
        assert_eq!(w.delay_with_jitter(t0, 1.0), Duration::from_secs(4));
        for _ in 0..40 {
            w.failed();
        }
        assert_eq!(w.delay_with_jitter(t0, 1.0), Duration::from_secs(8));
        assert_eq!(w.delay_with_jitter(t0, 0.0), Duration::from_secs(4));
        let d = w.delay(t0);
        assert!(
            d >= Duration::from_secs(4) && d <= Duration::from_secs(8),
            "{d:?}"
        );
        // The index survives errors.
        assert_eq!(w.index(), 3);
        assert_eq!(w.observe(3), IndexUpdate::Unchanged);
        assert_eq!(w.failures(), 0);
        assert_eq!(
            w.delay_with_jitter(t0 + Duration::from_secs(1), 1.0),
            Duration::ZERO
        );
    }
}
