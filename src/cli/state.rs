//! `lfx-sync state`: bookmarks for operators.

use clap::{Args, Subcommand};
use serde_json::Value;

use super::{StateLocation, print_stdout};
use crate::state::{StateBackend, StateDocument};

#[derive(Debug, Args)]
pub struct StateArgs {
    #[command(subcommand)]
    action: StateAction,
}

#[derive(Debug, Subcommand)]
enum StateAction {
    /// Print the stored state (Meltano's layout), or one stream's bookmark.
    Show {
        #[command(flatten)]
        location: StateLocation,
        #[arg(long)]
        stream: Option<String>,
    },
    /// Set one stream's bookmark.
    Set {
        #[command(flatten)]
        location: StateLocation,
        #[arg(long)]
        stream: String,
        /// The replication key column the bookmark is for.
        #[arg(long)]
        replication_key: String,
        /// The bookmark value; JSON (a number) or plain text (a timestamp).
        #[arg(long)]
        value: String,
    },
    /// Remove one stream's bookmark, or the whole state.
    Clear {
        #[command(flatten)]
        location: StateLocation,
        #[arg(long)]
        stream: Option<String>,
    },
}

fn state_id(location: &StateLocation) -> anyhow::Result<&str> {
    location
        .state_id
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--state-id is required"))
}

pub async fn run(args: StateArgs) -> anyhow::Result<u8> {
    let location = match &args.action {
        StateAction::Show { location, .. }
        | StateAction::Set { location, .. }
        | StateAction::Clear { location, .. } => location.clone(),
    };
    let backend = crate::state::open(&location.uri, state_id(&location)?).await?;
    let result = act(backend.as_ref(), args.action).await;
    backend.release().await;
    result.map(|()| 0)
}

async fn act(backend: &dyn StateBackend, action: StateAction) -> anyhow::Result<()> {
    match action {
        StateAction::Show { stream, .. } => {
            let doc = backend.load().await?.unwrap_or_default();
            let shown = match stream {
                Some(s) => doc
                    .effective()
                    .0
                    .get("bookmarks")
                    .and_then(|b| b.get(&s))
                    .cloned()
                    .unwrap_or(Value::Null),
                None => doc.to_json(),
            };
            print_stdout(&format!("{}\n", serde_json::to_string_pretty(&shown)?))?;
        }
        StateAction::Set {
            stream,
            replication_key,
            value,
            ..
        } => {
            let mut doc = backend.load().await?.unwrap_or_default();
            let value = match serde_json::from_str::<Value>(&value) {
                Ok(v @ Value::Number(_)) => v,
                _ => Value::String(value),
            };
            doc.completed = doc.effective();
            doc.partial = None;
            doc.completed.set_bookmark(&stream, &replication_key, value);
            backend.store(&doc).await?;
            tracing::info!(stream, location = %backend.location(), "bookmark set");
        }
        StateAction::Clear { stream, .. } => match stream {
            None => backend.clear().await?,
            Some(s) => {
                let mut doc: StateDocument = backend.load().await?.unwrap_or_default();
                doc.completed = doc.effective();
                doc.partial = None;
                if !doc.completed.clear_stream(&s) {
                    anyhow::bail!("no bookmark for stream {s} in {}", backend.location());
                }
                backend.store(&doc).await?;
            }
        },
    }
    Ok(())
}
