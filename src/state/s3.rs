//! `s3://bucket/prefix` state, laid out as Meltano's S3 state backend does:
//! `<prefix>/<state_id>/state.json` holding `{"completed": …, "partial": …}`.
//!
//! Two guards keep concurrent runs from corrupting a state id:
//! - a lock object `<prefix>/<state_id>/lfx-sync.lock`, created only if absent,
//!   naming its owner and an expiry that a heartbeat keeps pushing forward; a
//!   run killed hard leaves it behind, and the next run takes it over once it
//!   has expired (Meltano's own `lock` object is a short per-write lock of its
//!   own and is left alone);
//! - every write of `state.json` is conditional on the ETag this run last saw
//!   (or on its absence), so a writer that slipped past the lock — a stalled
//!   run whose lock was taken over, or Meltano itself — makes the write fail
//!   instead of being overwritten.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::head_object::HeadObjectError;
use aws_sdk_s3::operation::put_object::{PutObjectError, PutObjectOutput};
use aws_sdk_s3::primitives::ByteStream;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::{StateBackend, StateDocument, StateError};
use crate::aws::{self, AwsSettings};

/// How long a lock outlives its last heartbeat: long enough to ride out a
/// slow S3 call, short enough that a killed CronJob run does not block the
/// next scheduled one for long.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(15 * 60);

const LOCK_NAME: &str = "lfx-sync.lock";

/// `s3://bucket/prefix` split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing slashes; may be empty.
    pub prefix: String,
}

