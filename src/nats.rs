//! Connecting to NATS and opening KV buckets.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv};

/// How to reach NATS. Secrets come from the environment or files only.
#[derive(Debug, Clone, Default)]
pub struct NatsSettings {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub creds: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("KV bucket `{bucket}` does not exist (create it, or pass --create-buckets)")]
    MissingBucket { bucket: String },
    #[error("cannot open KV bucket `{bucket}`: {reason}")]
    Bucket { bucket: String, reason: String },
}

pub async fn connect(settings: &NatsSettings) -> Result<async_nats::Client, NatsError> {
    let fail = |reason: String| NatsError::Connect {
        url: redact(&settings.url),
        reason,
    };
    let mut options = match &settings.creds {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| fail(format!("credentials file {}: {e}", path.display())))?,
        None => async_nats::ConnectOptions::new(),
    };
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &settings.token {
        options = options.token(token.clone());
    }
    options = options
        .name("lfx-sync")
        .connection_timeout(Duration::from_secs(5))
        // Once connected, writes wait for reconnection rather than fail at
        // once; the guarded writer bounds how long. A first connection that
        // fails is a prompt, clear error instead.
        .max_reconnects(None);
    let client = tokio::time::timeout(Duration::from_secs(10), async {
        let client = options
            .connect(settings.url.as_str())
            .await
            .map_err(|e| fail(e.to_string()))?;
        client.flush().await.map_err(|e| fail(e.to_string()))?;
        Ok::<_, NatsError>(client)
    })
    .await
    .map_err(|_| fail("no answer within 10 s".to_string()))??;
    Ok(client)
}

/// A server URL for messages: any `user:password@` in it is hidden.
fn redact(url: &str) -> String {
    url.split(',')
        .map(|server| match (server.find("://"), server.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***@{}", &server[..scheme + 3], &server[at + 1..])
            }
            (None, Some(at)) => format!("***@{}", &server[at + 1..]),
            _ => server.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Opens a KV bucket; a missing one is an error unless `create` is set.
pub async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    create: bool,
) -> Result<kv::Store, NatsError> {
    let missing = match js.get_stream(format!("KV_{bucket}")).await {
        Ok(_) => false,
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(js_err) => {
                js_err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            }
            _ => {
                return Err(NatsError::Bucket {
                    bucket: bucket.to_string(),
                    reason: e.to_string(),
                });
            }
        },
    };
    match missing {
        false => js
            .get_key_value(bucket)
            .await
            .map_err(|e| NatsError::Bucket {
                bucket: bucket.to_string(),
                reason: e.to_string(),
            }),
        true if create => js
            .create_key_value(kv::Config {
                bucket: bucket.to_string(),
                history: 5,
                ..Default::default()
            })
            .await
            .map_err(|e| NatsError::Bucket {
                bucket: bucket.to_string(),
                reason: e.to_string(),
            }),
        true => Err(NatsError::MissingBucket {
            bucket: bucket.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_in_urls_are_hidden() {
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact("nats://me:s3cret@nats.internal:4222"),
            "nats://***@nats.internal:4222"
        );
        assert_eq!(redact("tok3n@nats:4222"), "***@nats:4222");
        assert_eq!(
            redact("nats://a:b@h1:4222,nats://h2:4222"),
            "nats://***@h1:4222,nats://h2:4222"
        );
    }
}
