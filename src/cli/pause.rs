//! `rehydrator pause` / `resume`: the operators' brake. Pause writes the cluster's pause key
//! (`rehydrator/<cluster>/pause`) with who paused, when and why; the rollout reads the key
//! before every step and takes none while it is there. Resume deletes it. Neither interrupts
//! a step already under way: it finishes, and the next one waits.

use anyhow::Context as _;
use rehydrator::consul::{KvDeleteOptions, KvPutOptions, QueryOptions};
use rehydrator::status::{parse_pause, PauseInfo};
use rehydrator_actors::receipt::now_ms;

use super::{operator, resolve, Target};

#[derive(clap::Args, Debug)]
pub struct PauseArgs {
    #[command(flatten)]
    pub target: Target,
    /// Why, for whoever reads `rehydrator status` next.
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub target: Target,
}

pub async fn pause(args: PauseArgs) -> anyhow::Result<()> {
    let resolved = resolve(&args.target)?;
    let key = resolved.keys().pause();
    let info = PauseInfo {
        by: Some(operator()),
        reason: args.reason,
        at: Some(now_ms()),
    };
    let body = serde_json::to_vec(&info).context("encoding the pause record")?;
    let client = resolved.client()?;
    client
        .kv_put(&key, &body, &KvPutOptions::default())
        .await
        .with_context(|| format!("writing the pause key {key}"))?;
    println!(
        "Paused cluster {}: the rollout takes no new step until `rehydrator resume`.",
        resolved.cluster
    );
    Ok(())
}

pub async fn resume(args: ResumeArgs) -> anyhow::Result<()> {
    let resolved = resolve(&args.target)?;
    let key = resolved.keys().pause();
    let client = resolved.client()?;
    let was = client
        .kv_get(&key, &QueryOptions::default())
        .await
        .with_context(|| format!("reading the pause key {key}"))?
        .value;
    let Some(was) = was else {
        println!("Cluster {} was not paused.", resolved.cluster);
        return Ok(());
    };
    client
        .kv_delete(&key, &KvDeleteOptions::default())
        .await
        .with_context(|| format!("deleting the pause key {key}"))?;
    let info = parse_pause(&was.value);
    let by = info
        .by
        .map(|b| format!(" (paused by {b})"))
        .unwrap_or_default();
    println!(
        "Resumed cluster {}{by}: the rollout takes its next step on its next trigger.",
        resolved.cluster
    );
    Ok(())
}
