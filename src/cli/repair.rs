//! `rehydrator repair`: rebuilds the rollout record from what the cluster is, when the record
//! does not decode (the replicas then take no step) or is gone while the cluster is over its
//! size (a record deleted mid-rollout). The new record (`plan::rebuild`) targets the newest
//! image and adopts the servers already on it as its launches; the replicas' usual rules take
//! it from there, retiring the extra server oldest-outdated-first under the same health gates.
//! A record that decodes, with the cluster at its size, is left alone.
//!
//! Written with CAS against what was read, so a replica writing meanwhile wins and the repair
//! says so (exit 1) rather than overwriting a good record.

use anyhow::Context as _;
use rehydrator_actors::plan::{self, Rollout};
use rehydrator_actors::receipt::now_ms;
use rehydrator_actors::rollout;

use super::{resolve, Target};

#[derive(clap::Args, Debug)]
pub struct RepairArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print the record it would write, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(args: RepairArgs) -> anyhow::Result<()> {
    let resolved = resolve(&args.target)?;
    let env = resolved.rollout_env("repair").await?;
    let key = env.keys.rollout();
    let current = env
        .consul
        .kv_get(&key, 0, std::time::Duration::ZERO)
        .await
        .with_context(|| format!("reading {key}"))?
        .value;
    let mut s = rollout::cluster(&env)
        .await
        .with_context(|| format!("reading the cluster through {}", resolved.consul.address))?;
    let (cas, why) = match &current {
        Some(e) => match serde_json::from_slice::<Rollout>(&e.value) {
            Ok(r) => {
                s.rollout = Some(r);
                println!("The rollout record at {key} decodes: nothing to repair.");
                return Ok(());
            }
            Err(err) => (
                e.modify_index,
                format!("the record does not decode ({err})"),
            ),
        },
        None => match plan::unrecorded_extra(&s) {
            Some(why) => (0, why),
            None => {
                println!("No rollout record, and the cluster is at its size: nothing to repair.");
                return Ok(());
            }
        },
    };
    let rebuilt = plan::rebuild(&s, format!("r{}", now_ms())).map_err(anyhow::Error::msg)?;
    let body = rebuilt.bounded_json().map_err(anyhow::Error::msg)?;
    let summary = format!(
        "rollout {} to {}: {}, {} server(s) on it adopted as launches; {} server(s) of {} desired",
        rebuilt.id,
        rebuilt.target_image,
        if rebuilt.is_active() {
            "active"
        } else {
            "completed"
        },
        rebuilt.launches.len(),
        s.servers().len(),
        s.desired
    );
    if args.dry_run {
        println!("Would rebuild the record ({why}): {summary}");
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let written = env
        .consul
        .kv_put(&key, body, Some(cas))
        .await
        .with_context(|| format!("writing {key}"))?;
    if !written {
        anyhow::bail!(
            "{key} changed while it was being repaired; look again with `rehydrator status`"
        );
    }
    println!("Rebuilt the rollout record ({why}): {summary}");
    Ok(())
}
