//! The prediction log: predictions made with an `entity_id` are written to `prediction_log`
//! (features, prediction, version, prediction id, time) so that a later label for the entity, or
//! for the prediction by its id, can train without repeating the features (delayed labels).
//!
//! The request path only hands a record to a bounded channel (`try_send`, never waits). Several
//! background writers (default 2, [`LogConfig::writers`]) drain them, each its own channel and
//! its own connection, in batches: an entity's records always go to the same writer (by a hash
//! of model and entity), so each entity's predictions are written in the order they were made,
//! while different entities are written in parallel. A batch is one binary `COPY` (the default,
//! [`LogMethod::Copy`]) or one `INSERT ... SELECT FROM unnest(...)` ([`LogMethod::Insert`], the
//! path before COPY, kept as the benchmark's baseline). When a writer's buffer is full the
//! prediction is still answered and the loss is counted
//! (`olps_prediction_log_dropped_total{reason="queue_full"}`). [`PredictionLog::close`] stops
//! intake and waits until everything buffered is written (graceful shutdown).

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::metrics;

/// One prediction to log.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub model_id: Uuid,
    pub entity_id: String,
    pub features: Vec<(String, f64)>,
    pub prediction: f64,
    pub version: i64,
    /// The id returned with the prediction; a label may name it (`prediction_id`).
    pub prediction_id: Uuid,
    /// When the prediction was made (stored as `logged_at`): the label delay is measured from it.
    pub predicted_at: DateTime<Utc>,
}

/// How a writer stores a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMethod {
    /// One binary `COPY ... FROM STDIN` per batch: no statement to parse or plan and no text to
    /// convert on the server (2.5–3× the rows/s of `Insert`, docs/BENCHMARKS.md "predict").
    Copy,
    /// One `INSERT ... SELECT FROM unnest(...)` per batch (the path before COPY).
    Insert,
}

/// The prediction log's sizes and method.
#[derive(Debug, Clone, Copy)]
pub struct LogConfig {
    /// Records that may wait in memory, over all writers (each writer gets an equal share),
    /// before new ones are dropped (and counted).
    pub capacity: usize,
    /// Rows per batch (one COPY or INSERT).
    pub batch: usize,
    /// Writer tasks, each with its own connection at a time.
    pub writers: usize,
    pub method: LogMethod,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            capacity: 100_000,
            batch: 2_000,
            writers: 2,
            method: LogMethod::Copy,
        }
    }
}

/// Attempts per batch before its rows are counted as lost (`write_failed`).
const WRITE_ATTEMPTS: u32 = 3;

/// What became of the records offered to one [`PredictionLog`] (the process-wide metrics add up
/// every log of the process).
#[derive(Debug, Default)]
pub struct LogCounts {
    pub written: AtomicU64,
    /// Refused at once: the entity's writer's buffer was full, or the log closed.
    pub dropped_queue_full: AtomicU64,
    /// Given up on after [`WRITE_ATTEMPTS`] failed writes of their batch.
    pub dropped_write_failed: AtomicU64,
}

impl LogCounts {
    /// (written, dropped because the buffer was full, dropped because writing failed).
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.dropped_queue_full.load(Ordering::Relaxed),
            self.dropped_write_failed.load(Ordering::Relaxed),
        )
    }
}

/// The sending side, shared by request handlers.
pub struct PredictionLog {
    /// One channel per writer; a record goes to `writers[route(record)]`.
    writers: Vec<mpsc::Sender<LogRecord>>,
    counts: Arc<LogCounts>,
    running: Mutex<Option<(tokio_util::sync::CancellationToken, Vec<JoinHandle<()>>)>>,
}

