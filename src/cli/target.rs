//! `target-nats-kv` / `lfx-sync target-nats-kv`: the Singer target.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::{Map, Value};

use super::print_stdout;
use crate::kv::{Encoding, GuardedWriter};
use crate::singer::settings::{about_json, about_text};
use crate::singer::{Target, resolve};

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Settings file (JSON, as Meltano writes it), or `ENV` to use only
    /// TARGET_NATS_KV_* environment variables.
    #[arg(long)]
    config: Option<String>,
    /// Describe the target's settings and capabilities, then exit.
    #[arg(long)]
    about: bool,
    /// Output style for --about.
    #[arg(long, value_enum, default_value = "text")]
    format: AboutFormat,
    /// Read messages from this file instead of standard input.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Create the bucket when it does not exist.
    #[arg(long)]
    create_buckets: bool,
    /// Guarded writes in flight at once.
    #[arg(long, env = "TARGET_NATS_KV_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=16384))]
    in_flight: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AboutFormat {
    Text,
    Markdown,
    Json,
}

pub async fn run(args: TargetArgs) -> anyhow::Result<u8> {
    if args.about {
        let text = match args.format {
            AboutFormat::Json => format!("{}\n", serde_json::to_string_pretty(&about_json())?),
            AboutFormat::Text | AboutFormat::Markdown => about_text(),
        };
        print_stdout(&text)?;
        return Ok(0);
    }
    let file: Option<Map<String, Value>> = match args.config.as_deref() {
        None | Some("ENV") => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --config {path}"))?;
            match serde_json::from_str(&text) {
                Ok(Value::Object(m)) => Some(m),
                Ok(_) => anyhow::bail!("--config {path}: expected a JSON object"),
                Err(e) => anyhow::bail!("--config {path}: not valid JSON: {e}"),
            }
        }
    };
    // NATS_URL, which every other lfx-sync command honours, backs up the url setting.
    let (settings, unknown) = resolve(file.as_ref(), |name| {
        std::env::var(name).ok().or_else(|| {
            (name == "TARGET_NATS_KV_URL")
                .then(|| std::env::var("NATS_URL").ok())
                .flatten()
        })
    })?;
    for name in unknown {
        tracing::warn!(setting = %name, "unknown setting ignored");
    }
    let client = crate::nats::connect(&settings.nats).await?;
    let js = async_nats::jetstream::new(client.clone());
    let store = crate::nats::open_bucket(&js, &settings.bucket, args.create_buckets).await?;
    let encoding = if settings.msgpack {
        Encoding::MsgPack
    } else {
        Encoding::Json
    };
    let writer = GuardedWriter::new(store, &client, settings.refresh_mode, encoding, false)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot read the status of bucket {}: {e}", settings.bucket)
        })?;
    let input: Box<dyn std::io::Read + Send> = match &args.input {
        Some(path) => Box::new(
            std::fs::File::open(path)
                .with_context(|| format!("cannot open --input {}", path.display()))?,
        ),
        None => Box::new(std::io::stdin()),
    };
    tracing::info!(bucket = %settings.bucket, refresh_mode = ?settings.refresh_mode, validate_records = settings.validate_records, "target-nats-kv starting");
    let target = Target::new(
        Arc::new(writer),
        args.in_flight as usize,
        settings.key_prefix.clone(),
        settings.validate_records,
        std::io::stdout(),
    );
    let summary = target.run(input).await?;
    let _ = client.flush().await;
    eprint!("{}", summary.table());
    for (stream, c) in &summary.streams {
        if c.invalid_record > 0 {
            tracing::warn!(%stream, invalid_record = c.invalid_record, "records did not match their schema (written anyway)");
        }
        if c.written.invalid_key > 0 {
            tracing::warn!(%stream, invalid_key = c.written.invalid_key, "records not written: invalid keys");
        }
    }
    if let Some(error) = &summary.input_error {
        tracing::error!(
            states_emitted = summary.states_emitted,
            "input stopped: {error}"
        );
    }
    Ok(if summary.failed() { 1 } else { 0 })
}
