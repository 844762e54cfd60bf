//! Watermarks: how far pruning has gone, so that deleting a receipt never reopens its trigger.
//!
//! Receipts are kept per action, the newest `receipts_kept` by ModifyIndex. A replica that falls
//! behind (a SIGSTOP, a GC pause, a slow disk) still has the older triggers queued; finding no
//! receipt, it would run them again. So before the Dispatcher deletes receipts it raises, per
//! watch, a watermark to the highest trigger position among them, at
//! `rehydrator/<cluster>/watermarks/<action>` (`{"<watch>": <position>, …}`, CAS, only ever up),
//! and a job whose trigger is at or below its watch's watermark is expired: skipped, with a
//! warning and `rehydrator_jobs_total{outcome="expired"}`.
//!
//! Why no trigger runs twice: a trigger runs only while its action's lock is held and only
//! after a look, under the lock, finds neither its receipt nor a watermark covering it. Its
//! receipt is written before the lock is released; it disappears only by a prune, and a prune
//! writes the raised watermark before its first delete. So from the moment the receipt exists,
//! every later look finds the receipt or the watermark, whatever the looking replica's lag.
//!
//! The price: a trigger at or below the watermark that never ran is skipped too. Jobs of an
//! action run in their queue's order on every replica, so that takes a trigger waiting while
//! `receipts_kept` newer triggers of its watch completed: it is reported as expired, not run.
//! Positions compare only within a watch (an event's LTime, a change's X-Consul-Index, a
//! schedule's tick, an image's creation time); a trigger without one is never expired.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ports::{ConsulPort, PortError};
use crate::receipt::Receipt;

/// Per watch, the highest trigger position pruning removed.
pub type Marks = BTreeMap<String, u64>;

/// The watermark that covers a trigger of `watch` at `position`, if one does.
pub fn covering(marks: &Marks, watch: &str, position: Option<u64>) -> Option<u64> {
    let mark = *marks.get(watch)?;
    (position? <= mark).then_some(mark)
}

/// `marks` raised to cover every receipt in `pruned`; None when nothing moves up.
pub fn raised(marks: &Marks, pruned: &[Receipt]) -> Option<Marks> {
    let mut out = marks.clone();
    let mut moved = false;
    for r in pruned {
        let Some(p) = r.position else { continue };
        let mark = out.entry(r.watch.clone()).or_insert(0);
        if p > *mark {
            *mark = p;
            moved = true;
        }
    }
    moved.then_some(out)
}

/// A watermark value that does not decode: written by something else than a replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the watermark at {key} does not decode ({reason}); delete it to let pruning write it anew"
)]
pub struct BadMarks {
    pub key: String,
    pub reason: String,
}

/// The watermarks as stored: `{"<watch>": position}`.
pub fn decode(value: &[u8]) -> Result<Marks, serde_json::Error> {
    serde_json::from_slice(value)
}

/// The watermarks at `key` and the ModifyIndex to CAS against (0: absent).
pub async fn read(
    consul: &dyn ConsulPort,
    key: &str,
) -> Result<Result<(Marks, u64), BadMarks>, PortError> {
    let got = consul.kv_get(key, 0, Duration::ZERO).await?;
    Ok(match got.value {
        None => Ok((Marks::new(), 0)),
        Some(e) => decode(&e.value)
            .map(|m| (m, e.modify_index))
            .map_err(|err| BadMarks {
                key: key.to_owned(),
                reason: err.to_string(),
            }),
    })
}

