//! `lfx-sync backfill`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::{StateLocation, print_stdout};
use crate::backfill::{self, BackfillSettings, Progress, RunReport};
use crate::config::{Config, Overrides};
use crate::kv::{Encoding, GuardedWriter, RefreshMode};
use crate::source::postgres::PostgresSource;

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// Source configuration (tap-configs/*.toml).
    #[arg(long, env = "LFX_SYNC_CONFIG")]
    config: PathBuf,
    /// Read every row, ignoring stored bookmarks; a fresh bookmark is stored.
    #[arg(long)]
    full: bool,
    /// Only these streams (`<schema>-<table>`); repeatable. Default: all configured.
    #[arg(long = "stream", value_name = "NAME")]
    streams: Vec<String>,
    #[command(flatten)]
    state: StateLocation,
    /// KV bucket to write (default: the config's, else v1-objects).
    #[arg(long, env = "LFX_SYNC_BUCKET")]
    bucket: Option<String>,
    /// Create the bucket when it does not exist.
    #[arg(long)]
    create_buckets: bool,
    /// Read and decide, but write neither records nor bookmarks.
    #[arg(long)]
    dry_run: bool,
    /// Also re-write equal timestamps (same) or everything but soft deletions (full).
    #[arg(long, env = "LFX_SYNC_REFRESH_MODE", default_value = "newer", value_parser = parse_refresh_mode)]
    refresh_mode: RefreshMode,
    /// Print the run report on stdout as one JSON object.
    #[arg(long, value_enum)]
    report: Option<ReportFormat>,
    /// PostgreSQL URL (overrides the config's).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// NATS URL (overrides the config's).
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// Guarded writes in flight at once.
    #[arg(long, env = "LFX_SYNC_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=16384))]
    in_flight: u32,
    /// Checkpoint the bookmark at least every N records.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: u64,
    /// No progress bars, even on a terminal.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    Json,
}

fn parse_refresh_mode(s: &str) -> Result<RefreshMode, String> {
    s.parse()
}

pub async fn run(args: BackfillArgs) -> anyhow::Result<u8> {
    let config = Config::load(
        &args.config,
        &Overrides {
            database_url: args.database_url.clone(),
            nats_url: args.nats_url.clone(),
            bucket: args.bucket.clone(),
            state_id: args.state.state_id.clone(),
        },
    )?;
    let postgres = config
        .postgres
        .as_ref()
        .context("the configuration has no [postgres] source")?;
    let source = PostgresSource::open(postgres, &args.streams).await?;
    let client = crate::nats::connect(&config.nats).await?;
    let js = async_nats::jetstream::new(client.clone());
    let store = crate::nats::open_bucket(&js, &config.bucket, args.create_buckets).await?;
    let writer = GuardedWriter::new(
        store,
        &client,
        args.refresh_mode,
        Encoding::Json,
        args.dry_run,
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot read the status of bucket {}: {e}", config.bucket))?;
    let state = crate::state::open(&args.state.uri, &config.state_id).await?;
    let settings = BackfillSettings {
        full: args.full,
        dry_run: args.dry_run,
        key_prefix: config.key_prefix.clone(),
        in_flight: args.in_flight as usize,
        checkpoint_records: args.checkpoint_every,
        ..Default::default()
    };
    tracing::info!(
        config = %config.path.display(),
        bucket = %config.bucket,
        state = %state.location(),
        full = args.full,
        dry_run = args.dry_run,
        "backfill starting"
    );
    let outcome = backfill::run(
        &source,
        Arc::new(writer),
        state.as_ref(),
        &settings,
        Progress::detect(args.quiet),
    )
    .await;
    // Everything acknowledged must reach the server before the process exits.
    let _ = client.flush().await;
    match outcome {
        Ok(report) => {
            print_report(&report, args.report)?;
            Ok(if report.any_failed() { 1 } else { 0 })
        }
        Err(interrupted) => {
            print_report(&interrupted.report, args.report)?;
            Err(anyhow::Error::new(interrupted.error))
        }
    }
}

fn print_report(report: &RunReport, format: Option<ReportFormat>) -> anyhow::Result<()> {
    match format {
        Some(ReportFormat::Json) => {
            eprint!("{}", report.table());
            print_stdout(&format!("{}\n", serde_json::to_string(report)?))
        }
        None => print_stdout(&report.table()),
    }
}
