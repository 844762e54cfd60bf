//! Consul's key/value table (`agent/consul/state/kvs.go`): entries, tombstones and the leader's
//! lock-delays, with the rules of its writes, including their quirks: an unchanged write keeps
//! its ModifyIndex, a plain set keeps the lock holder but resets LockIndex, a CAS delete of a
//! missing key is true. Plain data: the writes' Raft index comes from the caller, and waking
//! readers is `fsm::kv`'s.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use serde::Serialize;
use tokio::time::Instant;

/// One key as Consul stores it (`structs.DirEntry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    /// The session holding the key's lock.
    pub session: Option<String>,
    /// How many times the lock was acquired.
    pub lock_index: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

impl DirEntry {
    /// Consul skips a write that changes none of these, keeping the old ModifyIndex.
    fn same_content(&self, other: &DirEntry) -> bool {
        self.lock_index == other.lock_index
            && self.flags == other.flags
            && self.value == other.value
            && self.session == other.session
    }
}

/// The entry as Consul's JSON shows it: Value base64 (null when empty, as Consul's msgpack
/// round trip makes it), Session omitted when unlocked.
impl Serialize for DirEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Wire<'a> {
            lock_index: u64,
            key: &'a str,
            flags: u64,
            value: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            session: Option<&'a str>,
            create_index: u64,
            modify_index: u64,
        }
        Wire {
            lock_index: self.lock_index,
            key: &self.key,
            flags: self.flags,
            value: (!self.value.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&self.value)),
            session: self.session.as_deref(),
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
        .serialize(s)
    }
}

/// The KV table, its graveyard and the leader's lock-delay map. `Clone` so a transaction can
/// run on a copy and be dropped whole when one of its operations fails.
#[derive(Debug, Default, Clone)]
pub struct KvStore {
    entries: BTreeMap<String, DirEntry>,
    /// Deleted keys (or deleted prefixes, for a tree delete) and the index that deleted them,
    /// so a list's index never slides back below a delete it should have seen.
    tombstones: BTreeMap<String, u64>,
    /// The highest index of any write to the entries or the graveyard (`kvsMaxIndex`).
    table_index: u64,
    /// Keys nobody may acquire until the instant passes (wall clock, already time-scaled).
    lock_delays: HashMap<String, Instant>,
}

impl KvStore {
    /// A single key and the index a read of it answers at: the entry's ModifyIndex, else the
    /// table's.
    pub fn get(&self, key: &str) -> (u64, Option<&DirEntry>) {
        match self.entries.get(key) {
            Some(e) => (e.modify_index, Some(e)),
            None => (self.table_index.max(1), None),
        }
    }

