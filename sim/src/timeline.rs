//! Each server's life as a list of dated events (launched, joined Raft, became a voter, led,
//! left, terminated…), for `GET /sim/timeline` and the demo's timeline picture.
//!
//! Recorded inside the simulator rather than sampled from outside: `Cluster::observe` runs after
//! every membership or Raft change and hands the servers to `Timeline::observe`, which compares
//! them with what it saw last and logs each difference. A poller would miss a non-voter promoted
//! and a leader moved between two of its reads; this sees every change in order.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::cluster::server::{Machine, Server};

/// The most events kept; past it the oldest go, so a long-lived simulator's log stays bounded.
pub const MAX_EVENTS: usize = 10_000;

/// What happened to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Its machine was launched (booting); the bootstrap servers at start too.
    Launched,
    /// Its Consul process runs (booted, or restarted).
    Started,
    /// The leader added it to the Raft configuration (as a non-voter).
    Joined,
    /// Autopilot promoted it to voter.
    Voter,
    /// It became the leader.
    Leader,
    /// It stopped leading (transfer, step-down, or it went away).
    Follower,
    /// It left the Raft configuration (graceful leave, or pruned after failing).
    Left,
    /// Its process died without leaving.
    Killed,
    /// Its machine is gone.
    Terminated,
}

/// One dated event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Unix milliseconds (wall clock, whatever the time scale).
    pub at: u64,
    pub server: String,
    /// The server's image, so a reader can tell old lanes from new ones.
    pub image: String,
    pub event: EventKind,
}

/// What `observe` last saw of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    machine: Machine,
    in_raft: bool,
    voter: bool,
    leader: bool,
}

/// The event log and the state it was last compared with.
#[derive(Debug, Default)]
pub struct Timeline {
    events: Vec<Event>,
    seen: HashMap<String, Seen>,
}

impl Timeline {
    /// Every event kept, oldest first.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Logs what changed in `servers` (leader `leader`) since the last call.
    pub fn observe(&mut self, servers: &[Server], leader: Option<&str>) {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.observe_at(at, servers, leader);
    }