/// Raises the watermarks at `key` to cover `pruned`, retrying a lost CAS race a few times.
/// Ok(true) once they cover it (raised now, or already); Ok(false) if they could not be
/// written: the caller must not delete the receipts then.
pub async fn raise(
    consul: &dyn ConsulPort,
    key: &str,
    pruned: &[Receipt],
) -> Result<bool, PortError> {
    for _ in 0..3 {
        let Ok((marks, cas)) = read(consul, key).await? else {
            return Ok(false);
        };
        let Some(up) = raised(&marks, pruned) else {
            return Ok(true);
        };
        let body = serde_json::to_vec(&up).unwrap_or_default();
        if consul.kv_put(key, body, Some(cas)).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::receipt::Outcome;

    fn receipt(watch: &str, position: Option<u64>) -> Receipt {
        Receipt {
            action: "a".into(),
            trigger_id: format!("{watch}-{position:?}"),
            watch: watch.into(),
            outcome: Outcome::NoOp(String::new()),
            by: "r".into(),
            started_at: 0,
            finished_at: 0,
            lock_index: 1,
            attempts: 1,
            position,
        }
    }

    #[test]
    fn marks_rise_per_watch_and_never_fall() {
        let marks = Marks::from([("events".to_owned(), 10)]);
        let up = raised(
            &marks,
            &[
                receipt("events", Some(7)),
                receipt("events", Some(12)),
                receipt("catalog", Some(900)),
                receipt("legacy", None),
            ],
        )
        .unwrap();
        assert_eq!(
            up,
            Marks::from([("events".to_owned(), 12), ("catalog".to_owned(), 900)])
        );
        assert_eq!(raised(&up, &[receipt("events", Some(3))]), None);
        assert_eq!(raised(&up, &[receipt("x", None)]), None);
    }

    /// A model of the protocol's interleavings: replicas that each queue every trigger in the
    /// same order, one lock, receipts written under it, and a prune (watermark raised, then
    /// receipts deleted) that may finish after the holder's session was invalidated. Replicas
    /// freeze for random stretches. Built on the real `to_prune`, `raised` and `covering`.
    mod model {
        use super::*;
        use crate::receipt::to_prune;
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};

        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Stage {
            Idle,
            Locked,
            /// Receipt written; the prune's receipts chosen, watermark not yet raised.
            Raise,
            /// Watermark raised; deleting.
            Delete,
        }

        struct Replica {
            queue: std::collections::VecDeque<u64>,
            stage: Stage,
            doomed: Vec<u64>,
            frozen: u32,
        }

        pub struct Outcome {
            pub runs: Vec<u32>,
            pub expired: u32,
        }

        /// Runs the model; `watermarks` off models the old pruning (deletes only).
        pub fn run(
            seed: u64,
            replicas: usize,
            triggers: u64,
            kept: usize,
            watermarks: bool,
        ) -> Outcome {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut rs: Vec<Replica> = (0..replicas)
                .map(|_| Replica {
                    queue: (1..=triggers).collect(),
                    stage: Stage::Idle,
                    doomed: Vec::new(),
                    frozen: 0,
                })
                .collect();
            let mut receipts: BTreeMap<u64, (u64, Receipt)> = BTreeMap::new();
            let mut marks = Marks::new();
            let mut modify = 0u64;
            let mut lock: Option<usize> = None;
            let mut out = Outcome {
                runs: vec![0; triggers as usize + 1],
                expired: 0,
            };
            let finished = |receipts: &BTreeMap<u64, (u64, Receipt)>, marks: &Marks, t: u64| {
                if receipts.contains_key(&t) {
                    Some(false)
                } else {
                    covering(marks, "w", Some(t)).map(|_| true)
                }
            };
            for _ in 0..200_000 {
                if rs
                    .iter()
                    .all(|r| r.queue.is_empty() && r.stage == Stage::Idle)
                {
                    break;
                }
                let i = rng.gen_range(0..replicas);
                let r = &mut rs[i];
                if r.frozen > 0 {
                    r.frozen -= 1;
                    continue;
                }
                if rng.gen_ratio(1, 50) {
                    r.frozen = rng.gen_range(1..400);
                }
                match r.stage {
                    Stage::Idle => {
                        let Some(&t) = r.queue.front() else { continue };
                        // The look before the lock, then the lock.
                        if let Some(expired) = finished(&receipts, &marks, t) {
                            out.expired += u32::from(expired);
                            r.queue.pop_front();
                        } else if lock.is_none() {
                            lock = Some(i);
                            r.stage = Stage::Locked;
                        }
                    }
                    Stage::Locked => {
                        let t = r.queue.pop_front().unwrap_or(0);
                        match finished(&receipts, &marks, t) {
                            Some(expired) => {
                                out.expired += u32::from(expired);
                                lock = None;
                                r.stage = Stage::Idle;
                            }
                            None => {
                                out.runs[t as usize] += 1;
                                modify += 1;
                                receipts.entry(t).or_insert((
                                    modify,
                                    Receipt {
                                        watch: "w".into(),
                                        position: Some(t),
                                        ..receipt("w", Some(t))
                                    },
                                ));
                                let entries = receipts
                                    .iter()
                                    .map(|(t, (m, _))| (t.to_string(), *m))
                                    .collect();
                                r.doomed = to_prune(entries, kept)
                                    .iter()
                                    .filter_map(|k| k.parse().ok())
                                    .collect();
                                r.stage = Stage::Raise;
                            }
                        }
                    }
                    Stage::Raise => {
                        if watermarks {
                            let pruned: Vec<Receipt> = r
                                .doomed
                                .iter()
                                .filter_map(|t| receipts.get(t).map(|(_, rc)| rc.clone()))
                                .collect();
                            if let Some(up) = raised(&marks, &pruned) {
                                marks = up;
                            }
                        }
                        r.stage = Stage::Delete;
                    }
                    Stage::Delete => {
                        for t in std::mem::take(&mut r.doomed) {
                            receipts.remove(&t);
                        }
                        if lock == Some(i) {
                            lock = None;
                        }
                        r.stage = Stage::Idle;
                    }
                }
                // The holder's session is invalidated while it prunes (a freeze past its TTL):
                // the lock frees and another replica may take the next job meanwhile.
                if let Some(h) = lock {
                    if matches!(rs[h].stage, Stage::Raise | Stage::Delete) && rng.gen_ratio(1, 20) {
                        lock = None;
                    }
                }
            }
            assert!(
                rs.iter().all(|r| r.queue.is_empty()),
                "seed {seed}: the model did not finish"
            );
            out
        }
    }

    #[test]
    fn no_interleaving_of_runs_prunes_and_lagging_replicas_runs_a_trigger_twice() {
        let mut expired = 0;
        for seed in 0..300 {
            let out = model::run(seed, 3, 60, 5, true);
            let twice: Vec<usize> = (1..out.runs.len()).filter(|&t| out.runs[t] > 1).collect();
            assert!(
                twice.is_empty(),
                "seed {seed}: triggers run twice: {twice:?}"
            );
            expired += out.expired;
        }
        // The model reaches the cases that matter: replicas lag far enough that pruning passed
        // their queued triggers.
        assert!(
            expired > 0,
            "no trigger was ever expired: the model is too tame"
        );
    }

    #[test]
    fn without_the_watermark_the_same_interleavings_run_triggers_twice() {
        let doubled = (0..300)
            .filter(|&seed| {
                let out = model::run(seed, 3, 60, 5, false);
                out.runs.iter().any(|&n| n > 1)
            })
            .count();
        assert!(
            doubled > 0,
            "the model never reproduced the double run it guards against"
        );
    }

    #[test]
    fn a_mark_covers_its_own_watch_at_and_below_it() {
        let marks = Marks::from([("events".to_owned(), 10)]);
        assert_eq!(covering(&marks, "events", Some(10)), Some(10));
        assert_eq!(covering(&marks, "events", Some(3)), Some(10));
        assert_eq!(covering(&marks, "events", Some(11)), None);
        assert_eq!(covering(&marks, "catalog", Some(3)), None);
        assert_eq!(covering(&marks, "events", None), None);
    }
}