    /// Every entry under `prefix`, and the index of the list: the highest ModifyIndex among
    /// them and the tombstones under the prefix, else the table's.
    pub fn list(&self, prefix: &str) -> (u64, Vec<&DirEntry>) {
        let entries: Vec<&DirEntry> = self.under(prefix).collect();
        let mut index = entries.iter().map(|e| e.modify_index).max().unwrap_or(0);
        if prefix.is_empty() {
            index = self.table_index;
        } else {
            let graves = self
                .tombstones
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, i)| *i)
                .max()
                .unwrap_or(0);
            index = index.max(graves);
        }
        if index == 0 {
            index = self.table_index;
        }
        (index.max(1), entries)
    }

    /// The keys under `prefix`, cut after the first `separator` past the prefix and
    /// de-duplicated (`?keys&separator=/`), with the list's index.
    pub fn keys(&self, prefix: &str, separator: &str) -> (u64, Vec<String>) {
        let (index, entries) = self.list(prefix);
        let mut keys: Vec<String> = Vec::new();
        for e in entries {
            let key = match e.key[prefix.len()..].find(separator) {
                Some(at) if !separator.is_empty() => {
                    e.key[..prefix.len() + at + separator.len()].to_owned()
                }
                _ => e.key.clone(),
            };
            // Entries come sorted, so a folder's keys are adjacent.
            if keys.last() != Some(&key) {
                keys.push(key);
            }
        }
        (index, keys)
    }

    fn under(&self, prefix: &str) -> impl Iterator<Item = &DirEntry> + '_ {
        let prefix = prefix.to_owned();
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, e)| e)
    }

    /// The keys whose lock `session` holds.
    pub fn held_by(&self, session: &str) -> Vec<String> {
        self.entries
            .values()
            .filter(|e| e.session.as_deref() == Some(session))
            .map(|e| e.key.clone())
            .collect()
    }

    /// Writes `entry` at `idx` unless it changes nothing; true when it was written.
    fn put(&mut self, idx: u64, mut entry: DirEntry) -> bool {
        match self.entries.get(&entry.key) {
            Some(old) if old.same_content(&entry) => return false,
            Some(old) => entry.create_index = old.create_index,
            None => entry.create_index = idx,
        }
        entry.modify_index = idx;
        self.table_index = self.table_index.max(idx);
        self.entries.insert(entry.key.clone(), entry);
        true
    }

    /// A plain PUT: the value and flags change, the lock holder stays, LockIndex goes to 0
    /// (Consul's set carries the request's zero LockIndex).
    pub fn set(&mut self, idx: u64, key: &str, value: Vec<u8>, flags: u64) -> bool {
        let session = self.entries.get(key).and_then(|e| e.session.clone());
        self.put(idx, new_entry(key, value, flags, session, 0))
    }

    /// `?cas=N`: 0 writes only if the key is absent, N only if its ModifyIndex is N.
    /// Returns whether the check passed (an unchanged write still passes).
    pub fn cas(&mut self, idx: u64, key: &str, value: Vec<u8>, flags: u64, cas: u64) -> bool {
        let ok = match self.entries.get(key) {
            None => cas == 0,
            Some(e) => cas != 0 && e.modify_index == cas,
        };
        if ok {
            self.set(idx, key, value, flags);
        }
        ok
    }

    /// `?acquire=<session>`, the session already known to exist and the key not under
    /// lock-delay. A new holder bumps LockIndex; the holder re-acquiring only updates the value.
    pub fn lock(&mut self, idx: u64, key: &str, value: Vec<u8>, flags: u64, session: &str) -> bool {
        let lock_index = match self.entries.get(key) {
            Some(e) if e.session.as_deref() == Some(session) => e.lock_index,
            Some(e) if e.session.is_some() => return false,
            Some(e) => e.lock_index + 1,
            None => 1,
        };
        self.put(
            idx,
            new_entry(key, value, flags, Some(session.to_owned()), lock_index),
        );
        true
    }

    /// `?release=<session>`: only the holder may release; the request's value and flags are
    /// written with it, as Consul does.
    pub fn unlock(
        &mut self,
        idx: u64,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        session: &str,
    ) -> bool {
        let lock_index = match self.entries.get(key) {
            Some(e) if e.session.as_deref() == Some(session) => e.lock_index,
            _ => return false,
        };
        self.put(idx, new_entry(key, value, flags, None, lock_index));
        true
    }

    /// Clears a lock because its session was invalidated, keeping value and LockIndex.
    pub fn release(&mut self, idx: u64, key: &str) -> bool {
        match self.entries.get(key) {
            Some(e) => {
                let mut e = e.clone();
                e.session = None;
                self.put(idx, e)
            }
            None => false,
        }
    }

    /// Deletes one key, leaving a tombstone; true when something was deleted.
    pub fn delete(&mut self, idx: u64, key: &str) -> bool {
        if self.entries.remove(key).is_none() {
            return false;
        }
        self.tombstones.insert(key.to_owned(), idx);
        self.table_index = self.table_index.max(idx);
        true
    }

    /// `DELETE ?cas=N`: deletes only if the ModifyIndex is N. A missing key counts as
    /// deleted (true), as in Consul.
    pub fn delete_cas(&mut self, idx: u64, key: &str, cas: u64) -> bool {
        match self.entries.get(key) {
            None => true,
            Some(e) if e.modify_index != cas => false,
            Some(_) => self.delete(idx, key),
        }
    }

    /// `DELETE ?recurse`: removes every key under `prefix`, with one tombstone for the prefix
    /// (none for the whole store). Returns the deleted keys.
    pub fn delete_tree(&mut self, idx: u64, prefix: &str) -> Vec<String> {
        let doomed: Vec<String> = self.under(prefix).map(|e| e.key.clone()).collect();
        if doomed.is_empty() {
            return doomed;
        }
        for k in &doomed {
            self.entries.remove(k);
        }
        if !prefix.is_empty() {
            self.tombstones.insert(prefix.to_owned(), idx);
        }
        self.table_index = self.table_index.max(idx);
        doomed
    }

    /// Blocks acquisitions of `key` until `until`.
    pub fn set_lock_delay(&mut self, key: &str, until: Instant) {
        self.lock_delays.insert(key.to_owned(), until);
    }

    /// Whether `key` is still under a lock-delay at `now`. Expired entries are dropped.
    pub fn lock_delayed(&mut self, key: &str, now: Instant) -> bool {
        match self.lock_delays.get(key) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.lock_delays.remove(key);
                false
            }
            None => false,
        }
    }

    /// The table index (KV entries and tombstones), for tests and invariants.
    pub fn table_index(&self) -> u64 {
        self.table_index
    }
}