    /// `observe` at a given time (tests).
    pub fn observe_at(&mut self, at: u64, servers: &[Server], leader: Option<&str>) {
        // A server losing leadership is logged before another gaining it, whatever their
        // order in the list, so the log reads as it happened.
        let mut gained = Vec::new();
        for s in servers {
            let now = Seen {
                machine: s.machine,
                in_raft: s.in_raft,
                voter: s.in_raft && s.voter,
                leader: leader == Some(s.name.as_str()),
            };
            let before = self.seen.insert(s.name.clone(), now);
            let mut push = |kind| {
                self.events.push(Event {
                    at,
                    server: s.name.clone(),
                    image: s.image.clone(),
                    event: kind,
                })
            };
            let before = match before {
                Some(b) => b,
                None => {
                    push(EventKind::Launched);
                    Seen {
                        machine: Machine::Booting,
                        in_raft: false,
                        voter: false,
                        leader: false,
                    }
                }
            };
            if before.leader && !now.leader {
                push(EventKind::Follower);
            }
            if now.machine != before.machine {
                match now.machine {
                    Machine::Running => push(EventKind::Started),
                    Machine::Killed => push(EventKind::Killed),
                    // A stopped server's leave shows as `Left` below.
                    Machine::Booting | Machine::Stopped | Machine::Terminated => {}
                }
            }
            if now.in_raft && !before.in_raft {
                push(EventKind::Joined);
            }
            if now.voter && !before.voter {
                push(EventKind::Voter);
            }
            if before.in_raft && !now.in_raft {
                push(EventKind::Left);
            }
            if now.machine == Machine::Terminated && before.machine != Machine::Terminated {
                push(EventKind::Terminated);
            }
            if now.leader && !before.leader {
                gained.push(s);
            }
        }
        for s in gained {
            self.events.push(Event {
                at,
                server: s.name.clone(),
                image: s.image.clone(),
                event: EventKind::Leader,
            });
        }
        if self.events.len() > MAX_EVENTS {
            let excess = self.events.len() - MAX_EVENTS;
            self.events.drain(..excess);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;

    fn kinds(t: &Timeline, server: &str) -> Vec<EventKind> {
        t.events()
            .iter()
            .filter(|e| e.server == server)
            .map(|e| e.event)
            .collect()
    }

    fn running_voter(c: &mut Cluster, name: &str) {
        let i = c.launch(name.into(), "image-a".into(), None);
        let s = &mut c.servers[i];
        s.machine = Machine::Running;
        s.in_raft = true;
        s.voter = true;
    }

    #[test]
    fn a_server_s_life_is_logged_in_order_each_change_once() {
        let mut c = Cluster::default();
        let mut t = Timeline::default();
        running_voter(&mut c, "s1");
        t.observe_at(1, &c.servers, Some("s1"));
        assert_eq!(
            kinds(&t, "s1"),
            [
                EventKind::Launched,
                EventKind::Started,
                EventKind::Joined,
                EventKind::Voter,
                EventKind::Leader
            ]
        );
        // Nothing changed: nothing logged.
        t.observe_at(2, &c.servers, Some("s1"));
        assert_eq!(t.events().len(), 5);

        let i = c.launch("s2".into(), "image-b".into(), None);
        t.observe_at(3, &c.servers, Some("s1"));
        c.servers[i].machine = Machine::Running;
        c.servers[i].in_raft = true;
        t.observe_at(4, &c.servers, Some("s1"));
        c.servers[i].voter = true;
        t.observe_at(5, &c.servers, Some("s1"));
        // Leadership moves to s2; s1 leaves and its machine goes.
        t.observe_at(6, &c.servers, Some("s2"));
        c.servers[0].machine = Machine::Terminated;
        c.servers[0].in_raft = false;
        c.servers[0].voter = false;
        t.observe_at(7, &c.servers, Some("s2"));

        assert_eq!(
            kinds(&t, "s2"),
            [
                EventKind::Launched,
                EventKind::Started,
                EventKind::Joined,
                EventKind::Voter,
                EventKind::Leader
            ]
        );
        let s2: Vec<u64> = t
            .events()
            .iter()
            .filter(|e| e.server == "s2")
            .map(|e| e.at)
            .collect();
        assert_eq!(s2, [3, 4, 4, 5, 6]);
        assert_eq!(
            kinds(&t, "s1")[5..],
            [EventKind::Follower, EventKind::Left, EventKind::Terminated]
        );
        assert!(t
            .events()
            .iter()
            .all(|e| e.server != "s2" || e.image == "image-b"));
    }

    #[test]
    fn a_leader_change_logs_the_loss_before_the_gain() {
        let mut c = Cluster::default();
        let mut t = Timeline::default();
        running_voter(&mut c, "s1");
        running_voter(&mut c, "s2");
        t.observe_at(1, &c.servers, Some("s2"));
        t.observe_at(2, &c.servers, Some("s1"));
        let last: Vec<(&str, EventKind)> = t.events()[t.events().len() - 2..]
            .iter()
            .map(|e| (e.server.as_str(), e.event))
            .collect();
        assert_eq!(
            last,
            [("s2", EventKind::Follower), ("s1", EventKind::Leader)]
        );
    }

    #[test]
    fn a_killed_server_is_logged_killed_then_left_when_pruned() {
        let mut c = Cluster::default();
        let mut t = Timeline::default();
        running_voter(&mut c, "s1");
        t.observe_at(1, &c.servers, None);
        c.servers[0].machine = Machine::Killed;
        t.observe_at(2, &c.servers, None);
        c.servers[0].in_raft = false;
        t.observe_at(3, &c.servers, None);
        assert_eq!(kinds(&t, "s1")[4..], [EventKind::Killed, EventKind::Left]);
    }

    #[test]
    fn the_log_keeps_the_newest_events_past_its_cap() {
        let mut c = Cluster::default();
        let mut t = Timeline::default();
        running_voter(&mut c, "s1");
        for i in 0..(MAX_EVENTS as u64) {
            let leader = if i % 2 == 0 { Some("s1") } else { None };
            t.observe_at(i, &c.servers, leader);
        }
        assert_eq!(t.events().len(), MAX_EVENTS);
        assert_eq!(t.events().last().unwrap().at, MAX_EVENTS as u64 - 1);
    }
}