impl PredictionLog {
    /// Starts the writers.
    pub fn start(pool: PgPool, config: LogConfig) -> PredictionLog {
        let n = config.writers.max(1);
        let per_writer = config.capacity.div_ceil(n).max(1);
        let stop = tokio_util::sync::CancellationToken::new();
        let counts = Arc::new(LogCounts::default());
        let mut senders = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::channel(per_writer);
            senders.push(tx);
            handles.push(tokio::spawn(writer(
                pool.clone(),
                rx,
                config.batch.max(1),
                config.method,
                counts.clone(),
                stop.clone(),
            )));
        }
        PredictionLog {
            writers: senders,
            counts,
            running: Mutex::new(Some((stop, handles))),
        }
    }

    /// The writer of the record's entity: the same for every record of a (model, entity), so
    /// they are written in the order they were offered.
    fn route(&self, record: &LogRecord) -> usize {
        // `DefaultHasher::new()` hashes alike every time within a process, so an entity keeps
        // its writer for the log's life.
        let mut h = std::hash::DefaultHasher::new();
        record.model_id.hash(&mut h);
        record.entity_id.hash(&mut h);
        (h.finish() % self.writers.len() as u64) as usize
    }

    /// Queues a record without waiting. Returns false (and counts the loss) when its writer's
    /// buffer is full or the log is closed.
    pub fn offer(&self, record: LogRecord) -> bool {
        let m = metrics::global();
        match self.writers[self.route(&record)].try_send(record) {
            Ok(()) => {
                m.log_pending.inc();
                true
            }
            Err(_) => {
                m.log_dropped.with_label_values(&["queue_full"]).inc();
                self.counts
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// What became of this log's records so far.
    pub fn counts(&self) -> &LogCounts {
        &self.counts
    }

    /// Records waiting to be written.
    pub fn pending(&self) -> usize {
        self.writers
            .iter()
            .map(|tx| tx.max_capacity() - tx.capacity())
            .sum()
    }

    /// Stops intake and waits until every buffered record is written (or given up on). Safe to
    /// call more than once; later calls return at once.
    pub async fn close(&self) {
        let running = self.running.lock().expect("log lock").take();
        if let Some((stop, handles)) = running {
            stop.cancel();
            for handle in handles {
                if let Err(e) = handle.await {
                    tracing::error!(error = %e, "prediction log writer failed");
                }
            }
        }
    }
}

async fn writer(
    pool: PgPool,
    mut rx: mpsc::Receiver<LogRecord>,
    batch: usize,
    method: LogMethod,
    counts: Arc<LogCounts>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut buffer = Vec::with_capacity(batch);
    let mut closing = false;
    loop {
        let n = if closing {
            rx.recv_many(&mut buffer, batch).await
        } else {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut buffer, batch) => n,
                _ = stop.cancelled() => {
                    // No new records from here on; drain what is buffered.
                    rx.close();
                    closing = true;
                    continue;
                }
            }
        };
        if n == 0 {
            break;
        }
        // The gauge is process-wide (every writer of every log adds and takes away).
        metrics::global().log_pending.sub(n as i64);
        write_with_retry(&pool, &buffer, method, &counts, closing).await;
        buffer.clear();
    }
    tracing::debug!("prediction log writer stopped");
}

