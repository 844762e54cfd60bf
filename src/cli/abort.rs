//! `rehydrator abort [--to-previous]`: the operators' way out of a rollout. It changes the
//! rollout record and leaves the work to the replicas, which do it under the step lock with
//! the rollout's own safety rules:
//!
//! - `abort`: the record is marked aborted (who, when, why). No server is launched any more;
//!   a new server that does not vote yet is retired (it counts for no quorum, so no health
//!   gate holds it); a new server that already votes stays, and if the cluster is then over
//!   its size the oldest outdated server goes as usual; then the rollout stops.
//! - `abort --to-previous`: a new rollout back to the image the outdated servers run replaces
//!   the record. It retires a server that does not vote first, then replaces every server on
//!   the aborted image one at a time like any rollout. A newer image alone does not start the
//!   aborted rollout again: an operator's `consul-rehydrate` does.
//!
//! The record is written with CAS against what was read (a step writing meanwhile makes it
//! read and decide again); then the abort key, which every replica watches, wakes them.

use anyhow::Context as _;
use rehydrator::consul::{KvPutOptions, QueryOptions};
use rehydrator::status::printable;
use rehydrator_actors::plan::{Abort, Rollout};
use rehydrator_actors::receipt::now_ms;
use rehydrator_actors::rollout;

use super::{operator, resolve_named, BadInput, Target};

/// Tries of the read-decide-write before giving up to a record that keeps changing.
const CAS_TRIES: usize = 5;

#[derive(clap::Args, Debug)]
pub struct AbortArgs {
    #[command(flatten)]
    pub target: Target,
    /// Why, for the record, `status` and the stop notification.
    #[arg(long)]
    pub reason: Option<String>,
    /// Roll back: replace every server on the aborted rollout's image with one on the image
    /// the other servers run (needs --config: the cloud tells which image that is).
    #[arg(long)]
    pub to_previous: bool,
}

/// What the abort writes, decided from the record as read.
enum Change {
    Abort(Rollout),
    RollBack {
        from_id: String,
        from_image: String,
        to: Rollout,
    },
}

pub async fn run(args: AbortArgs) -> anyhow::Result<()> {
    let resolved = resolve_named(&args.target).await?;
    let keys = resolved.keys();
    let key = keys.rollout();
    let client = resolved.client()?;
    let env = if args.to_previous {
        Some(resolved.rollout_env("abort --to-previous").await?)
    } else {
        None
    };
    let abort = Abort {
        by: operator(),
        at: now_ms(),
        reason: args.reason.clone(),
    };
    for _ in 0..CAS_TRIES {
        let Some(entry) = client
            .kv_get(&key, &QueryOptions::default())
            .await
            .with_context(|| format!("reading {key}"))?
            .value
        else {
            anyhow::bail!("no rollout is recorded at {key}: nothing to abort");
        };
        let current: Rollout = serde_json::from_slice(&entry.value).with_context(|| {
            format!("the rollout record at {key} does not decode; `rehydrator repair` first")
        })?;
        if !current.is_active() {
            anyhow::bail!(
                "rollout {} to {} is not active (it {}): nothing to abort",
                current.id,
                printable(&current.target_image),
                match &current.state {
                    rehydrator_actors::plan::RolloutState::Completed { .. } => "completed",
                    _ => "stopped",
                }
            );
        }
        let change = match &env {
            None => {
                if let Some(was) = &current.aborted {
                    println!(
                        "Rollout {} is already {}; the replicas are winding it down.",
                        current.id,
                        printable(&was.describe())
                    );
                    return Ok(());
                }
                let mut r = current.clone();
                r.aborted = Some(abort.clone());
                r.wait(Some(abort.describe()), abort.at);
                Change::Abort(r)
            }
            Some(env) => {
                let snapshot = rollout::cluster(env).await.context("reading the cluster")?;
                let previous = previous_image(&snapshot, &current.target_image)?;
                let mut to = Rollout::start(
                    format!("r{}", abort.at),
                    &previous,
                    abort.at,
                    current.baseline_tolerance,
                );
                to.rolled_back_from = Some(current.target_image.clone());
                to.wait(
                    Some(format!(
                        "rolling back from {}: {}",
                        current.target_image,
                        abort.describe()
                    )),
                    abort.at,
                );
                Change::RollBack {
                    from_id: current.id,
                    from_image: current.target_image,
                    to,
                }
            }
        };
        let record = match &change {
            Change::Abort(r) | Change::RollBack { to: r, .. } => r,
        };
        let body = record.bounded_json().map_err(anyhow::Error::msg)?;
        let opts = KvPutOptions {
            cas: Some(entry.modify_index),
            ..KvPutOptions::default()
        };
        if !client
            .kv_put(&key, &body, &opts)
            .await
            .with_context(|| format!("writing {key}"))?
        {
            // A step wrote the record meanwhile: read what it did and decide again.
            continue;
        }
        let wake = serde_json::to_vec(&abort).context("encoding the abort record")?;
        client
            .kv_put(&keys.abort(), &wake, &KvPutOptions::default())
            .await
            .with_context(|| format!("writing {}", keys.abort()))?;
        match change {
            Change::Abort(r) => println!(
                "Aborted rollout {} to {} on cluster {}: no more launches; a new server that \
                 does not vote yet is retired, then the rollout stops. Follow it with \
                 `rehydrator status`.",
                r.id,
                printable(&r.target_image),
                resolved.cluster
            ),
            Change::RollBack {
                from_id,
                from_image,
                to,
            } => println!(
                "Rolling cluster {} back from {} to {} (rollout {} replaces {}): every server \
                 on {} is replaced one at a time, under the rollout's usual safety rules. \
                 Follow it with `rehydrator status`.",
                resolved.cluster,
                printable(&from_image),
                printable(&to.target_image),
                to.id,
                from_id,
                printable(&from_image),
            ),
        }
        return Ok(());
    }
    anyhow::bail!("{key} changed on each of {CAS_TRIES} tries (steps are being written); try again")
}

/// The image every server not on `aborted` runs: what a rollback returns to.
fn previous_image(
    s: &rehydrator_actors::plan::Snapshot,
    aborted: &str,
) -> Result<String, BadInput> {
    let mut others: Vec<&str> = s
        .machines
        .iter()
        .map(|m| m.image.as_str())
        .filter(|i| *i != aborted)
        .collect();
    others.sort_unstable();
    others.dedup();
    match others.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => Err(BadInput(format!(
            "abort --to-previous: every server already runs {aborted}: there is no previous \
             image left to roll back to (roll forward to another image instead)"
        ))),
        many => Err(BadInput(format!(
            "abort --to-previous: the servers not on {aborted} run {} images ({}): which \
             one is previous is not clear; abort, then roll to the one you want",
            many.len(),
            many.join(", ")
        ))),
    }
}
