//! `rehydrator status`: the cluster's status (`rehydrator::status::gather`) as a table, or as
//! the `StatusReport` JSON with `--json` (the same document `/v1/status` serves).

use anyhow::Context as _;
use rehydrator::status::{gather, render};

use super::{resolve_named, Target};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    /// Print the StatusReport as JSON.
    #[arg(long)]
    pub json: bool,
    /// How many of the newest receipts to show.
    #[arg(long, default_value_t = rehydrator::status::DEFAULT_RECEIPTS)]
    pub receipts: usize,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let resolved = resolve_named(&args.target).await?;
    let client = resolved.client()?;
    let cloud = resolved.cloud().await?;
    let mut scope = resolved.scope();
    scope.receipts = args.receipts;
    let report = gather(&client, cloud.as_deref(), &scope)
        .await
        .with_context(|| format!("cluster {} at {}", resolved.cluster, client.address()))?;
    if args.json {
        let text = serde_json::to_string_pretty(&report).context("encoding the report")?;
        println!("{text}");
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}
