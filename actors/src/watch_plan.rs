//! What counts as a change worth firing, as plain functions over a watch's reads. The Watcher
//! actor feeds every read through `Memory::observe`; nothing here knows actix or HTTP.
//!
//! - The first read is the baseline: nothing fires on start.
//! - A read fires only if its index moved AND its content changed. Content ignores the
//!   CreateIndex/ModifyIndex bookkeeping, so writing a key's same value again is not a change.
//! - For event watches each event ID not seen before is its own trigger; other watches have
//!   one trigger per change, named by its X-Consul-Index, which every replica sees the same;
//!   image watches name it after the image (`image_watch::trigger_id`), because each replica's
//!   poll is its own and only the image is common to all.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use serde_json::Value;

/// One trigger a read produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Fire {
    pub trigger_id: String,
    /// Where the trigger stands among its watch's triggers, the same on every replica: an
    /// event's LTime, the X-Consul-Index of a change (a schedule's tick), an image's creation
    /// time in ms. Pruning's watermark compares it (`crate::watermark`); None: unknown.
    pub position: Option<u64>,
    pub payload: Value,
}

/// An event's position: its LTime, Serf's Lamport clock, which every agent reports the same.
fn ltime(event: &Value) -> Option<u64> {
    event.get("LTime").and_then(Value::as_u64)
}

/// How a watch's changes are named as triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// By X-Consul-Index (key, service, ... watches; a schedule's tick number).
    Index,
    /// Each new event by its event ID.
    Event,
    /// By the image a poll shows.
    Image,
}

impl Naming {
    pub fn of(kind: &rehydrator_config::WatchKind) -> Self {
        use rehydrator_config::WatchKind;
        match kind {
            WatchKind::Event { .. } => Naming::Event,
            WatchKind::Image { .. } => Naming::Image,
            _ => Naming::Index,
        }
    }
}

/// What a watch remembers between reads.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    baseline: bool,
    index: u64,
    digest: u64,
    events: HashSet<String>,
    /// The highest event LTime seen (baseline included).
    ltime: Option<u64>,
    /// The gap the last read showed, until taken.
    gap: Option<Gap>,
}

/// Events an event watch never saw: Consul's agent keeps only its last 256 user events, so a
/// watch that reads too late (a burst, a frozen replica) finds the events after the last it
/// saw gone. Seen when no event the watch saw before is still listed and the oldest listed
/// LTime is more than one past the last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The last LTime the watch saw, and the oldest it sees now.
    pub after: u64,
    pub next: u64,
}

impl Gap {
    /// How many events were dropped at most: exact when only this watch's event name is
    /// fired (the LTime clock is shared by every event name).
    pub fn missed(&self) -> u64 {
        self.next.saturating_sub(self.after).saturating_sub(1)
    }
}

/// The gap between what was seen up to LTime `seen` and the events listed now, if any.
fn gap(seen: Option<u64>, events: &[Value]) -> Option<Gap> {
    let seen = seen?;
    let times: Vec<u64> = events.iter().filter_map(ltime).collect();
    let oldest = *times.iter().min()?;
    (oldest > seen.saturating_add(1) && !times.iter().any(|t| *t <= seen)).then_some(Gap {
        after: seen,
        next: oldest,
    })
}

impl Memory {
    /// Whether the baseline read has been seen.
    pub fn has_baseline(&self) -> bool {
        self.baseline
    }

    /// The events the last read showed were dropped before this watch saw them.
    pub fn take_gap(&mut self) -> Option<Gap> {
        self.gap.take()
    }

    /// Takes in one read of an event watch (`is_event`) or an index-named one; returns what
    /// fires.
    pub fn observe(&mut self, is_event: bool, index: u64, payload: &Value) -> Vec<Fire> {
        let naming = if is_event {
            Naming::Event
        } else {
            Naming::Index
        };
        self.observe_as(naming, index, payload)
    }