async fn write_with_retry(
    pool: &PgPool,
    records: &[LogRecord],
    method: LogMethod,
    counts: &LogCounts,
    closing: bool,
) {
    let m = metrics::global();
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=WRITE_ATTEMPTS {
        let written = match method {
            LogMethod::Copy => copy_batch(pool, records).await,
            LogMethod::Insert => write_batch(pool, records).await,
        };
        match written {
            Ok(()) => {
                m.log_written.inc_by(records.len() as u64);
                counts
                    .written
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                return;
            }
            Err(e) if attempt < WRITE_ATTEMPTS => {
                tracing::warn!(error = %e, rows = records.len(), attempt, "prediction log write failed; retrying");
                tokio::time::sleep(if closing {
                    Duration::from_millis(10)
                } else {
                    delay
                })
                .await;
                delay *= 4;
            }
            Err(e) => {
                tracing::error!(error = %e, rows = records.len(), "prediction log write failed; rows lost");
                m.log_dropped
                    .with_label_values(&["write_failed"])
                    .inc_by(records.len() as u64);
                counts
                    .dropped_write_failed
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// The features as the JSON object the worker reads back (`name -> number`; the numbers
/// round-trip exactly).
fn features_json(features: &[(String, f64)]) -> String {
    let map: Map<String, Value> = features
        .iter()
        .map(|(name, x)| (name.clone(), Value::from(*x)))
        .collect();
    Value::Object(map).to_string()
}

/// The columns both methods write, in this order.
const COLUMNS: &str =
    "model_id, entity_id, features, prediction, model_version, prediction_id, logged_at";

/// Writes records with one binary COPY, on a connection of its own from the pool. A batch that
/// fails is not half written: COPY is one statement.
pub async fn copy_batch(pool: &PgPool, records: &[LogRecord]) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let data = copy_binary(records);
    let mut conn = pool.acquire().await?;
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY prediction_log ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    if let Err(e) = copy.send(data).await {
        // The connection is in an unknown state: do not give it back to the pool.
        drop(copy);
        conn.close_on_drop();
        return Err(e);
    }
    copy.finish().await?;
    Ok(())
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01), the origin of a binary
/// `timestamptz`.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The records in PostgreSQL's binary COPY format, columns as [`COLUMNS`].
fn copy_binary(records: &[LogRecord]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::with_capacity(19 + records.len() * 256);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for r in records {
        out.extend_from_slice(&7i16.to_be_bytes());
        field(&mut out, r.model_id.as_bytes());
        field(&mut out, r.entity_id.as_bytes());
        // jsonb's binary form is a version byte (1) and the JSON text, parsed by the server
        // exactly as `text::jsonb` parses it.
        let mut jsonb = vec![1u8];
        jsonb.extend_from_slice(features_json(&r.features).as_bytes());
        field(&mut out, &jsonb);
        field(&mut out, &r.prediction.to_bits().to_be_bytes());
        field(&mut out, &r.version.to_be_bytes());
        field(&mut out, r.prediction_id.as_bytes());
        let micros = r.predicted_at.timestamp_micros() - PG_EPOCH_MICROS;
        field(&mut out, &micros.to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes()); // trailer
    out
}

/// Writes records with one `INSERT ... SELECT FROM unnest(...)` statement (the path before
/// [`copy_batch`]; also usable inside a caller's transaction).
pub async fn write_batch(
    db: impl sqlx::PgExecutor<'_>,
    records: &[LogRecord],
) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let n = records.len();
    let mut model = Vec::with_capacity(n);
    let mut entity = Vec::with_capacity(n);
    let mut features = Vec::with_capacity(n);
    let mut prediction = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let mut prediction_id = Vec::with_capacity(n);
    let mut at = Vec::with_capacity(n);
    for r in records {
        model.push(r.model_id);
        entity.push(r.entity_id.as_str());
        features.push(features_json(&r.features));
        prediction.push(r.prediction);
        version.push(r.version);
        prediction_id.push(r.prediction_id);
        at.push(r.predicted_at);
    }
    sqlx::query(&format!(
        "INSERT INTO prediction_log ({COLUMNS})
         SELECT u.model_id, u.entity_id, u.features::jsonb, u.prediction, u.model_version,
                u.prediction_id, u.at
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::float8[], $5::int8[], $6::uuid[],
                     $7::timestamptz[]) WITH ORDINALITY
              AS u(model_id, entity_id, features, prediction, model_version, prediction_id, at,
                   ord)
         ORDER BY u.ord"
    ))
    .bind(&model)
    .bind(&entity)
    .bind(&features)
    .bind(&prediction)
    .bind(&version)
    .bind(&prediction_id)
    .bind(&at)
    .execute(db)
    .await?;
    Ok(())
}