impl S3Location {
    pub fn parse(uri: &str) -> Result<Self, StateError> {
        let fail = |reason: &str| StateError::Uri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let rest = uri
            .strip_prefix("s3://")
            .ok_or_else(|| fail("expected s3://bucket/prefix"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.contains('@') {
            // Meltano accepts keys in the URI; secrets never belong in a flag or a log line.
            return Err(fail(
                "credentials in the URI are not supported: use the AWS credential chain (env, profile, role)",
            ));
        }
        if bucket.is_empty() {
            return Err(fail("the bucket name is missing"));
        }
        if uri.contains(['?', '#']) {
            return Err(fail("query strings and fragments are not supported"));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    /// The key of `name` in a state id's folder, as Meltano joins it.
    pub fn key(&self, state_id: &str, name: &str) -> String {
        if self.prefix.is_empty() {
            format!("{state_id}/{name}")
        } else {
            format!("{}/{state_id}/{name}", self.prefix)
        }
    }
}

/// What the lock object says: who holds the state id, until when.
#[derive(Debug, Clone, Deserialize)]
struct LockBody {
    owner: String,
    host: String,
    pid: u32,
    started_at: String,
    expires_at: String,
}

impl LockBody {
    fn holder(&self) -> String {
        format!(
            "{} on host {} pid {} since {}, lock expires {}",
            self.owner, self.host, self.pid, self.started_at, self.expires_at
        )
    }
}

pub struct S3Backend {
    inner: Arc<Inner>,
    heartbeat: JoinHandle<()>,
}

struct Inner {
    client: Client,
    location: S3Location,
    state_id: String,
    state_key: String,
    lock_key: String,
    ttl: Duration,
    started_at: String,
    /// ETag of `state.json` as this run last saw or wrote it; `None`: absent.
    state_etag: Mutex<Option<String>>,
    lock: Mutex<LockState>,
}

enum LockState {
    Held {
        etag: String,
    },
    /// Another run took the lock over: this run must not write any more.
    Lost(String),
    Released,
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Path-style addressing (`http://host/bucket/key`): what S3-compatible
/// servers expect, so it is the default whenever an endpoint is configured.
fn path_style(config: &aws_config::SdkConfig) -> Result<bool, String> {
    match std::env::var("AWS_S3_FORCE_PATH_STYLE") {
        Ok(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(format!(
                "AWS_S3_FORCE_PATH_STYLE={v:?}: expected true or false"
            )),
        },
        Err(_) => Ok(config.endpoint_url().is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some_and(|v| !v.is_empty())),
    }
}

fn status<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// 412 is S3's answer to a failed condition; 409 its answer when another
/// conditional write to the key is in progress.
fn is_condition_failure<E>(e: &SdkError<E>) -> bool {
    matches!(status(e), Some(409 | 412))
}

impl S3Backend {
    /// Connects with the standard AWS configuration, takes the lock on the
    /// state id and starts its heartbeat.
    pub async fn open(uri: &str, state_id: &str, ttl: Duration) -> Result<Self, StateError> {
        let config = aws::load(&AwsSettings::default(), aws::Service::S3State)
            .await
            .map_err(|e| StateError::Uri {
                uri: uri.to_string(),
                reason: e.to_string(),
            })?;
        Self::with_config(&config, uri, state_id, ttl).await
    }

    /// [`S3Backend::open`] with a given AWS configuration.
    pub async fn with_config(
        config: &aws_config::SdkConfig,
        uri: &str,
        state_id: &str,
        ttl: Duration,
    ) -> Result<Self, StateError> {
        let location = S3Location::parse(uri)?;
        let force_path_style = path_style(config).map_err(|reason| StateError::Uri {
            uri: uri.to_string(),
            reason,
        })?;
        let client = Client::from_conf(
            aws_sdk_s3::config::Builder::from(config)
                .force_path_style(force_path_style)
                .build(),
        );
        let inner = Arc::new(Inner {
            client,
            state_key: location.key(state_id, "state.json"),
            lock_key: location.key(state_id, LOCK_NAME),
            location,
            state_id: state_id.to_string(),
            ttl,
            started_at: rfc3339(Utc::now()),
            state_etag: Mutex::new(None),
            lock: Mutex::new(LockState::Released),
        });
        let etag = inner.acquire().await?;
        *inner.lock.lock().await = LockState::Held { etag };
        let state_etag = match inner.head_state().await {
            Ok(etag) => etag,
            Err(e) => {
                inner.release().await;
                return Err(e);
            }
        };
        *inner.state_etag.lock().await = state_etag;
        let beating = Arc::clone(&inner);
        let heartbeat = tokio::spawn(async move {
            let period = beating.ttl / 3;
            loop {
                tokio::time::sleep(period).await;
                match beating.refresh().await {
                    Ok(()) => {}
                    Err(e @ StateError::Conflict { .. }) => {
                        tracing::error!(error = %e, "state lock lost");
                        break;
                    }
                    // Transient: the next beat or store tries again well before expiry.
                    Err(e) => tracing::warn!(error = %e, "cannot refresh the state lock"),
                }
            }
        });
        Ok(Self { inner, heartbeat })
    }
}

impl Drop for S3Backend {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl Inner {
    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.location.bucket)
    }

    fn io<E>(&self, key: &str, what: &str, e: SdkError<E>) -> StateError
    where
        E: std::error::Error + 'static,
    {
        StateError::Io {
            location: self.uri(key),
            reason: format!("{what}: {}", aws::describe(&e)),
        }
    }

    fn lock_body(&self) -> Vec<u8> {
        serde_json::json!({
            "owner": "lfx-sync",
            "host": hostname(),
            "pid": std::process::id(),
            "started_at": self.started_at,
            "expires_at": rfc3339(Utc::now() + self.ttl),
        })
        .to_string()
        .into_bytes()
    }

    fn locked(&self, holder: String) -> StateError {
        StateError::Locked {
            id: self.state_id.clone(),
            holder,
        }
    }

    /// Creates the lock object, or takes over an expired one.
    async fn acquire(&self) -> Result<String, StateError> {
        // A lock released or taken over between our attempts sends us round again.
        for _ in 0..3 {
            let created = self
                .client
                .put_object()
                .bucket(&self.location.bucket)
                .key(&self.lock_key)
                .if_none_match("*")
                .content_type("application/json")
                .body(ByteStream::from(self.lock_body()))
                .send()
                .await;
            match created {
                Ok(out) => return Ok(out.e_tag().unwrap_or_default().to_string()),
                Err(e) if is_condition_failure(&e) => {}
                Err(e) => return Err(self.io(&self.lock_key, "cannot create the lock", e)),
            }
            let current = self
                .client
                .get_object()
                .bucket(&self.location.bucket)
                .key(&self.lock_key)
                .send()
                .await;
            let out = match current {
                Ok(out) => out,
                Err(SdkError::ServiceError(s))
                    if matches!(s.err(), GetObjectError::NoSuchKey(_)) =>
                {
                    continue;
                }
                Err(e) => return Err(self.io(&self.lock_key, "cannot read the lock", e)),
            };
            let etag = out.e_tag().unwrap_or_default().to_string();
            let modified = out
                .last_modified()
                .and_then(|t| DateTime::<Utc>::from_timestamp(t.secs(), 0));
            let bytes = out
                .body
                .collect()
                .await
                .map(|b| b.into_bytes())
                .unwrap_or_default();
            let body: Option<LockBody> = serde_json::from_slice(&bytes).ok();
            // A lock this program did not write still expires, a TTL after it was written.
            let expires = body
                .as_ref()
                .and_then(|b| DateTime::parse_from_rfc3339(&b.expires_at).ok())
                .map(|t| t.with_timezone(&Utc))
                .or_else(|| modified.map(|m| m + self.ttl));
            let holder = body.as_ref().map_or_else(
                || format!("unknown owner of {}", self.uri(&self.lock_key)),
                LockBody::holder,
            );
            if expires.is_none_or(|t| t > Utc::now()) {
                return Err(self.locked(holder));
            }
            tracing::warn!(lock = %self.uri(&self.lock_key), previous = %holder, "taking over an expired state lock");
            let taken = self.rewrite_lock(&etag).await;
            match taken {
                Ok(out) => return Ok(out.e_tag().unwrap_or_default().to_string()),
                Err(e) if is_condition_failure(&e) || status(&e) == Some(404) => continue,
                Err(e) => return Err(self.io(&self.lock_key, "cannot take over the lock", e)),
            }
        }
        Err(self.locked(format!(
            "another run that keeps changing {}",
            self.uri(&self.lock_key)
        )))
    }

    /// Writes this run's lock body over the lock object, only if it is still
    /// the version `etag` names.
    async fn rewrite_lock(&self, etag: &str) -> Result<PutObjectOutput, SdkError<PutObjectError>> {
        self.client
            .put_object()
            .bucket(&self.location.bucket)
            .key(&self.lock_key)
            .if_match(etag)
            .content_type("application/json")
            .body(ByteStream::from(self.lock_body()))
            .send()
            .await
    }

    /// Pushes the lock's expiry forward, if this run still holds it.
    async fn refresh(&self) -> Result<(), StateError> {
        let mut lock = self.lock.lock().await;
        let etag = match &*lock {
            LockState::Held { etag } => etag.clone(),
            LockState::Lost(holder) => return Err(self.lost(holder)),
            LockState::Released => return Err(self.lost("nobody: this run released it")),
        };
        let put = self.rewrite_lock(&etag).await;
        match put {
            Ok(out) => {
                *lock = LockState::Held {
                    etag: out.e_tag().unwrap_or_default().to_string(),
                };
                Ok(())
            }
            Err(e) if is_condition_failure(&e) || status(&e) == Some(404) => {
                let holder = format!(
                    "another run, after this one held it past its expiry ({})",
                    self.uri(&self.lock_key)
                );
                *lock = LockState::Lost(holder.clone());
                Err(self.lost(&holder))
            }
            Err(e) => Err(self.io(&self.lock_key, "cannot refresh the lock", e)),
        }
    }

    fn lost(&self, holder: &str) -> StateError {
        StateError::Conflict {
            location: self.uri(&self.state_key),
            reason: format!("the lock on the state id was taken over by {holder}"),
        }
    }

    async fn head_state(&self) -> Result<Option<String>, StateError> {
        match self
            .client
            .head_object()
            .bucket(&self.location.bucket)
            .key(&self.state_key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_string())),
            Err(SdkError::ServiceError(s)) if matches!(s.err(), HeadObjectError::NotFound(_)) => {
                Ok(None)
            }
            Err(e) => Err(self.io(&self.state_key, "cannot read", e)),
        }
    }

    /// Deletes the lock if it is still this run's; never fails the run.
    async fn release(&self) {
        let mut lock = self.lock.lock().await;
        if let LockState::Held { etag } = &*lock {
            let deleted = self
                .client
                .delete_object()
                .bucket(&self.location.bucket)
                .key(&self.lock_key)
                .if_match(etag)
                .send()
                .await;
            match deleted {
                Ok(_) => {}
                Err(e) if is_condition_failure(&e) || status(&e) == Some(404) => {
                    tracing::warn!(lock = %self.uri(&self.lock_key), "the state lock was no longer this run's; left in place");
                }
                Err(e) => tracing::warn!(
                    lock = %self.uri(&self.lock_key),
                    error = %aws::describe(&e),
                    "cannot release the state lock; it expires by itself"
                ),
            }
        }
        *lock = LockState::Released;
    }
}

impl StateBackend for S3Backend {
    fn location(&self) -> String {
        self.inner.uri(&self.inner.state_key)
    }

    fn load(&self) -> BoxFuture<'_, Result<Option<StateDocument>, StateError>> {
        async move {
            let inner = &self.inner;
            let out = match inner
                .client
                .get_object()
                .bucket(&inner.location.bucket)
                .key(&inner.state_key)
                .send()
                .await
            {
                Ok(out) => out,
                Err(SdkError::ServiceError(s))
                    if matches!(s.err(), GetObjectError::NoSuchKey(_)) =>
                {
                    *inner.state_etag.lock().await = None;
                    return Ok(None);
                }
                Err(e) => return Err(inner.io(&inner.state_key, "cannot read", e)),
            };
            let etag = out.e_tag().map(str::to_string);
            let bytes = out
                .body
                .collect()
                .await
                .map_err(|e| StateError::Io {
                    location: self.location(),
                    reason: format!("cannot read: {e}"),
                })?
                .into_bytes();
            let corrupt = |reason: String| StateError::Corrupt {
                location: self.location(),
                reason,
            };
            let value = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            let doc = StateDocument::from_json(value).map_err(corrupt)?;
            *inner.state_etag.lock().await = etag;
            Ok(Some(doc))
        }
        .boxed()
    }

    fn store<'a>(&'a self, doc: &'a StateDocument) -> BoxFuture<'a, Result<(), StateError>> {
        async move {
            let inner = &self.inner;
            inner.refresh().await?;
            let body = serde_json::to_vec(&doc.to_json()).map_err(|e| StateError::Io {
                location: self.location(),
                reason: e.to_string(),
            })?;
            let mut etag = inner.state_etag.lock().await;
            let put = inner
                .client
                .put_object()
                .bucket(&inner.location.bucket)
                .key(&inner.state_key)
                .content_type("application/json")
                .body(ByteStream::from(body));
            let put = match &*etag {
                Some(seen) => put.if_match(seen),
                None => put.if_none_match("*"),
            };
            match put.send().await {
                Ok(out) => {
                    *etag = out.e_tag().map(str::to_string);
                    Ok(())
                }
                // 404: `If-Match` on an object deleted meanwhile.
                Err(e) if is_condition_failure(&e) || status(&e) == Some(404) => {
                    Err(StateError::Conflict {
                        location: self.location(),
                        reason: format!(
                            "it was written by someone else since this run read it ({}); \
                             another run, Meltano or an operator is using state id {:?}",
                            e.code().unwrap_or("precondition failed"),
                            inner.state_id
                        ),
                    })
                }
                Err(e) => Err(inner.io(&inner.state_key, "cannot write", e)),
            }
        }
        .boxed()
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), StateError>> {
        async move {
            let inner = &self.inner;
            inner.refresh().await?;
            let mut etag = inner.state_etag.lock().await;
            let Some(seen) = etag.clone() else {
                return Ok(());
            };
            let deleted = inner
                .client
                .delete_object()
                .bucket(&inner.location.bucket)
                .key(&inner.state_key)
                .if_match(seen)
                .send()
                .await;
            match deleted {
                Ok(_) => {
                    *etag = None;
                    Ok(())
                }
                Err(e) if is_condition_failure(&e) => Err(StateError::Conflict {
                    location: self.location(),
                    reason: "it was written by someone else since this run read it".to_string(),
                }),
                Err(e) if status(&e) == Some(404) => {
                    *etag = None;
                    Ok(())
                }
                Err(e) => Err(inner.io(&inner.state_key, "cannot delete", e)),
            }
        }
        .boxed()
    }

    fn release(&self) -> BoxFuture<'_, ()> {
        async move {
            self.heartbeat.abort();
            self.inner.release().await;
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meltano_style_uris() {
        let l = S3Location::parse("s3://lfx-state/meltano/state/").unwrap();
        assert_eq!(l.bucket, "lfx-state");
        assert_eq!(
            l.key("platform-db-incremental", "state.json"),
            "meltano/state/platform-db-incremental/state.json"
        );
        let bare = S3Location::parse("s3://lfx-state").unwrap();
        assert_eq!(bare.key("x", "state.json"), "x/state.json");
        for bad in [
            "s3://",
            "s3:///prefix",
            "s3://key:secret@bucket/p",
            "s3://bucket/p?versionId=1",
        ] {
            assert!(
                matches!(S3Location::parse(bad), Err(StateError::Uri { .. })),
                "{bad}"
            );
        }
    }
}
