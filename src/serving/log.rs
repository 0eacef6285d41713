//! The prediction log: predictions made with an `entity_id` are written to `prediction_log`
//! (features, prediction, version) so that a later label for the entity can train without
//! repeating the features (delayed labels).
//!
//! The request path only hands a record to a bounded channel (`try_send`, never waits); one
//! background writer drains it in batches, one `INSERT ... SELECT FROM unnest(...)` per batch.
//! When the buffer is full the prediction is still answered and the loss is counted
//! (`olps_prediction_log_dropped_total{reason="queue_full"}`). [`PredictionLog::close`] stops
//! intake and waits until everything buffered is written (graceful shutdown).

use std::sync::Mutex;
use std::time::Duration;

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
}

/// Attempts per batch before its rows are counted as lost (`write_failed`).
const WRITE_ATTEMPTS: u32 = 3;

/// The sending side, shared by request handlers.
pub struct PredictionLog {
    tx: mpsc::Sender<LogRecord>,
    writer: Mutex<Option<(tokio_util::sync::CancellationToken, JoinHandle<()>)>>,
}

impl PredictionLog {
    /// Starts the writer: at most `capacity` records wait in memory; each INSERT writes at most
    /// `batch` rows.
    pub fn start(pool: PgPool, capacity: usize, batch: usize) -> PredictionLog {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stop = tokio_util::sync::CancellationToken::new();
        let handle = tokio::spawn(writer(pool, rx, batch.max(1), stop.clone()));
        PredictionLog {
            tx,
            writer: Mutex::new(Some((stop, handle))),
        }
    }

    /// Queues a record without waiting. Returns false (and counts the loss) when the buffer is
    /// full or the log is closed.
    pub fn offer(&self, record: LogRecord) -> bool {
        let m = metrics::global();
        match self.tx.try_send(record) {
            Ok(()) => {
                m.log_pending.set(self.pending() as i64);
                true
            }
            Err(_) => {
                m.log_dropped.with_label_values(&["queue_full"]).inc();
                false
            }
        }
    }

    /// Records waiting to be written.
    pub fn pending(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Stops intake and waits until every buffered record is written (or given up on). Safe to
    /// call more than once; later calls return at once.
    pub async fn close(&self) {
        let writer = self.writer.lock().expect("log lock").take();
        if let Some((stop, handle)) = writer {
            stop.cancel();
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "prediction log writer failed");
            }
        }
    }
}

async fn writer(
    pool: PgPool,
    mut rx: mpsc::Receiver<LogRecord>,
    batch: usize,
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
        metrics::global().log_pending.set(rx.len() as i64);
        write_with_retry(&pool, &buffer, closing).await;
        buffer.clear();
    }
    metrics::global().log_pending.set(0);
    tracing::debug!("prediction log writer stopped");
}

async fn write_with_retry(pool: &PgPool, records: &[LogRecord], closing: bool) {
    let m = metrics::global();
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=WRITE_ATTEMPTS {
        match write_batch(pool, records).await {
            Ok(()) => {
                m.log_written.inc_by(records.len() as u64);
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

/// Writes records with one statement.
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
    for r in records {
        model.push(r.model_id);
        entity.push(r.entity_id.as_str());
        features.push(features_json(&r.features));
        prediction.push(r.prediction);
        version.push(r.version);
    }
    sqlx::query(
        "INSERT INTO prediction_log (model_id, entity_id, features, prediction, model_version)
         SELECT u.model_id, u.entity_id, u.features::jsonb, u.prediction, u.model_version
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::float8[], $5::int8[]) WITH ORDINALITY
              AS u(model_id, entity_id, features, prediction, model_version, ord)
         ORDER BY u.ord",
    )
    .bind(&model)
    .bind(&entity)
    .bind(&features)
    .bind(&prediction)
    .bind(&version)
    .execute(db)
    .await?;
    Ok(())
}
