//! Reads and parses Singer input on a thread of its own, so parsing overlaps
//! the writes; BATCH messages are expanded into their records here.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::message::{BatchEncoding, Message};

/// Where an input item came from, for messages.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Line of the input stream.
    pub line: u64,
    /// For records from a BATCH file: the file and the line in it.
    pub batch: Option<(Arc<str>, u64)>,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.batch {
            None => write!(f, "line {}", self.line),
            Some((file, n)) => write!(f, "line {} (BATCH file {file}, line {n})", self.line),
        }
    }
}

pub struct Item {
    pub origin: Origin,
    /// The stream the item is about, when known, for messages.
    pub stream: Option<String>,
    pub message: Result<Message, String>,
}

const CHUNK: usize = 512;

/// Starts the reader thread. It stops at the end of input or after the
/// first unreadable item, which it passes on.
pub fn spawn(input: Box<dyn Read + Send>) -> mpsc::Receiver<Vec<Item>> {
    let (tx, rx) = mpsc::channel(8);
    std::thread::spawn(move || read_all(input, &tx));
    rx
}

fn read_all(input: Box<dyn Read + Send>, tx: &mpsc::Sender<Vec<Item>>) {
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut buf = String::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        match reader.read_line(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                chunk.push(Item {
                    origin: Origin {
                        line: line_no + 1,
                        batch: None,
                    },
                    stream: None,
                    message: Err(format!("cannot read input: {e}")),
                });
                break;
            }
        }
        line_no += 1;
        let line = buf.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        let origin = Origin {
            line: line_no,
            batch: None,
        };
        let stop = match Message::parse(line) {
            Ok(Message::Batch {
                stream,
                encoding,
                manifest,
            }) => {
                let ok = expand_batch(&origin, &stream, &encoding, &manifest, &mut chunk, tx);
                !ok
            }
            Ok(message) => {
                chunk.push(Item {
                    stream: stream_of(&message),
                    origin,
                    message: Ok(message),
                });
                false
            }
            Err(e) => {
                let stream = stream_in_broken_line(line);
                chunk.push(Item {
                    origin,
                    stream,
                    message: Err(e.to_string()),
                });
                true
            }
        };
        if stop {
            break;
        }
        if chunk.len() >= CHUNK && tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
            return;
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(chunk);
    }
}

/// The stream a line that is not valid JSON (a truncated one, say) names, so
/// the error can say which stream it broke.
fn stream_in_broken_line(line: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        return v.get("stream")?.as_str().map(String::from);
    }
    let at = line.find("\"stream\"")? + "\"stream\"".len();
    let rest = line[at..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

fn stream_of(message: &Message) -> Option<String> {
    match message {
        Message::Schema { stream, .. }
        | Message::Record { stream, .. }
        | Message::ActivateVersion { stream, .. } => Some(stream.clone()),
        _ => None,
    }
}

/// Turns the files of a BATCH message into RECORD items; false after an error.
fn expand_batch(
    origin: &Origin,
    stream: &str,
    encoding: &BatchEncoding,
    manifest: &[String],
    chunk: &mut Vec<Item>,
    tx: &mpsc::Sender<Vec<Item>>,
) -> bool {
    let fail = |chunk: &mut Vec<Item>, reason: String| {
        chunk.push(Item {
            origin: origin.clone(),
            stream: Some(stream.to_string()),
            message: Err(reason),
        });
        false
    };
    if encoding.format != "jsonl" {
        return fail(
            chunk,
            format!(
                "BATCH format {:?} is not supported (only jsonl)",
                encoding.format
            ),
        );
    }
    for uri in manifest {
        let Some(path) = uri.strip_prefix("file://") else {
            return fail(
                chunk,
                format!("BATCH file {uri}: only file:// manifests are supported"),
            );
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => return fail(chunk, format!("BATCH file {uri}: {e}")),
        };
        let reader: Box<dyn Read> = match encoding.compression.as_deref() {
            Some("gzip") => Box::new(flate2::read::GzDecoder::new(file)),
            None | Some("none") => Box::new(file),
            Some(other) => {
                return fail(
                    chunk,
                    format!("BATCH compression {other:?} is not supported (gzip, none)"),
                );
            }
        };
        let name: Arc<str> = Arc::from(uri.as_str());
        for (i, line) in BufReader::new(reader).lines().enumerate() {
            let batch_origin = Origin {
                line: origin.line,
                batch: Some((Arc::clone(&name), i as u64 + 1)),
            };
            let line = match line {
                Ok(l) => l,
                Err(e) => return fail(chunk, format!("BATCH file {uri} line {}: {e}", i + 1)),
            };
            if line.trim().is_empty() {
                continue;
            }
            let message = match serde_json::from_str::<Box<RawValue>>(&line) {
                Ok(record) if record.get().starts_with('{') => Ok(Message::Record {
                    stream: stream.to_string(),
                    record,
                    time_extracted: None,
                }),
                Ok(_) => Err("a BATCH record is not a JSON object".to_string()),
                Err(e) => Err(format!("not a JSON record ({e})")),
            };
            let stop = message.is_err();
            chunk.push(Item {
                origin: batch_origin,
                stream: Some(stream.to_string()),
                message,
            });
            if stop {
                return false;
            }
            if chunk.len() >= CHUNK && tx.blocking_send(std::mem::take(chunk)).is_err() {
                return false;
            }
        }
    }
    true
}
