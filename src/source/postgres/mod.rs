//! The PostgreSQL source: streams discovered from the catalog and read through
//! a server-side cursor, so memory stays bounded whatever the table size.

pub mod render;

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;
// Dynamic SQL here is built from catalog names, always quoted, and binds
// every value: nothing from configuration reaches it as text.
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use tokio::sync::mpsc;

use self::render::Kind;
use super::{Batch, Batches, Source, SourceError, SourceRecord, StreamSpec};
use crate::config::{PgStream, PostgresConfig};
use crate::kv::Body;
use crate::kv::timestamp;

/// Rows fetched per round trip from the cursor.
const FETCH_ROWS: usize = 1_000;
/// Batches read ahead of the writer.
const READ_AHEAD: usize = 2;

pub struct PostgresSource {
    url: String,
    specs: Vec<StreamSpec>,
    plans: Vec<Plan>,
}

/// How to read one stream, resolved against the catalog.
#[derive(Debug, Clone)]
struct Plan {
    stream: String,
    table: String,
    columns: Vec<(String, Kind)>,
    /// Positions in `columns` of the key properties, in key order.
    key_columns: Vec<usize>,
    /// Position in `columns` of the replication key.
    replication_column: Option<usize>,
    select_list: String,
    /// The replication key column, quoted, and its SQL type.
    replication_key: Option<(String, String)>,
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn connect(url: &str) -> Result<PgConnection, SourceError> {
    let fail = |reason: String| SourceError::Connect {
        what: "PostgreSQL".to_string(),
        reason,
    };
    let mut conn = tokio::time::timeout(Duration::from_secs(15), PgConnection::connect(url))
        .await
        .map_err(|_| fail("no answer within 15 s".to_string()))?
        .map_err(|e| fail(e.to_string()))?;
    // Values are rendered from their text form: pin the settings it depends on.
    sqlx::raw_sql(
        "SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
         SET extra_float_digits = 1; SET application_name = 'lfx-sync'",
    )
    .execute(&mut conn)
    .await
    .map_err(|e| fail(e.to_string()))?;
    Ok(conn)
}

impl PostgresSource {
    /// Connects and checks every configured stream against the catalog,
    /// reporting every mismatch together.
    pub async fn open(config: &PostgresConfig, only: &[String]) -> Result<Self, SourceError> {
        let mut conn = connect(&config.url).await?;
        let mut problems = Vec::new();
        let mut specs = Vec::new();
        let mut plans = Vec::new();
        let selected: Vec<&PgStream> = config
            .streams
            .iter()
            .filter(|s| only.is_empty() || only.contains(&s.name))
            .collect();
        for name in only {
            if !config.streams.iter().any(|s| &s.name == name) {
                problems.push(format!(
                    "--stream {name}: not in the configuration (configured: {})",
                    config
                        .streams
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        for stream in selected {
            match discover(&mut conn, stream).await {
                Ok(Ok((spec, plan))) => {
                    specs.push(spec);
                    plans.push(plan);
                }
                Ok(Err(mut found)) => problems.append(&mut found),
                Err(e) => {
                    return Err(SourceError::Read {
                        stream: stream.name.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        let _ = conn.close().await;
        if !problems.is_empty() {
            return Err(SourceError::Mismatch(problems));
        }
        Ok(Self {
            url: config.url.clone(),
            specs,
            plans,
        })
    }
}

/// Resolves one stream; `Ok(Err(..))` lists configuration mismatches.
async fn discover(
    conn: &mut PgConnection,
    stream: &PgStream,
) -> Result<Result<(StreamSpec, Plan), Vec<String>>, sqlx::Error> {
    let table = format!(
        "{}.{}",
        quote_ident(&stream.schema),
        quote_ident(&stream.table)
    );
    let at = format!("stream {}", stream.name);
    let rows = sqlx::query(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                coalesce(et.typname, t.typname)::text, (t.typcategory = 'A') \
           FROM pg_attribute a \
           JOIN pg_class c ON c.oid = a.attrelid \
           JOIN pg_namespace n ON n.oid = c.relnamespace \
           JOIN pg_type t ON t.oid = a.atttypid \
           LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A' \
          WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
            AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
          ORDER BY a.attnum",
    )
    .bind(&stream.schema)
    .bind(&stream.table)
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(Err(vec![format!(
            "{at}: table {table} does not exist (or has no columns this user can see)"
        )]));
    }
    let mut all = Vec::with_capacity(rows.len());
    for row in &rows {
        let name: String = row.try_get(0)?;
        let sql_type: String = row.try_get(1)?;
        let type_name: String = row.try_get(2)?;
        let is_array: bool = row.try_get(3)?;
        all.push((name, sql_type, Kind::of(&type_name, is_array), is_array));
    }
    let mut problems = Vec::new();
    let has = |c: &str| all.iter().any(|(n, ..)| n == c);
    if let Some(cols) = &stream.columns {
        for c in cols.iter().filter(|c| !has(c)) {
            problems.push(format!(
                "{at}: column {c:?} (in columns) does not exist in {table}"
            ));
        }
    }
    if let Some(rk) = &stream.replication_key
        && !has(rk)
    {
        problems.push(format!(
            "{at}: replication key column {rk:?} does not exist in {table}"
        ));
    }
    let key = match &stream.key {
        Some(key) => {
            for c in key.iter().filter(|c| !has(c)) {
                problems.push(format!("{at}: key column {c:?} does not exist in {table}"));
            }
            key.clone()
        }
        None => {
            let pk: Vec<String> = sqlx::query_scalar(
                "SELECT a.attname::text \
                   FROM pg_index i \
                   JOIN pg_class c ON c.oid = i.indrelid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                   CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                   JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum \
                  WHERE i.indisprimary AND n.nspname = $1 AND c.relname = $2 \
                  ORDER BY k.ord",
            )
            .bind(&stream.schema)
            .bind(&stream.table)
            .fetch_all(&mut *conn)
            .await?;
            if pk.is_empty() {
                problems.push(format!("{at}: {table} has no primary key; configure `key`"));
            }
            pk
        }
    };
    if !problems.is_empty() {
        return Ok(Err(problems));
    }
    let columns: Vec<_> = all
        .iter()
        .filter(|(n, ..)| stream.columns.as_ref().is_none_or(|cols| cols.contains(n)))
        .collect();
    let select_list = columns
        .iter()
        .map(|(n, _, kind, is_array)| kind.select_expr(&quote_ident(n), *is_array))
        .collect::<Vec<_>>()
        .join(", ");
    let replication_key = stream.replication_key.as_ref().and_then(|rk| {
        all.iter()
            .find(|(n, ..)| n == rk)
            .map(|(n, sql_type, ..)| (quote_ident(n), sql_type.clone()))
    });
    Ok(Ok((
        StreamSpec {
            name: stream.name.clone(),
            key_properties: key.clone(),
            replication_key: stream.replication_key.clone(),
            ordered: true,
        },
        Plan {
            stream: stream.name.clone(),
            table,
            key_columns: key
                .iter()
                .filter_map(|k| columns.iter().position(|(n, ..)| n == k))
                .collect(),
            replication_column: stream
                .replication_key
                .as_ref()
                .and_then(|rk| columns.iter().position(|(n, ..)| n == rk)),
            columns: columns.iter().map(|(n, _, k, _)| (n.clone(), *k)).collect(),
            select_list,
            replication_key,
        },
    )))
}

impl Plan {
    /// The query the cursor runs; `$1` is the bookmark when there is one.
    fn query(&self, since: bool) -> String {
        let mut sql = format!("SELECT {} FROM {}", self.select_list, self.table);
        if let Some((rk, sql_type)) = &self.replication_key {
            if since {
                sql.push_str(&format!(" WHERE {rk} >= CAST($1 AS {sql_type})"));
            }
            // NULL replication keys first, as tap-postgres reads them: they
            // never move the bookmark, so they are done before it advances.
            sql.push_str(&format!(" ORDER BY {rk} ASC NULLS FIRST"));
        }
        sql
    }
}

fn bookmark_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn read_stream(
    url: &str,
    plan: &Plan,
    since: Option<Value>,
    tx: &mpsc::Sender<Result<Batch, SourceError>>,
) -> Result<(), SourceError> {
    let fail = |e: sqlx::Error| SourceError::Read {
        stream: plan.stream.clone(),
        reason: e.to_string(),
    };
    let mut conn = connect(url).await?;
    let mut tx_db = conn.begin().await.map_err(fail)?;
    let declare = format!(
        "DECLARE lfx_sync_read NO SCROLL CURSOR FOR {}",
        plan.query(since.is_some() && plan.replication_key.is_some())
    );
    let mut query = sqlx::query(AssertSqlSafe(declare));
    if let (Some(value), Some(_)) = (&since, &plan.replication_key) {
        query = query.bind(bookmark_text(value));
    }
    query.execute(&mut *tx_db).await.map_err(fail)?;
    // `,"column":` for every column, escaped once per stream, not per row.
    let prefixes: Vec<Vec<u8>> = plan
        .columns
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let mut p = Vec::with_capacity(name.len() + 4);
            p.push(if i == 0 { b'{' } else { b',' });
            render::write_str(name, &mut p);
            p.push(b':');
            p
        })
        .collect();
    let mut size_hint = 256;
    let fetch = format!("FETCH FORWARD {FETCH_ROWS} FROM lfx_sync_read");
    loop {
        let rows = sqlx::query(AssertSqlSafe(fetch.as_str()))
            .fetch_all(&mut *tx_db)
            .await
            .map_err(fail)?;
        if rows.is_empty() {
            break;
        }
        let mut extracted_at = Vec::with_capacity(48);
        extracted_at.extend_from_slice(b",\"_sdc_extracted_at\":");
        render::write_str(
            &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            &mut extracted_at,
        );
        extracted_at.push(b'}');
        let mut batch = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut json = Vec::with_capacity(size_hint);
            let mut key = vec![None; plan.key_columns.len()];
            let mut replication_value = plan.replication_column.map(|_| Value::Null);
            for (i, (name, kind)) in plan.columns.iter().enumerate() {
                json.extend_from_slice(&prefixes[i]);
                // Every column is selected as text: no per-value type check needed.
                let text: Option<&str> = row.try_get_unchecked(i).map_err(fail)?;
                let Some(text) = text else {
                    json.extend_from_slice(b"null");
                    continue;
                };
                let bad = |reason: String| SourceError::Read {
                    stream: plan.stream.clone(),
                    reason: format!("column {name}: {reason}"),
                };
                render::write_json(*kind, text, &mut json).map_err(bad)?;
                for (k, column) in plan.key_columns.iter().enumerate() {
                    if *column == i {
                        key[k] = Some(render::key_text(*kind, text));
                    }
                }
                if plan.replication_column == Some(i) {
                    replication_value = Some(render::render(*kind, text).map_err(bad)?);
                }
            }
            json.extend_from_slice(&extracted_at);
            size_hint = size_hint.max(json.len() + 64);
            let timestamp = timestamp::from_json(replication_value.as_ref());
            batch.push(SourceRecord {
                key,
                replication_value,
                timestamp,
                body: Body::Json(json),
            });
        }
        if tx.send(Ok(batch)).await.is_err() {
            // The reader was dropped: the run is stopping.
            return Ok(());
        }
    }
    let _ = tx_db.rollback().await;
    Ok(())
}

impl Source for PostgresSource {
    fn streams(&self) -> &[StreamSpec] {
        &self.specs
    }

    fn estimate(&self, stream: usize, since: Option<&Value>) -> BoxFuture<'_, Option<u64>> {
        let plan = self.plans[stream].clone();
        let since = since.map(bookmark_text);
        async move {
            let mut conn = connect(&self.url).await.ok()?;
            let with_since = since.is_some() && plan.replication_key.is_some();
            // The planner's estimate: free, and close enough for a progress bar.
            // Text format: its first line is the top node, `... rows=N width=...`.
            let sql = format!("EXPLAIN {}", plan.query(with_since));
            let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql));
            if with_since {
                query = query.bind(since.clone()?);
            }
            let top = query.fetch_optional(&mut conn).await.ok()??;
            let _ = conn.close().await;
            let rows = top.split(" rows=").nth(1)?;
            rows[..rows.find(' ')?].parse().ok()
        }
        .boxed()
    }

    fn read(&self, stream: usize, since: Option<Value>) -> Batches {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let plan = self.plans[stream].clone();
        let url = self.url.clone();
        tokio::spawn(async move {
            if let Err(e) = read_stream(&url, &plan, since, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }
}
