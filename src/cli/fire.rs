//! `rehydrator fire`: fires a Consul user event, as the seed's Lambda or ECS task does to ask
//! for a rollout (`consul-rehydrate`), and prints the event's ID. The replicas' `event` watches
//! see it on every agent; the ID is the trigger every replica agrees on.

use anyhow::Context as _;
use rehydrator::consul::EventFilter;

use super::{resolve, BadInput, Target};

#[derive(clap::Args, Debug)]
pub struct FireArgs {
    #[command(flatten)]
    pub target: Target,
    /// The event's name.
    #[arg(long, default_value = rehydrator_actors::rollout::REHYDRATE_EVENT)]
    pub name: String,
    /// The event's body: the text itself, or `@FILE` to send a file's bytes.
    #[arg(long)]
    pub payload: Option<String>,
}

/// The bytes `--payload` stands for.
pub fn payload(arg: Option<&str>) -> Result<Vec<u8>, BadInput> {
    match arg {
        None => Ok(Vec::new()),
        Some(a) => match a.strip_prefix('@') {
            Some(file) => std::fs::read(file)
                .map_err(|e| BadInput(format!("--payload @{file}: cannot read: {e}"))),
            None => Ok(a.as_bytes().to_vec()),
        },
    }
}

pub async fn run(args: FireArgs) -> anyhow::Result<()> {
    let resolved = resolve(&args.target)?;
    if args.name.is_empty() {
        return Err(BadInput("--name: an event needs a name".into()).into());
    }
    let body = payload(args.payload.as_deref())?;
    let client = resolved.client()?;
    let event = client
        .event_fire(&args.name, &body, &EventFilter::default())
        .await
        .with_context(|| format!("firing event {:?}", args.name))?;
    println!("{}", event.id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_is_text_or_a_file() {
        assert_eq!(payload(None).ok(), Some(Vec::new()));
        assert_eq!(payload(Some("hi")).ok(), Some(b"hi".to_vec()));
        let err = payload(Some("@/nonexistent/rehydrator-payload")).err();
        assert!(err.is_some_and(|e| e.0.contains("--payload @/nonexistent/rehydrator-payload")));
    }
}
