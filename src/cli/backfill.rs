//! `lfx-sync backfill`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};

use super::{StateLocation, print_stdout};
use crate::backfill::{self, BackfillSettings, Progress, RunReport};
use crate::config::{Config, Overrides};
use crate::kv::{Encoding, GuardedWriter, RefreshMode};
use crate::source::dynamodb::DynamoSource;
use crate::source::postgres::PostgresSource;
use crate::source::{Source, Sources};

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// Source configuration (tap-configs/*.toml).
    #[arg(long, env = "LFX_SYNC_CONFIG")]
    config: PathBuf,
    /// Read every row, ignoring stored bookmarks; a fresh bookmark is stored.
    #[arg(long, env = "LFX_SYNC_FULL")]
    full: bool,
    /// Only these streams (`<schema>-<table>`, or a DynamoDB table name); repeatable. Default: all configured.
    #[arg(
        long = "stream",
        value_name = "NAME",
        env = "LFX_SYNC_STREAMS",
        value_delimiter = ','
    )]
    streams: Vec<String>,
    /// Which of the configured sources to read.
    #[arg(long, value_enum, env = "LFX_SYNC_SOURCE", default_value = "all")]
    source: SourceChoice,
    /// An IAM role to assume for DynamoDB (overrides the config's assume_role).
    #[arg(long, env = "LFX_SYNC_ASSUME_ROLE", value_name = "ARN")]
    assume_role: Option<String>,
    #[command(flatten)]
    state: StateLocation,
    /// KV bucket to write (default: the config's, else v1-objects).
    #[arg(long, env = "LFX_SYNC_BUCKET")]
    bucket: Option<String>,
    /// Create the bucket when it does not exist.
    #[arg(long, env = "LFX_SYNC_CREATE_BUCKETS")]
    create_buckets: bool,
    /// Read and decide, but write neither records nor bookmarks.
    #[arg(long, env = "LFX_SYNC_DRY_RUN")]
    dry_run: bool,
    /// Also re-write equal timestamps (same) or everything but soft deletions (full).
    #[arg(long, env = "LFX_SYNC_REFRESH_MODE", default_value = "newer", value_parser = parse_refresh_mode)]
    refresh_mode: RefreshMode,
    /// Print the run report on stdout as one JSON object.
    #[arg(long, value_enum, env = "LFX_SYNC_REPORT")]
    report: Option<ReportFormat>,
    /// PostgreSQL URL (overrides the config's).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// NATS URL (overrides the config's).
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    nats_url: Option<String>,
    /// Guarded writes in flight at once.
    #[arg(long, env = "LFX_SYNC_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=16384))]
    in_flight: u32,
    /// Checkpoint the bookmark at least every N records.
    #[arg(long, env = "LFX_SYNC_CHECKPOINT_EVERY", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: u64,
    /// No progress bars, even on a terminal.
    #[arg(long, short, env = "LFX_SYNC_QUIET")]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SourceChoice {
    Postgres,
    Dynamodb,
    /// Every source the configuration has.
    All,
}

fn parse_refresh_mode(s: &str) -> Result<RefreshMode, String> {
    s.parse()
}

pub async fn run(args: BackfillArgs) -> anyhow::Result<u8> {
    let mut config = Config::load(
        &args.config,
        &Overrides {
            database_url: args.database_url.clone(),
            nats_url: args.nats_url.clone(),
            bucket: args.bucket.clone(),
            state_id: args.state.state_id.clone(),
        },
    )?;
    if let (Some(role), Some(dynamodb)) = (&args.assume_role, config.dynamodb.as_mut()) {
        dynamodb.aws.assume_role = Some(role.clone());
    }
    let source = open_sources(&config, args.source, &args.streams).await?;
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
    state.release().await;
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

/// Opens the selected sources, each with the `--stream` names that are its own.
async fn open_sources(
    config: &Config,
    choice: SourceChoice,
    only: &[String],
) -> anyhow::Result<Sources> {
    let want = |c: SourceChoice| choice == c || choice == SourceChoice::All;
    let postgres = config
        .postgres
        .as_ref()
        .filter(|_| want(SourceChoice::Postgres));
    let dynamodb = config
        .dynamodb
        .as_ref()
        .filter(|_| want(SourceChoice::Dynamodb));
    match choice {
        SourceChoice::Postgres if postgres.is_none() => {
            anyhow::bail!(
                "the configuration {} has no [postgres] source",
                config.path.display()
            )
        }
        SourceChoice::Dynamodb if dynamodb.is_none() => {
            anyhow::bail!(
                "the configuration {} has no [dynamodb] source",
                config.path.display()
            )
        }
        _ => {}
    }
    let pg_names: Vec<&str> = postgres
        .map(|pg| pg.streams.iter().map(|s| s.name.as_str()).collect())
        .unwrap_or_default();
    let ddb_names: Vec<&str> = dynamodb
        .map(|d| d.tables.iter().map(|t| t.table.as_str()).collect())
        .unwrap_or_default();
    let unknown: Vec<&str> = only
        .iter()
        .map(String::as_str)
        .filter(|n| !pg_names.contains(n) && !ddb_names.contains(n))
        .collect();
    if !unknown.is_empty() {
        anyhow::bail!(
            "--stream {}: not in the selected sources of {} (configured: {})",
            unknown.join(", "),
            config.path.display(),
            pg_names
                .iter()
                .chain(&ddb_names)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // With --stream, a source none of whose streams is named is not opened at all.
    let subset = |names: &[&str]| -> Option<Vec<String>> {
        let mine: Vec<String> = only
            .iter()
            .filter(|n| names.contains(&n.as_str()))
            .cloned()
            .collect();
        (only.is_empty() || !mine.is_empty()).then_some(mine)
    };
    let mut parts: Vec<Box<dyn Source>> = Vec::new();
    if let (Some(pg), Some(streams)) = (postgres, subset(&pg_names)) {
        parts.push(Box::new(PostgresSource::open(pg, &streams).await?));
    }
    if let (Some(ddb), Some(tables)) = (dynamodb, subset(&ddb_names)) {
        parts.push(Box::new(DynamoSource::open(ddb, &tables).await?));
    }
    Ok(Sources::new(parts))
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
