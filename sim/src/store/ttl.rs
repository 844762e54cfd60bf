//! The agent's TTL checks: its own local state, not the servers'. Each check keeps its TTL,
//! how long it may stay critical before the agent removes its service
//! (`DeregisterCriticalServiceAfter`), and the generation of its running timer: a status update
//! starts a new generation, so a timer armed before it finds itself stale and does nothing.

use std::collections::BTreeMap;
use std::time::Duration;

/// One TTL check the agent runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtlCheck {
    pub service_id: String,
    pub ttl: Duration,
    pub reap_after: Option<Duration>,
    pub generation: u64,
}

/// The agent's TTL checks by check ID.
#[derive(Debug, Default)]
pub struct TtlChecks {
    by_id: BTreeMap<String, TtlCheck>,
    generations: u64,
}

impl TtlChecks {
    /// Adds (or replaces) a check; answers its timer's generation.
    pub fn insert(
        &mut self,
        id: &str,
        service_id: &str,
        ttl: Duration,
        reap_after: Option<Duration>,
    ) -> u64 {
        self.generations += 1;
        self.by_id.insert(
            id.to_owned(),
            TtlCheck {
                service_id: service_id.to_owned(),
                ttl,
                reap_after,
                generation: self.generations,
            },
        );
        self.generations
    }

    /// A status update of check `id`: its new generation, or None if the agent has no such
    /// TTL check.
    pub fn touch(&mut self, id: &str) -> Option<(u64, TtlCheck)> {
        self.generations += 1;
        let generation = self.generations;
        let check = self.by_id.get_mut(id)?;
        check.generation = generation;
        Some((generation, check.clone()))
    }

    /// Whether check `id` is still at `generation` (no update since a timer was armed).
    pub fn current(&self, id: &str, generation: u64) -> Option<&TtlCheck> {
        self.by_id.get(id).filter(|c| c.generation == generation)
    }

    /// Forgets the checks of service `service_id`.
    pub fn remove_service(&mut self, service_id: &str) {
        self.by_id.retain(|_, c| c.service_id != service_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_makes_earlier_timers_stale_and_removal_forgets_the_service() {
        let mut t = TtlChecks::default();
        let g1 = t.insert("c", "s", Duration::from_secs(3), None);
        assert!(t.current("c", g1).is_some());
        let (g2, check) = t.touch("c").expect("the check");
        assert_eq!(check.ttl, Duration::from_secs(3));
        assert!(t.current("c", g1).is_none());
        assert!(t.current("c", g2).is_some());
        assert!(t.touch("other").is_none());
        t.remove_service("s");
        assert!(t.touch("c").is_none());
    }
}
