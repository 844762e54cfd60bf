//! Jittered exponential backoff, shared by every actor that retries: "every error is
//! retryable, apply backoff" — the jitter keeps replicas that failed together from retrying
//! together.

use std::time::Duration;

use rand::Rng;

/// Backoff for attempt `attempt` (0-based): `base * 2^attempt`, capped at `max`, then a random
/// point between half of that and all of it.
pub fn delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
    let full = exp.min(max);
    let half = full / 2;
    half + full.mul_f64(rand::thread_rng().gen_range(0.0..0.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps_with_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 0..30 {
            let d = delay(attempt, base, max);
            let full = base.saturating_mul(1 << attempt.min(20)).min(max);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
    }
}