    /// Takes in one read of a watch whose triggers are named by `naming`; returns what fires.
    pub fn observe_as(&mut self, naming: Naming, index: u64, payload: &Value) -> Vec<Fire> {
        let is_event = naming == Naming::Event;
        let digest = content_digest(payload);
        if is_event {
            let events = payload.as_array().map(Vec::as_slice).unwrap_or_default();
            if self.baseline {
                self.gap = gap(self.ltime, events);
            }
            let newest = events.iter().filter_map(ltime).max();
            self.ltime = self.ltime.max(newest);
        }
        if !self.baseline {
            self.baseline = true;
            self.index = index;
            self.digest = digest;
            self.events = event_ids(payload).into_iter().collect();
            return Vec::new();
        }
        let moved = index != self.index;
        let changed = digest != self.digest;
        self.index = index;
        self.digest = digest;
        if !(moved && changed) {
            return Vec::new();
        }
        if is_event {
            let mut fires = Vec::new();
            let events = payload.as_array().cloned().unwrap_or_default();
            let mut now = HashSet::new();
            for e in events {
                let Some(id) = e.get("ID").and_then(Value::as_str).map(str::to_owned) else {
                    continue;
                };
                // An ID listed twice is one event: a hostile or broken answer must not make
                // it fire once per copy.
                if !now.insert(id.clone()) {
                    continue;
                }
                if !self.events.contains(&id) {
                    fires.push(Fire {
                        trigger_id: id,
                        position: ltime(&e),
                        payload: e,
                    });
                }
            }
            self.events = now;
            fires
        } else if naming == Naming::Image {
            crate::image_watch::trigger_id(payload)
                .map(|trigger_id| Fire {
                    trigger_id,
                    position: crate::image_watch::position(payload),
                    payload: payload.clone(),
                })
                .into_iter()
                .collect()
        } else {
            vec![Fire {
                trigger_id: index.to_string(),
                position: Some(index),
                payload: payload.clone(),
            }]
        }
    }
}

