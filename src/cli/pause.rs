//! `rehydrator pause` / `resume`: the operators' brake. Pause writes the cluster's pause key
//! (`rehydrator/<cluster>/pause`) with who paused, when and why; the rollout reads the key
//! before every step and takes none while it is there. Resume deletes it. Neither interrupts
//! a step already under way: it finishes, and the next one waits.

use anyhow::Context as _;
use rehydrator::consul::{KvDeleteOptions, KvPutOptions, QueryOptions};
use rehydrator::status::{parse_pause, printable, PauseInfo};
use rehydrator_actors::receipt::now_ms;

use super::{operator, resolve_named, Target};

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
    let resolved = resolve_named(&args.target).await?;
    let key = resolved.keys().pause();
    let info = PauseInfo {
        by: Some(operator()),
        reason: args.reason,
        at: Some(now_ms()),
    };
    let body = serde_json::to_vec(&info).context("encoding the pause record")?;
    let client = resolved.client()?;
    let earlier = client
        .kv_get(&key, &QueryOptions::default())
        .await
        .with_context(|| format!("reading the pause key {key}"))?
        .value
        .map(|was| parse_pause(&was.value));
    client
        .kv_put(&key, &body, &KvPutOptions::default())
        .await
        .with_context(|| format!("writing the pause key {key}"))?;
    println!(
        "Paused cluster {}: the rollout takes no new step until `rehydrator resume`.",
        resolved.cluster
    );
    if let Some(was) = earlier {
        // A second pause replaces the first one's record: say whose it was.
        println!(
            "It was already paused{}{}{}; this pause replaces that record.",
            was.by
                .map(|b| format!(" by {}", printable(&b)))
                .unwrap_or_default(),
            was.at
                .and_then(|ms| {
                    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms))
                })
                .map(|t| format!(" since {}", humantime::format_rfc3339_seconds(t)))
                .unwrap_or_default(),
            was.reason
                .map(|r| format!(" ({})", printable(&r)))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

pub async fn resume(args: ResumeArgs) -> anyhow::Result<()> {
    let resolved = resolve_named(&args.target).await?;
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
        .map(|b| format!(" (paused by {})", printable(&b)))
        .unwrap_or_default();
    println!(
        "Resumed cluster {}{by}: each replica's watch of the pause key moves the rollout on now.",
        resolved.cluster
    );
    Ok(())
}
