//! Bookmarks (SPEC §4): Singer-shaped state stored under a state id, in the
//! layout of Meltano's state backends so either tool resumes from the other.

mod file;
mod s3;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

pub use file::FileBackend;
pub use s3::{DEFAULT_LOCK_TTL, S3Backend, S3Location};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state URI {uri:?}: {reason}")]
    Uri { uri: String, reason: String },
    #[error("state {id:?} is locked by another run ({holder}); try again when it has finished")]
    Locked { id: String, holder: String },
    #[error("state {location}: {reason}")]
    Io { location: String, reason: String },
    #[error("state {location} is not valid state JSON: {reason}")]
    Corrupt { location: String, reason: String },
    #[error("state {location} changed underneath this run: {reason}")]
    Conflict { location: String, reason: String },
}

/// Where one state id's document lives. Implementations hold the run's lock
/// on the state id until they are released or dropped.
pub trait StateBackend: Send + Sync {
    /// Where the document is, for messages.
    fn location(&self) -> String;
    /// The stored document, or `None` when the state id has none yet.
    fn load(&self) -> BoxFuture<'_, Result<Option<StateDocument>, StateError>>;
    /// Replaces the stored document atomically.
    fn store<'a>(&'a self, doc: &'a StateDocument) -> BoxFuture<'a, Result<(), StateError>>;
    /// Removes the stored document.
    fn clear(&self) -> BoxFuture<'_, Result<(), StateError>>;
    /// Gives up the lock at the end of a run, failed or not. A lock that
    /// outlives its process (a remote one) is otherwise only freed by expiry.
    fn release(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
}

/// Opens the backend a state URI names, taking the lock on the state id.
pub async fn open(uri: &str, state_id: &str) -> Result<Box<dyn StateBackend>, StateError> {
    if state_id.is_empty() || state_id.contains(['/', '\\']) || state_id == "." || state_id == ".."
    {
        return Err(StateError::Uri {
            uri: uri.to_string(),
            reason: format!("state id {state_id:?} must be a non-empty name without slashes"),
        });
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(Box::new(FileBackend::open(path.as_ref(), state_id)?));
    }
    if uri.starts_with("s3://") {
        return Ok(Box::new(
            S3Backend::open(uri, state_id, DEFAULT_LOCK_TTL).await?,
        ));
    }
    if let Some((scheme, _)) = uri.split_once("://") {
        return Err(StateError::Uri {
            uri: uri.to_string(),
            reason: format!("unsupported scheme {scheme:?} (supported: file://, s3://)"),
        });
    }
    Ok(Box::new(FileBackend::open(uri.as_ref(), state_id)?))
}

/// Meltano's stored state: the state of the last completed run, and the
/// checkpoints of a run that has not completed, which take precedence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDocument {
    pub completed: SingerState,
    pub partial: Option<SingerState>,
}

impl StateDocument {
    pub fn from_json(value: Value) -> Result<Self, String> {
        let Value::Object(mut top) = value else {
            return Err("expected a JSON object".to_string());
        };
        let completed = match top.remove("completed") {
            None | Some(Value::Null) => SingerState::default(),
            Some(v) => singer_state_of(v, "completed")?,
        };
        let partial = match top.remove("partial") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) if m.is_empty() => None,
            Some(v) => Some(singer_state_of(v, "partial")?),
        };
        Ok(Self { completed, partial })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "completed": {"singer_state": Value::Object(self.completed.0.clone())},
            "partial": match &self.partial {
                Some(p) => json!({"singer_state": Value::Object(p.0.clone())}),
                None => json!({}),
            },
        })
    }

    /// What a run resumes from: the completed state with the checkpoints over it.
    pub fn effective(&self) -> SingerState {
        let mut merged = self.completed.clone();
        if let Some(partial) = &self.partial {
            merge(&mut merged.0, &partial.0);
        }
        merged
    }
}

fn singer_state_of(value: Value, part: &str) -> Result<SingerState, String> {
    let Value::Object(mut m) = value else {
        return Err(format!("`{part}` is not an object"));
    };
    match m.remove("singer_state") {
        None | Some(Value::Null) => Ok(SingerState::default()),
        Some(Value::Object(s)) => Ok(SingerState(s)),
        Some(_) => Err(format!("`{part}.singer_state` is not an object")),
    }
}

fn merge(base: &mut Map<String, Value>, over: &Map<String, Value>) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Object(b)), Value::Object(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A Singer state message's value: `{"bookmarks": {"<stream>": {...}}}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SingerState(pub Map<String, Value>);

impl SingerState {
    /// The stored replication key value of a stream, if its replication key is `key`.
    pub fn bookmark(&self, stream: &str, key: &str) -> Option<&Value> {
        let entry = self.0.get("bookmarks")?.get(stream)?;
        if entry.get("replication_key").and_then(Value::as_str) != Some(key) {
            return None;
        }
        entry.get("replication_key_value").filter(|v| !v.is_null())
    }

    pub fn set_bookmark(&mut self, stream: &str, key: &str, value: Value) {
        let bookmarks = self
            .0
            .entry("bookmarks")
            .or_insert_with(|| Value::Object(Map::new()));
        if !bookmarks.is_object() {
            *bookmarks = Value::Object(Map::new());
        }
        if let Value::Object(b) = bookmarks {
            b.insert(
                stream.to_string(),
                json!({"replication_key": key, "replication_key_value": value}),
            );
        }
    }

    pub fn clear_stream(&mut self, stream: &str) -> bool {
        match self.0.get_mut("bookmarks") {
            Some(Value::Object(b)) => b.remove(stream).is_some(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_meltano_wrote() {
        let text = include_str!(
            "../../tests/fixtures/singer/meltano/state.dev-tap-postgres-to-target-jsonl.json"
        );
        let doc = StateDocument::from_json(serde_json::from_str(text).unwrap()).unwrap();
        assert_eq!(
            doc.effective()
                .bookmark("platform-project__c", "lastmodifieddate"),
            Some(&json!("2024-06-01T00:00:00.000000+00:00"))
        );
        assert_eq!(doc.partial, None);
        assert_eq!(StateDocument::from_json(doc.to_json()).unwrap(), doc);
    }

    #[test]
    fn partial_checkpoints_win_over_completed() {
        let mut doc = StateDocument::default();
        doc.completed.set_bookmark("s", "ts", json!("2024-01-01"));
        doc.completed.set_bookmark("t", "ts", json!("2024-01-01"));
        let mut partial = SingerState::default();
        partial.set_bookmark("s", "ts", json!("2024-02-02"));
        doc.partial = Some(partial);
        let eff = doc.effective();
        assert_eq!(eff.bookmark("s", "ts"), Some(&json!("2024-02-02")));
        assert_eq!(eff.bookmark("t", "ts"), Some(&json!("2024-01-01")));
        // a bookmark on another replication key does not apply
        assert_eq!(eff.bookmark("t", "other"), None);
    }
}
