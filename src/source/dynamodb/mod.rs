//! The DynamoDB source: each configured table is one stream, named after the
//! table and keyed by its key schema (HASH then RANGE), read with a parallel
//! Scan. Incremental reads filter on the table's timestamp attribute against
//! the stored bookmark, which the backfill sets to the time a complete scan
//! started (a Scan returns items in no time order).

pub mod value;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
use aws_sdk_dynamodb::operation::scan::ScanError;
use aws_sdk_dynamodb::types::{AttributeValue, KeyType};
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryFutureExt};
use serde_json::Value;
use tokio::sync::mpsc;

use super::{Batch, Batches, Source, SourceError, SourceRecord, StreamSpec};
use crate::aws;
use crate::config::{DynamoConfig, DynamoTable};

/// Pages read ahead of the writer, over all segments of a table.
const READ_AHEAD: usize = 8;
/// Tables described at once when the source opens.
const DESCRIBE_CONCURRENCY: usize = 8;

pub struct DynamoSource {
    client: Client,
    specs: Vec<StreamSpec>,
    plans: Vec<Arc<Plan>>,
}

/// How to scan one table.
#[derive(Debug)]
struct Plan {
    /// What the backfill sees of the table; records are keyed from it.
    spec: StreamSpec,
    table: String,
    timestamp: Option<String>,
    item_count: Option<u64>,
    segments: u32,
    page_size: Option<i32>,
    lookback: Duration,
}

fn describe_failure(e: &SdkError<DescribeTableError>) -> Option<String> {
    match e {
        SdkError::ServiceError(s) => Some(match s.err() {
            DescribeTableError::ResourceNotFoundException(_) => "does not exist".to_string(),
            other => format!(
                "cannot be described: {}",
                other.message().unwrap_or("unknown error")
            ),
        }),
        _ => None,
    }
}

