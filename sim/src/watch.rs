//! Who is waiting on what. A blocking query parks here with the topics it read; a write wakes
//! only the parked queries whose topics it touched (Consul's memdb watch sets, coarsened to
//! tables except for KV, which is per key and per prefix).
//!
//! Parked queries hold a oneshot sender and nothing else: 10,000 of them cost a few hundred KiB
//! and no CPU until something they read changes.

use tokio::sync::oneshot;

/// A slice of state a read depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// One KV key.
    Key(String),
    /// Every KV key under a prefix (recurse / keys reads; the empty prefix is the whole store).
    Prefix(String),
    /// The sessions table.
    Sessions,
    /// The agent's user-event buffer.
    Events,
    /// Catalog nodes and services.
    Catalog,
    /// Health checks.
    Checks,
    /// Raft configuration, leadership and autopilot state.
    Raft,
}

/// What one write changed.
#[derive(Debug, Default, Clone)]
pub struct Change {
    pub keys: Vec<String>,
    pub tables: Vec<Topic>,
}

impl Change {
    pub fn key(key: impl Into<String>) -> Self {
        Self {
            keys: vec![key.into()],
            tables: Vec::new(),
        }
    }

    pub fn table(t: Topic) -> Self {
        Self {
            keys: Vec::new(),
            tables: vec![t],
        }
    }

    pub fn and_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }

    pub fn and(mut self, t: Topic) -> Self {
        if !self.tables.contains(&t) {
            self.tables.push(t);
        }
        self
    }

    fn touches(&self, topic: &Topic) -> bool {
        match topic {
            Topic::Key(k) => self.keys.iter().any(|c| c == k),
            Topic::Prefix(p) => self.keys.iter().any(|c| c.starts_with(p.as_str())),
            t => self.tables.contains(t),
        }
    }
}

struct Parked {
    topics: Vec<Topic>,
    tx: oneshot::Sender<()>,
}

/// The parked blocking queries.
#[derive(Default)]
pub struct Waiters {
    parked: Vec<Parked>,
    prune_at: usize,
}

impl Waiters {
    /// Parks a query on `topics`; the receiver fires once when any of them changes.
    pub fn park(&mut self, topics: Vec<Topic>) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        // Queries whose client went away leave closed senders; sweep them when the list has
        // doubled since the last sweep so it never grows without bound between writes.
        if self.parked.len() >= self.prune_at.max(64) {
            self.parked.retain(|p| !p.tx.is_closed());
            self.prune_at = self.parked.len() * 2;
        }
        self.parked.push(Parked { topics, tx });
        rx
    }

    /// Wakes every parked query that read something `change` touched.
    pub fn wake(&mut self, change: &Change) {
        let mut i = 0;
        while i < self.parked.len() {
            let p = &self.parked[i];
            if p.tx.is_closed() || p.topics.iter().any(|t| change.touches(t)) {
                let p = self.parked.swap_remove(i);
                let _ = p.tx.send(());
            } else {
                i += 1;
            }
        }
    }

    /// How many queries are parked (live or not yet swept).
    pub fn len(&self) -> usize {
        self.parked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_wakes_only_the_readers_of_what_it_touched() {
        let mut w = Waiters::default();
        let mut a = w.park(vec![Topic::Key("a".into())]);
        let mut b = w.park(vec![Topic::Key("b".into())]);
        let mut p = w.park(vec![Topic::Prefix("a/".into())]);
        let mut s = w.park(vec![Topic::Sessions]);
        w.wake(&Change::key("a/x"));
        assert!(a.try_recv().is_err());
        assert!(b.try_recv().is_err());
        assert!(p.try_recv().is_ok());
        assert!(s.try_recv().is_err());
        w.wake(&Change::key("a").and(Topic::Sessions));
        assert!(a.try_recv().is_ok());
        assert!(s.try_recv().is_ok());
        assert!(b.try_recv().is_err());
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn abandoned_queries_are_swept() {
        let mut w = Waiters::default();
        for _ in 0..1000 {
            drop(w.park(vec![Topic::Events]));
        }
        let _live = w.park(vec![Topic::Events]);
        assert!(w.len() < 200, "closed waiters were not swept: {}", w.len());
    }
}
