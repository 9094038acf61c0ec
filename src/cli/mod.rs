//! The command line: flags resolved into validated settings, errors mapped to
//! exit codes (0 success, 1 some records failed, 2 usage/config/connection).

mod backfill;
mod state;
mod sync;
mod target;

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "lfx-sync",
    version,
    about = "Keeps LFX One fed with data from LFX v1"
)]
struct Cli {
    #[command(flatten)]
    logging: LoggingArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy v1 tables into the v1-objects bucket (full or incremental).
    Backfill(backfill::BackfillArgs),
    /// Inspect and edit stored bookmarks.
    State(state::StateArgs),
    /// Singer target: load Singer messages from stdin into the bucket.
    #[command(name = "target-nats-kv")]
    TargetNatsKv(target::TargetArgs),
    /// The daemon: live WAL ingest into the bucket, and the push of bucket
    /// changes to the v2 project and committee services.
    Sync(sync::SyncArgs),
}

/// `target-nats-kv` as a program of its own, the name Meltano calls.
#[derive(Debug, Parser)]
#[command(
    name = "target-nats-kv",
    version,
    about = "Singer target for NATS JetStream KV (lfx-sync)"
)]
struct TargetCli {
    #[command(flatten)]
    logging: LoggingArgs,
    #[command(flatten)]
    target: target::TargetArgs,
}

#[derive(Debug, Args)]
struct LoggingArgs {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "LFX_SYNC_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, global = true, default_value = "info", env = "LFX_SYNC_LOG")]
    log_level: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Where a run's state lives; shared by every command that touches bookmarks.
#[derive(Debug, Args, Clone)]
pub struct StateLocation {
    /// State backend URI: s3://bucket/prefix, file:///path, or a plain path.
    #[arg(
        long = "state",
        env = "LFX_SYNC_STATE",
        default_value = "file://.lfx-sync/state"
    )]
    pub uri: String,
    /// State id (default: the config's state_id, else its file name).
    #[arg(long, env = "LFX_SYNC_STATE_ID")]
    pub state_id: Option<String>,
}

/// An error whose exit code is not the default 2.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging(&cli.logging);
    execute(async {
        match cli.command {
            Command::Backfill(args) => backfill::run(args).await,
            Command::State(args) => state::run(args).await,
            Command::TargetNatsKv(args) => target::run(args).await,
            Command::Sync(args) => sync::run(args).await,
        }
    })
}

/// Entry point of the `target-nats-kv` binary.
pub fn target_main() -> ExitCode {
    let cli = match TargetCli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging(&cli.logging);
    execute(target::run(cli.target))
}

fn usage_error(e: clap::Error) -> ExitCode {
    let _ = e.print();
    ExitCode::from(if e.use_stderr() { 2 } else { 0 })
}

fn execute(command: impl std::future::Future<Output = anyhow::Result<u8>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(args: &LoggingArgs) {
    // The NATS client's connection chatter is noise at info level.
    let directive = if args.log_level.contains('=') {
        args.log_level.clone()
    } else {
        format!("{},async_nats=warn", args.log_level)
    };
    let filter = tracing_subscriber::EnvFilter::try_new(directive)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Prints to stdout; a closed pipe (`| head`) is not an error.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
