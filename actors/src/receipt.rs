//! Receipts: the record, written to Consul KV when an action has run for a trigger, that tells
//! every replica the job is done. Also the KV key layout the actors share.
//!
//! Written by the Dispatcher with CAS 0 (only if absent), so however many replicas race, one
//! receipt stands per (action, trigger); read by every replica before and after taking a lock.

use serde::{Deserialize, Serialize};

/// The most of a replica's name a liveness ID keeps (the cluster name is bounded by config).
const MAX_ID_REPLICA: usize = 64;

/// `text` cut to what a URL path segment or a file name may hold safely (letters, digits,
/// `-`, `_`, `.`; anything else becomes `-`), at most `max` characters.
pub fn safe_segment(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '-',
        })
        .take(max)
        .collect()
}

/// FNV-1a: a hash that stays the same across builds, so a replica restarted by a newer build
/// finds its liveness check under the same ID.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The KV keys of one cluster: `rehydrator/<cluster>/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Self {
        Self {
            root: format!("rehydrator/{cluster}"),
        }
    }

    /// The name of `replica`'s Consul session: `rehydrator <cluster> <replica>`.
    pub fn session_name(&self, replica: &str) -> String {
        format!("{} {replica}", self.session_prefix())
    }

    /// The replica a session named by `session_name` belongs to; None for any other name.
    pub fn replica_of_session<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(&self.session_prefix())?.strip_prefix(' ')
    }

    /// The cluster's name.
    pub fn cluster(&self) -> &str {
        self.root.strip_prefix("rehydrator/").unwrap_or(&self.root)
    }

    /// The ID of `replica`'s liveness check and its service on the agent:
    /// `rehydrator-<cluster>-<replica>-<hash>`, the replica's name cut to what an ID in a URL
    /// path may hold, and a hash of the whole name so that two names cut alike stay apart.
    pub fn liveness_id(&self, replica: &str) -> String {
        let safe = safe_segment(replica, MAX_ID_REPLICA);
        format!(
            "rehydrator-{}-{safe}-{:08x}",
            self.cluster(),
            fnv1a(replica) as u32
        )
    }

    fn session_prefix(&self) -> String {
        self.root.replacen('/', " ", 1)
    }

    /// `rehydrator/<cluster>/locks/<lock>`
    pub fn lock(&self, lock: &str) -> String {
        format!("{}/locks/{lock}", self.root)
    }

    /// `rehydrator/<cluster>/rollout` — the rollout in progress (or the last one).
    pub fn rollout(&self) -> String {
        format!("{}/rollout", self.root)
    }

    /// `rehydrator/<cluster>/guard` — the lifecycle guard's last decision.
    pub fn guard(&self) -> String {
        format!("{}/guard", self.root)
    }

    /// `rehydrator/<cluster>/pause` — present: no new rollout steps.
    pub fn pause(&self) -> String {
        format!("{}/pause", self.root)
    }

    /// `rehydrator/<cluster>/abort` — the last `rehydrator abort`: who, when, why. Written
    /// after the record it changed; the replicas watch it to act at once.
    pub fn abort(&self) -> String {
        format!("{}/abort", self.root)
    }

    /// `rehydrator/<cluster>/receipts/<action>/` — the prefix pruning lists.
    pub fn receipts(&self, action: &str) -> String {
        format!("{}/receipts/{action}/", self.root)
    }

    /// `rehydrator/<cluster>/watermarks/<action>` — how far pruning went, per watch
    /// (`crate::watermark`).
    pub fn watermarks(&self, action: &str) -> String {
        format!("{}/watermarks/{action}", self.root)
    }

    /// `rehydrator/<cluster>/receipts/<action>/<trigger_id>`
    pub fn receipt(&self, action: &str, trigger_id: &str) -> String {
        format!("{}{}", self.receipts(action), sanitize(trigger_id))
    }
}

/// Trigger IDs are event UUIDs or indexes; anything else is made safe for a KV path segment,
/// dots alone included (Consul 1.21.5 and later refuse a `..` segment, and an HTTP client may
/// fold `.` and `..` away).
fn sanitize(id: &str) -> String {
    let dots = id.chars().all(|c| c == '.');
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || (c == '.' && !dots) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// The action did its work (a command exited 0, a webhook answered 2xx).
    Succeeded(String),
    /// The rollout launched a server (detail: the machine).
    Launched(String),
    /// The rollout retired a server (detail: the machine).
    Retired(String),
    /// Nothing needed doing (detail: why).
    NoOp(String),
    /// It failed and will not be retried any more (detail: the last error).
    Failed(String),
}

impl Outcome {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded(_) => "succeeded",
            Outcome::Launched(_) => "launched",
            Outcome::Retired(_) => "retired",
            Outcome::NoOp(_) => "noop",
            Outcome::Failed(_) => "failed",
        }
    }
}