fn new_entry(
    key: &str,
    value: Vec<u8>,
    flags: u64,
    session: Option<String>,
    lock_index: u64,
) -> DirEntry {
    DirEntry {
        key: key.to_owned(),
        value,
        flags,
        session,
        lock_index,
        create_index: 0,
        modify_index: 0,
    }
}

/// A KV write as Consul's `KVS.Apply` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    Set {
        key: String,
        value: Vec<u8>,
        flags: u64,
    },
    Cas {
        key: String,
        value: Vec<u8>,
        flags: u64,
        index: u64,
    },
    Lock {
        key: String,
        value: Vec<u8>,
        flags: u64,
        session: String,
    },
    Unlock {
        key: String,
        value: Vec<u8>,
        flags: u64,
        session: String,
    },
    Delete {
        key: String,
    },
    DeleteCas {
        key: String,
        index: u64,
    },
    DeleteTree {
        prefix: String,
    },
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn val(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn set_get_and_unchanged_write_keeps_modify_index() {
        let mut kv = KvStore::default();
        assert_eq!(kv.get("a").0, 1, "an empty store answers index 1, never 0");
        assert!(kv.set(5, "a", val("x"), 0));
        let (idx, e) = kv.get("a");
        assert_eq!(idx, 5);
        assert_eq!(e.map(|e| (e.create_index, e.modify_index)), Some((5, 5)));
        assert!(
            !kv.set(6, "a", val("x"), 0),
            "same value is a no-op in Consul"
        );
        assert_eq!(kv.get("a").0, 5);
        assert!(kv.set(7, "a", val("y"), 3));
        let e = kv.get("a").1.cloned();
        assert_eq!(
            e.map(|e| (e.create_index, e.modify_index, e.flags)),
            Some((5, 7, 3))
        );
    }

    #[test]
    fn cas_zero_only_creates_and_cas_n_needs_the_modify_index() {
        let mut kv = KvStore::default();
        assert!(
            !kv.cas(2, "k", val("a"), 0, 9),
            "cas=N on a missing key fails"
        );
        assert!(kv.cas(3, "k", val("a"), 0, 0));
        assert!(
            !kv.cas(4, "k", val("b"), 0, 0),
            "cas=0 on an existing key fails"
        );
        assert!(!kv.cas(5, "k", val("b"), 0, 2));
        assert!(kv.cas(6, "k", val("b"), 0, 3));
        assert_eq!(kv.get("k").1.map(|e| e.value.clone()), Some(val("b")));
    }

    #[test]
    fn lock_contention_and_lock_index() {
        let mut kv = KvStore::default();
        assert!(kv.lock(2, "l", val("a"), 0, "s1"));
        assert_eq!(kv.get("l").1.map(|e| e.lock_index), Some(1));
        assert!(
            !kv.lock(3, "l", val("b"), 0, "s2"),
            "held by another session"
        );
        assert!(
            kv.lock(4, "l", val("a2"), 0, "s1"),
            "the holder may re-acquire"
        );
        let e = kv.get("l").1.cloned();
        assert_eq!(
            e.as_ref().map(|e| e.lock_index),
            Some(1),
            "re-acquire keeps LockIndex"
        );
        assert_eq!(e.map(|e| e.value), Some(val("a2")));
        assert!(
            !kv.unlock(5, "l", vec![], 0, "s2"),
            "only the holder releases"
        );
        assert!(kv.unlock(6, "l", val("a2"), 0, "s1"));
        assert_eq!(kv.get("l").1.and_then(|e| e.session.clone()), None);
        assert!(kv.lock(7, "l", val("c"), 0, "s2"));
        let e = kv.get("l").1.cloned();
        assert_eq!(
            e.as_ref().map(|e| e.lock_index),
            Some(2),
            "a new holder bumps LockIndex"
        );
        assert_eq!(e.and_then(|e| e.session), Some("s2".into()));
        assert_eq!(kv.held_by("s2"), vec!["l".to_string()]);
        assert!(!kv.unlock(8, "missing", vec![], 0, "s2"));
    }

    #[test]
    fn plain_put_keeps_the_holder_and_resets_lock_index() {
        let mut kv = KvStore::default();
        assert!(kv.lock(2, "l", val("a"), 0, "s1"));
        assert!(kv.set(3, "l", val("b"), 0));
        let e = kv.get("l").1.cloned();
        assert_eq!(
            e.as_ref().and_then(|e| e.session.clone()),
            Some("s1".into())
        );
        assert_eq!(e.map(|e| e.lock_index), Some(0));
    }

    #[test]
    fn release_keeps_value_and_lock_index() {
        let mut kv = KvStore::default();
        kv.lock(2, "l", val("v"), 0, "s1");
        assert!(kv.release(9, "l"));
        let e = kv.get("l").1.cloned();
        assert_eq!(
            e.map(|e| (e.session, e.lock_index, e.value, e.modify_index)),
            Some((None, 1, val("v"), 9))
        );
    }

    #[test]
    fn tombstones_keep_list_indexes_from_going_backwards() {
        let mut kv = KvStore::default();
        kv.set(2, "a/1", val("x"), 0);
        kv.set(3, "a/2", val("x"), 0);
        kv.set(4, "b/1", val("x"), 0);
        assert_eq!(kv.list("a/").0, 3);
        assert!(kv.delete(5, "a/2"));
        let (idx, entries) = kv.list("a/");
        assert_eq!(entries.len(), 1);
        assert_eq!(idx, 5, "the tombstone's index, not a/1's ModifyIndex");
        assert_eq!(kv.list("b/").0, 4, "other prefixes are unaffected");
        assert_eq!(kv.get("a/2").0, 5, "a missing key answers the table index");
        assert_eq!(kv.list("").0, 5, "the root answers the table index");
        assert_eq!(
            kv.list("zzz").0,
            5,
            "an empty prefix with no graves: table index"
        );
        assert!(!kv.delete(6, "a/2"), "deleting nothing writes nothing");
        assert_eq!(kv.table_index(), 5);
    }

    #[test]
    fn delete_tree_removes_the_prefix_and_leaves_one_tombstone() {
        let mut kv = KvStore::default();
        kv.set(2, "t/a", val("x"), 0);
        kv.set(3, "t/b/c", val("x"), 0);
        kv.set(4, "u", val("x"), 0);
        let gone = kv.delete_tree(5, "t/");
        assert_eq!(gone, vec!["t/a".to_string(), "t/b/c".to_string()]);
        assert!(kv.list("t/").1.is_empty());
        assert_eq!(kv.list("t/").0, 5);
        assert!(kv.get("u").1.is_some());
        assert!(kv.delete_tree(6, "nothing/").is_empty());
        assert_eq!(kv.table_index(), 5);
    }

    #[test]
    fn delete_cas() {
        let mut kv = KvStore::default();
        kv.set(2, "k", val("x"), 0);
        assert!(!kv.delete_cas(3, "k", 1));
        assert!(kv.delete_cas(4, "k", 2));
        assert!(kv.delete_cas(5, "k", 2), "a missing key counts as deleted");
    }

    #[test]
    fn keys_with_separator() {
        let mut kv = KvStore::default();
        for (i, k) in ["web/a", "web/b/1", "web/b/2", "web/c/x/y", "webz"]
            .iter()
            .enumerate()
        {
            kv.set(i as u64 + 2, k, val("x"), 0);
        }
        assert_eq!(kv.keys("web/", "/").1, vec!["web/a", "web/b/", "web/c/"]);
        assert_eq!(kv.keys("web", "/").1, vec!["web/", "webz"]);
        assert_eq!(kv.keys("web/", "").1.len(), 4);
    }

    #[test]
    fn lock_delay_expires() {
        let mut kv = KvStore::default();
        let now = Instant::now();
        kv.set_lock_delay("k", now + Duration::from_secs(1));
        assert!(kv.lock_delayed("k", now));
        assert!(!kv.lock_delayed("k", now + Duration::from_secs(2)));
        assert!(!kv.lock_delayed("k", now), "expired delays are dropped");
    }

    #[test]
    fn entry_json_matches_consul() {
        let mut kv = KvStore::default();
        kv.set(2, "a", vec![], 0);
        kv.lock(3, "b", val("hi"), 7, "s");
        let a = serde_json::to_value(kv.get("a").1).unwrap_or_default();
        assert_eq!(
            a,
            serde_json::json!({"LockIndex":0,"Key":"a","Flags":0,"Value":null,
                "CreateIndex":2,"ModifyIndex":2})
        );
        let b = serde_json::to_value(kv.get("b").1).unwrap_or_default();
        assert_eq!(b["Value"], "aGk=");
        assert_eq!(b["Session"], "s");
        assert_eq!(b["LockIndex"], 1);
        assert_eq!(b["Flags"], 7);
    }
}