/// The event IDs in an event list, oldest first.
pub fn event_ids(payload: &Value) -> Vec<String> {
    payload
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.get("ID").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Events in the buffer at start that arrived while this replica (and every other) was down:
/// those after the newest event with a receipt that have none themselves. With no receipt at
/// all in the buffer nothing is replayed: the buffer then predates us (first deployment), and
/// replaying it would run old events as new.
pub fn events_to_replay(events: &Value, receipted: &HashSet<String>) -> Vec<Fire> {
    let list = events.as_array().cloned().unwrap_or_default();
    let ids: Vec<Option<String>> = list
        .iter()
        .map(|e| e.get("ID").and_then(Value::as_str).map(str::to_owned))
        .collect();
    let Some(last) = ids
        .iter()
        .rposition(|id| id.as_ref().is_some_and(|id| receipted.contains(id)))
    else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    list.into_iter()
        .zip(ids)
        .skip(last + 1)
        .filter_map(|(e, id)| {
            let id = id?;
            (!receipted.contains(&id) && seen.insert(id.clone())).then_some(Fire {
                trigger_id: id,
                position: ltime(&e),
                payload: e,
            })
        })
        .collect()
}

/// A digest of the payload without Consul's index bookkeeping.
fn content_digest(payload: &Value) -> u64 {
    let mut h = DefaultHasher::new();
    hash_value(payload, &mut h);
    h.finish()
}

fn hash_value(v: &Value, h: &mut DefaultHasher) {
    match v {
        Value::Object(map) => {
            0u8.hash(h);
            for (k, v) in map {
                if k == "CreateIndex" || k == "ModifyIndex" {
                    continue;
                }
                k.hash(h);
                hash_value(v, h);
            }
        }
        Value::Array(items) => {
            1u8.hash(h);
            items.len().hash(h);
            for i in items {
                hash_value(i, h);
            }
        }
        other => other.to_string().hash(h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kv(value: &str, modify: u64) -> Value {
        json!([{ "Key": "k", "Value": value, "CreateIndex": 1, "ModifyIndex": modify, "LockIndex": 0, "Flags": 0 }])
    }

    #[test]
    fn events_dropped_before_the_watch_read_them_are_a_gap() {
        let e = |n: u64| json!({ "ID": format!("e{n}"), "Name": "consul-rehydrate", "LTime": n });
        let list = |range: std::ops::RangeInclusive<u64>| Value::Array(range.map(e).collect());
        let mut m = Memory::default();
        m.observe(true, 1, &list(1..=3));
        // The buffer still holds what was seen: no gap, whatever came after it.
        m.observe(true, 2, &list(2..=300));
        assert_eq!(m.take_gap(), None);
        // Nothing seen is left and the oldest listed is far past it: 400..=655 kept, 301..=399
        // dropped unseen.
        let fired = m.observe(true, 3, &list(400..=655));
        assert_eq!(fired.len(), 256);
        let gap = m.take_gap().expect("a gap");
        assert_eq!((gap.after, gap.next, gap.missed()), (300, 400, 99));
        assert_eq!(m.take_gap(), None, "taken once");
        // Right after the last seen: nothing dropped.
        m.observe(true, 4, &list(656..=700));
        assert_eq!(m.take_gap(), None);
        // A baseline tells nothing of what came before it.
        let mut fresh = Memory::default();
        fresh.observe(true, 1, &list(500..=600));
        assert_eq!(fresh.take_gap(), None);
    }

    #[test]
    fn baseline_never_fires() {
        let mut m = Memory::default();
        assert!(m.observe(false, 5, &kv("a", 5)).is_empty());
        assert!(m.has_baseline());
    }

    #[test]
    fn fires_on_real_change_named_by_index() {
        let mut m = Memory::default();
        m.observe(false, 5, &kv("a", 5));
        let fired = m.observe(false, 9, &kv("b", 9));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].trigger_id, "9");
    }

    #[test]
    fn same_value_written_again_is_not_a_change() {
        let mut m = Memory::default();
        m.observe(false, 5, &kv("a", 5));
        assert!(m.observe(false, 7, &kv("a", 7)).is_empty());
        // And a wait that timed out (same index, same content) neither.
        assert!(m.observe(false, 7, &kv("a", 7)).is_empty());
        assert_eq!(m.observe(false, 8, &kv("c", 8)).len(), 1);
    }

    #[test]
    fn each_new_event_fires_once() {
        let mut m = Memory::default();
        let e = |id: &str| json!({ "ID": id, "Name": "consul-rehydrate", "LTime": 1 });
        m.observe(true, 10, &json!([e("a")]));
        let fired = m.observe(true, 11, &json!([e("a"), e("b"), e("c")]));
        let ids: Vec<_> = fired.iter().map(|f| f.trigger_id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        assert!(m
            .observe(true, 11, &json!([e("a"), e("b"), e("c")]))
            .is_empty());
        // An ID listed many times is one event.
        let mut list = vec![e("a"), e("b"), e("c")];
        list.extend((0..1000).map(|_| e("d")));
        let fired = m.observe(true, 12, &Value::Array(list));
        let ids: Vec<_> = fired.iter().map(|f| f.trigger_id.as_str()).collect();
        assert_eq!(ids, ["d"]);
        let twice = json!([e("2"), e("5"), e("5")]);
        let receipted: HashSet<String> = ["2".to_string()].into();
        assert_eq!(events_to_replay(&twice, &receipted).len(), 1);
    }

    #[test]
    fn replay_only_after_the_newest_receipt() {
        let e = |id: &str| json!({ "ID": id });
        let buffer = json!([e("1"), e("2"), e("3"), e("4")]);
        let receipted: HashSet<String> = ["2".to_string()].into();
        let ids: Vec<_> = events_to_replay(&buffer, &receipted)
            .into_iter()
            .map(|f| f.trigger_id)
            .collect();
        assert_eq!(ids, ["3", "4"]);
        assert!(events_to_replay(&buffer, &HashSet::new()).is_empty());
        let all: HashSet<String> = ["4".to_string()].into();
        assert!(events_to_replay(&buffer, &all).is_empty());
    }
}