impl DynamoSource {
    /// Connects and checks every selected table, reporting every missing
    /// table together.
    pub async fn open(config: &DynamoConfig, only: &[String]) -> Result<Self, SourceError> {
        let sdk = aws::load(&config.aws, aws::Service::DynamoDb)
            .await
            .map_err(|e| SourceError::Connect {
                what: "DynamoDB".to_string(),
                reason: e.to_string(),
            })?;
        let client = Client::new(&sdk);
        let mut problems: Vec<String> = only
            .iter()
            .filter(|name| !config.tables.iter().any(|t| &t.table == *name))
            .map(|name| {
                format!(
                    "--stream {name}: not a configured table (configured: {})",
                    config
                        .tables
                        .iter()
                        .map(|t| t.table.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect();
        let selected: Vec<&DynamoTable> = config
            .tables
            .iter()
            .filter(|t| only.is_empty() || only.contains(&t.table))
            .collect();
        let described: Vec<_> = futures::stream::iter(selected.iter().map(|t| {
            client
                .describe_table()
                .table_name(&t.table)
                .send()
                .map_ok(|out| out.table)
        }))
        .buffered(DESCRIBE_CONCURRENCY)
        .collect()
        .await;
        let mut specs = Vec::new();
        let mut plans = Vec::new();
        for (table, described) in selected.into_iter().zip(described) {
            let description = match described {
                Ok(Some(d)) => d,
                Ok(None) => {
                    problems.push(format!("table {}: no description returned", table.table));
                    continue;
                }
                Err(e) => match describe_failure(&e) {
                    Some(reason) => {
                        problems.push(format!("table {} {reason}", table.table));
                        continue;
                    }
                    None => {
                        return Err(SourceError::Connect {
                            what: "DynamoDB".to_string(),
                            reason: aws::describe(&e),
                        });
                    }
                },
            };
            let mut key = description.key_schema().to_vec();
            key.sort_by_key(|k| *k.key_type() != KeyType::Hash);
            let spec = StreamSpec {
                name: table.table.clone(),
                key_properties: key.iter().map(|k| k.attribute_name().to_string()).collect(),
                replication_key: table.timestamp.clone(),
                ordered: false,
            };
            specs.push(spec.clone());
            plans.push(Arc::new(Plan {
                spec,
                table: table.table.clone(),
                timestamp: table.timestamp.clone(),
                item_count: description.item_count().and_then(|n| u64::try_from(n).ok()),
                segments: config.segments,
                page_size: config
                    .page_size
                    .map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
                lookback: config.lookback,
            }));
        }
        if !problems.is_empty() {
            return Err(SourceError::Mismatch(problems));
        }
        Ok(Self {
            client,
            specs,
            plans,
        })
    }
}

impl Source for DynamoSource {
    fn streams(&self) -> &[StreamSpec] {
        &self.specs
    }

    fn estimate(&self, stream: usize, since: Option<&Value>) -> BoxFuture<'_, Option<u64>> {
        // DynamoDB's count is refreshed about every six hours: fine for a
        // progress bar of a full scan, meaningless for a filtered one.
        let count = if since.is_none() {
            self.plans[stream].item_count
        } else {
            None
        };
        async move { count }.boxed()
    }

    fn read(&self, stream: usize, since: Option<Value>) -> Batches {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let plan = Arc::clone(&self.plans[stream]);
        let client = self.client.clone();
        tokio::spawn(async move {
            let result = match filter(&plan, since.as_ref()) {
                Ok(filter) => scan(&client, &plan, filter.as_ref(), &tx).await,
                Err(reason) => Err(SourceError::Read {
                    stream: plan.table.clone(),
                    reason,
                }),
            };
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }
}

/// The Scan filter of an incremental read.
#[derive(Debug, Clone, PartialEq)]
struct Filter {
    attribute: String,
    /// ISO 8601 UTC, to the second, without a zone designator.
    from: String,
}

impl Filter {
    /// Items modified at or after `from`, plus every item whose timestamp is
    /// missing or not a string: the filter compares text, and an item it
    /// cannot compare is re-read rather than missed (the guard makes the
    /// re-read a no-op).
    const EXPRESSION: &str = "#ts >= :from OR NOT attribute_type(#ts, :string)";
}

/// Timestamps in these tables are ISO 8601 UTC strings, compared by DynamoDB as
/// text. Cut to whole seconds without a zone, the bound sorts before every
/// rendering of an instant in its second (`…:05Z`, `…:05.5Z`, `…:05+00:00`),
/// so nothing at or after it is filtered out, whatever the fraction digits.
fn filter(plan: &Plan, since: Option<&Value>) -> Result<Option<Filter>, String> {
    let (Some(attribute), Some(since)) = (&plan.timestamp, since) else {
        return Ok(None);
    };
    let instant = since
        .as_str()
        .and_then(parse_bookmark)
        .ok_or_else(|| format!("the stored bookmark {since} is not a timestamp"))?;
    let lookback = chrono::Duration::from_std(plan.lookback).unwrap_or(chrono::Duration::zero());
    let from = instant - lookback;
    Ok(Some(Filter {
        attribute: attribute.clone(),
        from: from.format("%Y-%m-%dT%H:%M:%S").to_string(),
    }))
}

/// A bookmark as lfx-sync writes it (RFC 3339), or as an operator may set it.
fn parse_bookmark(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

async fn scan(
    client: &Client,
    plan: &Plan,
    filter: Option<&Filter>,
    tx: &mpsc::Sender<Result<Batch, SourceError>>,
) -> Result<(), SourceError> {
    tracing::debug!(table = %plan.table, segments = plan.segments, filter = ?filter, "scanning");
    // The first failing segment ends the read; dropping the others cancels them.
    futures::future::try_join_all(
        (0..plan.segments).map(|segment| scan_segment(client, plan, filter, segment, tx)),
    )
    .await
    .map(|_| ())
}

async fn scan_segment(
    client: &Client,
    plan: &Plan,
    filter: Option<&Filter>,
    segment: u32,
    tx: &mpsc::Sender<Result<Batch, SourceError>>,
) -> Result<(), SourceError> {
    let fail = |reason: String| SourceError::Read {
        stream: plan.table.clone(),
        reason,
    };
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    loop {
        let page = with_backoff(
            || {
                let mut request = client
                    .scan()
                    .table_name(&plan.table)
                    .set_exclusive_start_key(start.clone())
                    .set_limit(plan.page_size);
                if plan.segments > 1 {
                    request = request
                        .segment(segment as i32)
                        .total_segments(plan.segments as i32);
                }
                if let Some(f) = filter {
                    request = request
                        .filter_expression(Filter::EXPRESSION)
                        .expression_attribute_names("#ts", &f.attribute)
                        .expression_attribute_values(":from", AttributeValue::S(f.from.clone()))
                        .expression_attribute_values(":string", AttributeValue::S("S".into()));
                }
                request.send()
            },
            is_throttling,
            &Backoff::THROTTLED,
            &format!("table {} segment {segment}", plan.table),
        )
        .await
        .map_err(|e| {
            fail(format!(
                "Scan of segment {segment} failed: {}",
                aws::describe(&e)
            ))
        })?;
        let extracted_at = Value::String(Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true));
        let mut batch = Vec::with_capacity(page.items().len());
        for item in page.items.unwrap_or_default() {
            let mut record = value::item(item).map_err(fail)?;
            record.insert("_sdc_extracted_at".to_string(), extracted_at.clone());
            batch.push(SourceRecord::from_fields(&plan.spec, record));
        }
        if !batch.is_empty() && tx.send(Ok(batch)).await.is_err() {
            // The reader was dropped: the run is stopping.
            return Ok(());
        }
        start = page.last_evaluated_key.filter(|k| !k.is_empty());
        if start.is_none() {
            return Ok(());
        }
    }
}

/// Throttling that outlasted the SDK's own retries: the table's capacity is
/// used up for now, so wait longer and try the same page again.
fn is_throttling(e: &SdkError<ScanError>) -> bool {
    match e.as_service_error() {
        Some(
            ScanError::ProvisionedThroughputExceededException(_)
            | ScanError::RequestLimitExceeded(_)
            | ScanError::ThrottlingException(_),
        ) => true,
        Some(other) => other.code() == Some("ThrottlingException"),
        None => false,
    }
}

/// Exponential backoff with full jitter.
struct Backoff {
    first: Duration,
    max: Duration,
    retries: u32,
}

impl Backoff {
    /// About five minutes of waiting at most, on top of the SDK's retries.
    const THROTTLED: Backoff = Backoff {
        first: Duration::from_millis(500),
        max: Duration::from_secs(30),
        retries: 15,
    };

    fn delay(&self, retry: u32) -> Duration {
        let ceiling = self
            .first
            .saturating_mul(1u32 << retry.min(16))
            .min(self.max);
        // Jitter spreads out the segments that were throttled together.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        ceiling.mul_f64(0.5 + f64::from(nanos % 1000) / 2000.0)
    }
}

async fn with_backoff<T, E, F, Fut>(
    mut attempt: F,
    retryable: impl Fn(&E) -> bool,
    backoff: &Backoff,
    what: &str,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut retry = 0;
    loop {
        match attempt().await {
            Err(e) if retryable(&e) && retry < backoff.retries => {
                let delay = backoff.delay(retry);
                tracing::warn!(
                    what,
                    retry = retry + 1,
                    delay_ms = delay.as_millis() as u64,
                    "throttled; backing off"
                );
                tokio::time::sleep(delay).await;
                retry += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn plan(timestamp: Option<&str>) -> Plan {
        Plan {
            spec: StreamSpec {
                name: "itx-poll".into(),
                key_properties: vec!["id".into()],
                replication_key: timestamp.map(str::to_string),
                ordered: false,
            },
            table: "itx-poll".into(),
            timestamp: timestamp.map(str::to_string),
            item_count: None,
            segments: 1,
            page_size: None,
            lookback: Duration::from_secs(300),
        }
    }

    #[test]
    fn filter_starts_a_lookback_before_the_bookmark_to_the_second() {
        let f = filter(
            &plan(Some("last_modified_time")),
            Some(&json!("2024-06-01T00:04:59.999999+00:00")),
        )
        .unwrap()
        .unwrap();
        assert_eq!(f.attribute, "last_modified_time");
        assert_eq!(f.from, "2024-05-31T23:59:59");
        // Every rendering of an instant at or after the bound passes a text comparison.
        for later in [
            "2024-05-31T23:59:59Z",
            "2024-05-31T23:59:59.1Z",
            "2024-05-31T23:59:59+00:00",
        ] {
            assert!(later >= f.from.as_str(), "{later}");
        }
        let offset = filter(&plan(Some("ts")), Some(&json!("2024-06-01T07:00:00+02:00")))
            .unwrap()
            .unwrap();
        assert_eq!(offset.from, "2024-06-01T04:55:00");
        let naive = filter(&plan(Some("ts")), Some(&json!("2024-06-01")))
            .unwrap()
            .unwrap();
        assert_eq!(naive.from, "2024-05-31T23:55:00");
    }

    #[test]
    fn no_filter_without_bookmark_or_timestamp_and_a_clear_error_for_junk() {
        assert_eq!(filter(&plan(Some("ts")), None), Ok(None));
        assert_eq!(filter(&plan(None), Some(&json!("2024-06-01"))), Ok(None));
        let err = filter(&plan(Some("ts")), Some(&json!("yesterday"))).unwrap_err();
        assert!(err.contains("\"yesterday\" is not a timestamp"), "{err}");
        assert!(filter(&plan(Some("ts")), Some(&json!(17))).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn backs_off_while_throttled_then_gives_up() {
        let calls = AtomicU32::new(0);
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(1),
            retries: 3,
        };
        let started = tokio::time::Instant::now();
        let result: Result<(), &str> = with_backoff(
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err("throttled") }
            },
            |e| *e == "throttled",
            &backoff,
            "test",
        )
        .await;
        assert_eq!(result, Err("throttled"));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // 100 + 200 + 400 ms, each jittered down to at most half.
        assert!(started.elapsed() >= Duration::from_millis(350));

        calls.store(0, Ordering::SeqCst);
        let result: Result<u32, &str> = with_backoff(
            || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move { if n < 2 { Err("throttled") } else { Ok(n) } }
            },
            |e| *e == "throttled",
            &backoff,
            "test",
        )
        .await;
        assert_eq!(result, Ok(2));

        calls.store(0, Ordering::SeqCst);
        let result: Result<(), &str> = with_backoff(
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err("access denied") }
            },
            |e| *e == "throttled",
            &backoff,
            "test",
        )
        .await;
        assert_eq!(result, Err("access denied"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
