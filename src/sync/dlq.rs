//! The dead-letter stream: every message the daemon gives up on is published
//! there, unchanged, with headers that say where it came from and why, before
//! the original is terminated. Nothing is dropped silently.
//!
//! The stream (default `lfx-sync-dlq`, subjects `<name>.>`) is lfx-sync's own,
//! so it is created when missing, whatever `--create-streams` says: without it
//! the daemon could not give up on anything safely.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage, stream};

use super::consumer::Rejection;

/// Headers of a dead letter.
pub const SOURCE_SUBJECT: &str = "Lfx-Sync-Source-Subject";
pub const SOURCE_STREAM: &str = "Lfx-Sync-Source-Stream";
pub const SOURCE_SEQUENCE: &str = "Lfx-Sync-Source-Sequence";
pub const CONSUMER: &str = "Lfx-Sync-Consumer";
pub const ATTEMPTS: &str = "Lfx-Sync-Attempts";
pub const REASON: &str = "Lfx-Sync-Reason";
pub const FAILED_AT: &str = "Lfx-Sync-Failed-At";

/// Header values longer than this are cut: a reason quotes input, which
/// may be large.
const MAX_HEADER_VALUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the dead-letter stream `{stream}`: {reason}")]
pub struct DlqError {
    pub stream: String,
    pub reason: String,
}

pub struct DeadLetters {
    js: jetstream::Context,
    stream: String,
}

impl DeadLetters {
    /// Opens the stream, creating it when missing.
    pub async fn ensure(js: jetstream::Context, name: &str) -> Result<Self, DlqError> {
        let config = stream::Config {
            name: name.to_string(),
            subjects: vec![format!("{name}.>")],
            description: Some("lfx-sync: messages the sync daemon gave up on".to_string()),
            ..Default::default()
        };
        js.get_or_create_stream(config)
            .await
            .map_err(|e| DlqError {
                stream: name.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            js,
            stream: name.to_string(),
        })
    }

    /// Publishes `message` to `<dlq>.<its subject>` and waits for the stream
    /// to store it. Its id makes a repeat (after a crash between this and the
    /// termination of the original) a duplicate the stream drops.
    pub async fn publish(
        &self,
        message: &jetstream::Message,
        consumer: &str,
        attempts: i64,
        rejection: &Rejection,
    ) -> Result<(), async_nats::Error> {
        let mut headers = HeaderMap::new();
        headers.insert(SOURCE_SUBJECT, message.subject.as_str());
        headers.insert(CONSUMER, consumer);
        headers.insert(ATTEMPTS, attempts.to_string());
        headers.insert(
            REASON,
            header_value(&format!("{}: {}", rejection.reason, rejection.detail)),
        );
        headers.insert(
            FAILED_AT,
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        let mut id = format!("{consumer}:{}", message.subject);
        if let Ok(info) = message.info() {
            headers.insert(SOURCE_STREAM, info.stream);
            headers.insert(SOURCE_SEQUENCE, info.stream_sequence.to_string());
            id = format!("{}:{}:{consumer}", info.stream, info.stream_sequence);
        }
        let publish = PublishMessage::build()
            .payload(message.payload.clone())
            .headers(headers)
            .message_id(id);
        self.js
            .send_publish(format!("{}.{}", self.stream, message.subject), publish)
            .await?
            .await?;
        Ok(())
    }
}

/// One line, printable, bounded.
fn header_value(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_HEADER_VALUE {
        let mut cut = MAX_HEADER_VALUE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_one_bounded_line() {
        assert_eq!(
            header_value("invalid_event: line 1\r\ncolumn 2\t"),
            "invalid_event: line 1  column 2 "
        );
        let long = "é".repeat(MAX_HEADER_VALUE);
        let cut = header_value(&long);
        assert!(cut.len() <= MAX_HEADER_VALUE + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
