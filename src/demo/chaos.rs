//! `--chaos`: when to kill the replica holding the `step` lock. The moment is drawn from the
//! seed, so a run that showed something can be replayed with the same `--seed`.
//!
//! A rollout of N servers makes 2×N cloud actions (a launch, a retirement, …). The kill comes
//! once `after_actions` of them are done (0..2N: so any step, the leader's retirement
//! included), `jitter` later, at the next moment a replica holds the lock.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The longest extra wait after the chosen action, so the kill lands inside a step rather
/// than always at its start.
pub const MAX_JITTER: Duration = Duration::from_millis(1500);

/// When the chaos kill comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosPlan {
    pub after_actions: usize,
    pub jitter: Duration,
}

impl ChaosPlan {
    /// The plan `seed` picks for a rollout of `servers` servers.
    pub fn draw(seed: u64, servers: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let actions = 2 * servers.max(1);
        Self {
            after_actions: rng.gen_range(0..actions),
            jitter: Duration::from_millis(rng.gen_range(0..MAX_JITTER.as_millis() as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_picks_the_same_moment() {
        assert_eq!(ChaosPlan::draw(7, 3), ChaosPlan::draw(7, 3));
    }

    #[test]
    fn the_moment_is_inside_the_rollout_and_seeds_spread_over_it() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let p = ChaosPlan::draw(seed, 3);
            assert!(p.after_actions < 6, "{p:?}");
            assert!(p.jitter < MAX_JITTER, "{p:?}");
            seen.insert(p.after_actions);
        }
        assert_eq!(seen.len(), 6, "every step can be hit: {seen:?}");
    }
}