/// The receipt of one (action, trigger).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub action: String,
    pub trigger_id: String,
    pub watch: String,
    pub outcome: Outcome,
    /// The replica that ran it.
    pub by: String,
    /// Unix milliseconds.
    pub started_at: u64,
    pub finished_at: u64,
    /// The lock's LockIndex while it ran: a fencing token that orders holders.
    pub lock_index: u64,
    /// Runs it took, counting failures retried.
    pub attempts: u32,
    /// The trigger's position (see `watch_plan::Fire`): pruning raises the watch's watermark
    /// to it before deleting the receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

impl Receipt {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Which receipt keys to delete so that the newest `keep` stay, newest by ModifyIndex.
pub fn to_prune(mut entries: Vec<(String, u64)>, keep: usize) -> Vec<String> {
    if entries.len() <= keep {
        return Vec::new();
    }
    entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    entries.into_iter().skip(keep).map(|(k, _)| k).collect()
}

/// Milliseconds since the Unix epoch, for receipts.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A lock's value: which replica holds it, for which job. The Dispatcher writes it as it takes
/// the lock; status, the demo and a replica taking a job over read it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockValue {
    pub replica: String,
    pub action: String,
    pub trigger_id: String,
    /// When it was taken (Unix ms): how long a lock has been held, for status and alerts.
    /// Older replicas wrote none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

impl LockValue {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The holder a lock's value names; None for an empty value (a clean release leaves one)
    /// or anything else.
    pub fn decode(value: &[u8]) -> Option<Self> {
        serde_json::from_slice(value).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_liveness_id_is_url_safe_bounded_and_apart_for_names_cut_alike() {
        let k = Keys::new("prod");
        let a = k.liveness_id("r-1 (host 7)");
        let b = k.liveness_id("r-1 [host 7]");
        assert!(a.starts_with("rehydrator-prod-r-1--host-7--"), "{a}");
        assert_ne!(a, b);
        assert_eq!(a, k.liveness_id("r-1 (host 7)"));
        assert_ne!(a, Keys::new("stage").liveness_id("r-1 (host 7)"));
        let long = k.liveness_id(&"x/".repeat(500));
        assert!(
            long.len() <= "rehydrator-prod-".len() + MAX_ID_REPLICA + 9,
            "{long}"
        );
        assert!(long
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    }

    #[test]
    fn a_session_name_gives_back_its_replica_and_only_for_its_cluster() {
        let k = Keys::new("prod");
        let name = k.session_name("r-1 (host 7)");
        assert_eq!(name, "rehydrator prod r-1 (host 7)");
        assert_eq!(k.replica_of_session(&name), Some("r-1 (host 7)"));
        assert_eq!(Keys::new("pro").replica_of_session(&name), None);
        assert_eq!(k.replica_of_session("consul-lock prod r-1"), None);
    }

    #[test]
    fn a_lock_value_round_trips_and_an_empty_one_names_nobody() {
        let v = LockValue {
            replica: "r1".into(),
            action: "spin-up".into(),
            trigger_id: "e-1".into(),
            since: Some(1_764_000_000_000),
        };
        assert_eq!(LockValue::decode(&v.encode()), Some(v));
        assert_eq!(LockValue::decode(b""), None);
        assert_eq!(LockValue::decode(b"{\"replica\": \"r1\"}"), None);
        // A value written before `since` existed still names its holder.
        let old = br#"{"replica": "r1", "action": "spin-up", "trigger_id": "e-1"}"#;
        assert_eq!(LockValue::decode(old).and_then(|v| v.since), None);
        assert!(LockValue::decode(old).is_some());
    }

    #[test]
    fn keys_follow_the_agreed_layout() {
        let k = Keys::new("prod");
        assert_eq!(k.lock("step"), "rehydrator/prod/locks/step");
        assert_eq!(
            k.receipt("notify", "42"),
            "rehydrator/prod/receipts/notify/42"
        );
        assert_eq!(
            k.receipt("notify", "a/b c"),
            "rehydrator/prod/receipts/notify/a_b_c"
        );
        // No `.` or `..` segment: Consul 1.21.5+ refuses it, clients fold it away.
        assert_eq!(
            k.receipt("notify", ".."),
            "rehydrator/prod/receipts/notify/__"
        );
        assert_eq!(
            k.receipt("notify", "v1.2"),
            "rehydrator/prod/receipts/notify/v1.2"
        );
    }

    #[test]
    fn pruning_keeps_the_newest() {
        let entries = vec![
            ("a".into(), 5),
            ("b".into(), 9),
            ("c".into(), 1),
            ("d".into(), 7),
        ];
        let mut gone = to_prune(entries, 2);
        gone.sort();
        assert_eq!(gone, vec!["a".to_string(), "c".to_string()]);
        assert!(to_prune(vec![("a".into(), 1)], 2).is_empty());
    }

    #[test]
    fn receipts_round_trip() {
        let r = Receipt {
            action: "notify".into(),
            trigger_id: "abc".into(),
            watch: "events".into(),
            outcome: Outcome::NoOp("nothing to do".into()),
            by: "replica-1".into(),
            started_at: 1,
            finished_at: 2,
            lock_index: 3,
            attempts: 1,
            position: Some(4),
        };
        assert_eq!(Receipt::from_bytes(&r.to_bytes()), Some(r));
        assert_eq!(Receipt::from_bytes(b"not a receipt"), None);
    }
}
