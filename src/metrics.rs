//! Prometheus metrics: one process-wide registry of counters and histograms updated by the HTTP
//! service, the model cache, the prediction log and the worker, plus gauges read from the
//! database at scrape time (queue depth, oldest pending age, dead letters, model versions,
//! prequential loss). `olps serve`/`olps up` expose them at `GET /metrics`; `olps worker
//! --metrics-listen ADDR` serves the same document on its own listener.
//!
//! Names (all prefixed `olps_`):
//! - `http_requests_total{method,route,status}`, `http_request_duration_seconds{method,route}`:
//!   per matched route template (`route="unmatched"` for requests no route matched); `method`
//!   is one of the standard methods (GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE,
//!   PATCH) or `other`, so a client cannot add label values at will.
//! - `predictions_total{model}`, `model_reloads_total{model,mode}`,
//!   `model_reload_duration_seconds{mode}`, `serving_model_version{model}` (the version the
//!   in-memory cache answers with), `serving_listener_reconnects_total`,
//!   `serving_version_checks_total`.
//! - `feedback_events_accepted_total{model}`, `feedback_requests_rejected_total{code}`.
//! - `prediction_log_written_total`, `prediction_log_dropped_total{reason}` (`queue_full`,
//!   `write_failed`), `prediction_log_pending` (rows waiting in the writers' buffers).
//! - worker: `worker_batches_total{model}`, `worker_events_applied_total{model}`,
//!   `worker_dead_letters_total{model}`, `worker_loss_sum_total{model}` (prequential loss
//!   summed; divide its rate by the rate of events for a windowed mean),
//!   `worker_batch_failures_total{model,cause}` (attempts at a batch that failed and were rolled
//!   back: `cause="database"` for an error the rows may cause, which makes the worker split the
//!   batch, `"transient"` for a lost connection, a serialization failure and the like, retried
//!   as they are), `worker_rows_set_aside_total{model}` (rows dead-lettered with the database's
//!   message after splitting found them), `worker_models_unreadable_total{model}` (times a
//!   model was set aside because its stored settings or state could not be read),
//!   `worker_maintenance_total{table,action}` (`action="analyze"`: the worker refreshed the
//!   planner statistics of a table that had grown; `"vacuum"`: it vacuumed the queue).
//! - at scrape time, from the database: `queue_depth{model}`,
//!   `queue_oldest_pending_age_seconds{model}`, `queue_dead_letters{model}`,
//!   `model_version{model}`, `model_prequential_loss{model}` (mean loss of the latest learned
//!   version).
//! - at scrape time, retention (`retention_stats`, written by every run in any process):
//!   `retention_rows_deleted{model,table}` (rows retention deleted from the table, since the
//!   model was created), `retention_last_run_timestamp_seconds{model}` (Unix time of the last
//!   run over the model).
//!
//! - delayed labels and pinned predictions: `label_delay_seconds{model}` (histogram of label
//!   time minus prediction time, for events trained on a logged prediction),
//!   `labels_waited_total{outcome}` (labels naming a prediction not logged yet: `woken` once it
//!   was logged, `expired` when dead-lettered at the wait deadline),
//!   `pinned_predictions_total{source}` (requests pinned to a version or snapshot, answered
//!   from `memory` or reconstructed from the `database`).
//! - alerting (issue 19): `drift_detections_total{model,detector,adaptation}` and
//!   `quarantines_total{model}` (by this process's worker); at scrape time
//!   `model_quarantined{model}` (1 while quarantined), `dead_letters{model,reason}` (dead
//!   letters by reason class: `unknown_model`, `no_features`, `prediction_id`,
//!   `database_refused`, `invalid`), `queue_depth_by_priority{model,priority}` and
//!   `queue_oldest_pending_age_by_priority_seconds{model,priority}`,
//!   `queue_waiting_labels{model}` (labels waiting for their prediction),
//!   `model_drift_events{model}` (drift events stored: every process's detections),
//!   `predictions_expired_unlabeled{model}` (logged predictions retention deleted that no label
//!   trained on, cumulative).
//!
//! The `model` label is the model's name (its UUID for queue rows of an unknown model).

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Latency buckets, in seconds: from 50 µs (an in-memory prediction) to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// The process-wide metrics. Obtain with [`global`].
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub predictions: IntCounterVec,
    pub model_reloads: IntCounterVec,
    pub model_reload_duration: HistogramVec,
    pub serving_version: IntGaugeVec,
    pub listener_reconnects: IntCounter,
    pub version_checks: IntCounter,
    pub feedback_accepted: IntCounterVec,
    pub feedback_rejected: IntCounterVec,
    pub log_written: IntCounter,
    pub log_dropped: IntCounterVec,
    pub log_pending: IntGauge,
    pub worker_batches: IntCounterVec,
    pub worker_events: IntCounterVec,
    pub worker_dead: IntCounterVec,
    pub worker_failures: IntCounterVec,
    pub worker_set_aside: IntCounterVec,
    pub worker_unreadable: IntCounterVec,
    pub worker_maintenance: IntCounterVec,
    pub worker_loss_sum: CounterVec,
    pub label_delay: HistogramVec,
    pub labels_waited: IntCounterVec,
    pub pinned_predictions: IntCounterVec,
    pub drift_detections: IntCounterVec,
    pub quarantines: IntCounterVec,
}

/// Label delay buckets, in seconds: from 100 ms to a week.
const LABEL_DELAY_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0, 86400.0, 259200.0,
    604800.0,
];

/// The reason classes of the `olps_dead_letters{reason}` gauge, from the reason's first words
/// (the worker writes them): a bounded label, unlike the reasons themselves.
const DEAD_REASON_CLASS: &str = "CASE
    WHEN dead_reason LIKE 'unknown model %' THEN 'unknown_model'
    WHEN dead_reason LIKE 'no features%' THEN 'no_features'
    WHEN dead_reason LIKE 'prediction\\_id:%' THEN 'prediction_id'
    WHEN dead_reason LIKE 'the database refused%' THEN 'database_refused'
    ELSE 'invalid' END";

/// Every class [`DEAD_REASON_CLASS`] gives (each model gets every series, 0 when none).
pub const DEAD_REASON_CLASSES: [&str; 5] = [
    "unknown_model",
    "no_features",
    "prediction_id",
    "database_refused",
    "invalid",
];

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}

impl Metrics {
    fn new() -> Metrics {
        let metrics = Metrics::register();
        // Series that should read 0 rather than be absent before the first event.
        for reason in ["queue_full", "write_failed"] {
            metrics.log_dropped.with_label_values(&[reason]);
        }
        for outcome in ["woken", "expired"] {
            metrics.labels_waited.with_label_values(&[outcome]);
        }
        for source in ["memory", "database"] {
            metrics.pinned_predictions.with_label_values(&[source]);
        }
        metrics
    }

    fn register() -> Metrics {
        let r = Registry::new();
        let serving_version = IntGaugeVec::new(
            Opts::new(
                "olps_serving_model_version",
                "Model version the service's in-memory cache answers predictions with",
            ),
            &["model"],
        )
        .expect("valid metric");
        r.register(Box::new(serving_version.clone()))
            .expect("unique metric");
        let log_pending = IntGauge::new(
            "olps_prediction_log_pending",
            "Logged predictions waiting in the writers' buffers",
        )
        .expect("valid metric");
        r.register(Box::new(log_pending.clone()))
            .expect("unique metric");
        let worker_loss_sum = CounterVec::new(
            Opts::new(
                "olps_worker_loss_sum_total",
                "Sum of the prequential loss of the events applied by this process's worker",
            ),
            &["model"],
        )
        .expect("valid metric");
        r.register(Box::new(worker_loss_sum.clone()))
            .expect("unique metric");
        Metrics {
            http_requests: counter_vec(
                &r,
                "olps_http_requests_total",
                "HTTP requests by method, matched route template and status",
                &["method", "route", "status"],
            ),
            http_duration: histogram_vec(
                &r,
                "olps_http_request_duration_seconds",
                "Server time per HTTP request (until the response head), by matched route",
                &["method", "route"],
            ),
            predictions: counter_vec(
                &r,
                "olps_predictions_total",
                "Predictions answered (a batch counts each instance)",
                &["model"],
            ),
            model_reloads: counter_vec(
                &r,
                "olps_model_reloads_total",
                "Model versions loaded into the serving cache, by mode (full or incremental)",
                &["model", "mode"],
            ),
            model_reload_duration: histogram_vec(
                &r,
                "olps_model_reload_duration_seconds",
                "Time to load a model version into the serving cache",
                &["mode"],
            ),
            serving_version,
            listener_reconnects: counter(
                &r,
                "olps_serving_listener_reconnects_total",
                "Times the serving cache's notification connection was re-established",
            ),
            version_checks: counter(
                &r,
                "olps_serving_version_checks_total",
                "Periodic version checks of the serving cache (the fallback for lost notifications)",
            ),
            feedback_accepted: counter_vec(
                &r,
                "olps_feedback_events_accepted_total",
                "Feedback events accepted over HTTP",
                &["model"],
            ),
            feedback_rejected: counter_vec(
                &r,
                "olps_feedback_requests_rejected_total",
                "Feedback requests rejected over HTTP, by error code",
                &["code"],
            ),
            log_written: counter(
                &r,
                "olps_prediction_log_written_total",
                "Predictions written to prediction_log",
            ),
            log_dropped: counter_vec(
                &r,
                "olps_prediction_log_dropped_total",
                "Predictions that could not be logged: queue_full (buffer full, the answer was \
                 still returned) or write_failed (the database refused the batch)",
                &["reason"],
            ),
            log_pending,
            worker_batches: counter_vec(
                &r,
                "olps_worker_batches_total",
                "Model batches applied (each one new version) by this process's worker",
                &["model"],
            ),
            worker_events: counter_vec(
                &r,
                "olps_worker_events_applied_total",
                "Feedback events applied by this process's worker",
                &["model"],
            ),
            worker_dead: counter_vec(
                &r,
                "olps_worker_dead_letters_total",
                "Feedback events dead-lettered by this process's worker",
                &["model"],
            ),
            worker_failures: counter_vec(
                &r,
                "olps_worker_batch_failures_total",
                "Attempts at a model batch that failed and were rolled back (cause: database, \
                 transient)",
                &["model", "cause"],
            ),
            worker_set_aside: counter_vec(
                &r,
                "olps_worker_rows_set_aside_total",
                "Rows dead-lettered with the database's message after splitting a failing batch \
                 found them",
                &["model"],
            ),
            worker_unreadable: counter_vec(
                &r,
                "olps_worker_models_unreadable_total",
                "Times the worker set a model aside because its stored settings or state could \
                 not be read",
                &["model"],
            ),
            worker_maintenance: counter_vec(
                &r,
                "olps_worker_maintenance_total",
                "ANALYZEs (of a table that had grown past its bound) and VACUUMs (of the queue) \
                 the worker ran",
                &["table", "action"],
            ),
            worker_loss_sum,
            label_delay: {
                let opts = HistogramOpts::new(
                    "olps_label_delay_seconds",
                    "Label time minus prediction time of the events the worker trained on a \
                     logged prediction",
                )
                .buckets(LABEL_DELAY_BUCKETS.to_vec());
                let h = HistogramVec::new(opts, &["model"]).expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            labels_waited: counter_vec(
                &r,
                "olps_labels_waited_total",
                "Labels naming a prediction that was not logged yet: woken once it was logged, \
                 expired (dead-lettered) at the label wait deadline",
                &["outcome"],
            ),
            pinned_predictions: counter_vec(
                &r,
                "olps_pinned_predictions_total",
                "Prediction requests pinned to a version or snapshot, by where the version came \
                 from (memory or database)",
                &["source"],
            ),
            drift_detections: counter_vec(
                &r,
                "olps_drift_detections_total",
                "Concept drifts this process's worker detected, by detector and adaptation",
                &["model", "detector", "adaptation"],
            ),
            quarantines: counter_vec(
                &r,
                "olps_quarantines_total",
                "Times this process's worker's guard quarantined (and rolled back) a model",
                &["model"],
            ),
            registry: r,
        }
    }
}

/// The `method` label of the HTTP metrics: a standard method's name, else `other` (a client may
/// send any token as a method; each would otherwise become a new time series).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "other",
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Records a model batch applied by a worker.
pub fn worker_batch(model: &str, events: usize, dead: usize, loss_sum: f64) {
    let m = global();
    m.worker_batches.with_label_values(&[model]).inc();
    m.worker_events
        .with_label_values(&[model])
        .inc_by(events as u64);
    if dead > 0 {
        m.worker_dead
            .with_label_values(&[model])
            .inc_by(dead as u64);
    }
    if loss_sum.is_finite() && loss_sum >= 0.0 {
        m.worker_loss_sum
            .with_label_values(&[model])
            .inc_by(loss_sum);
    }
}

/// Records events dead-lettered by a worker outside an applied batch.
pub fn worker_dead(model: &str, dead: u64) {
    if dead > 0 {
        global()
            .worker_dead
            .with_label_values(&[model])
            .inc_by(dead);
    }
}

/// Records the label delays (seconds) of a batch's events trained on logged predictions.
pub fn label_delays(model: &str, delays: &[f64]) {
    if delays.is_empty() {
        return;
    }
    let h = global().label_delay.with_label_values(&[model]);
    // A label stamped before its prediction (clients set the time) counts as no delay; one
    // stamped at +-infinity (plain SQL may) is left out.
    for d in delays.iter().filter(|d| d.is_finite()) {
        h.observe(d.max(0.0));
    }
}

/// Records waiting labels woken (their prediction was logged) and expired (dead-lettered).
pub fn labels_waited(woken: u64, expired: u64) {
    let m = global();
    m.labels_waited.with_label_values(&["woken"]).inc_by(woken);
    m.labels_waited
        .with_label_values(&["expired"])
        .inc_by(expired);
}

/// Records a drift the worker detected.
pub fn drift_detected(model: &str, detector: &str, adaptation: crate::learner::drift::Adaptation) {
    let adaptation = match adaptation {
        crate::learner::drift::Adaptation::None => "none",
        crate::learner::drift::Adaptation::Boost => "boost",
        crate::learner::drift::Adaptation::Reset => "reset",
    };
    global()
        .drift_detections
        .with_label_values(&[model, detector, adaptation])
        .inc();
}

/// Records that the guard quarantined a model.
pub fn quarantined(model: &str) {
    global().quarantines.with_label_values(&[model]).inc();
}

/// Records a failed (rolled back) attempt at a model batch.
pub fn worker_failure(model: &str, transient: bool) {
    let cause = if transient { "transient" } else { "database" };
    global()
        .worker_failures
        .with_label_values(&[model, cause])
        .inc();
}

/// Records rows set aside (dead-lettered) after splitting a failing batch found them.
pub fn worker_set_aside(model: &str, rows: u64) {
    let m = global();
    m.worker_set_aside.with_label_values(&[model]).inc_by(rows);
    m.worker_dead.with_label_values(&[model]).inc_by(rows);
}

/// Records that a model was set aside because its stored state is unreadable.
pub fn worker_unreadable(model: &str) {
    global().worker_unreadable.with_label_values(&[model]).inc();
}

/// Records an ANALYZE or VACUUM the worker ran.
pub fn worker_maintenance(table: &str, action: &str) {
    global()
        .worker_maintenance
        .with_label_values(&[table, action])
        .inc();
}

/// Gauges read from the database at scrape time, in a registry of their own.
async fn database_gauges(pool: &PgPool) -> Result<Registry, sqlx::Error> {
    let registry = Registry::new();
    let gauge = |name: &str, help: &str| {
        let g = GaugeVec::new(Opts::new(name, help), &["model"]).expect("valid metric");
        registry
            .register(Box::new(g.clone()))
            .expect("unique metric");
        g
    };
    let depth = gauge("olps_queue_depth", "Pending feedback queue rows");
    let age = gauge(
        "olps_queue_oldest_pending_age_seconds",
        "Age of the oldest pending feedback queue row (0 when none is pending)",
    );
    let dead = gauge(
        "olps_queue_dead_letters",
        "Dead-lettered feedback queue rows (set aside with their reason)",
    );
    let version = gauge(
        "olps_model_version",
        "Current model version (models.version)",
    );
    let loss = gauge(
        "olps_model_prequential_loss",
        "Mean prequential loss of the latest learned version",
    );

    let rows: Vec<(String, i64, i64, f64)> = sqlx::query_as(
        "SELECT coalesce(m.name, q.model_id::text), q.pending, q.dead,
                coalesce(extract(epoch FROM now() - q.oldest)::float8, 0)
         FROM (SELECT model_id,
                      count(*) FILTER (WHERE status = 'pending') AS pending,
                      count(*) FILTER (WHERE status = 'dead') AS dead,
                      min(created_at) FILTER (WHERE status = 'pending') AS oldest
               FROM feedback_queue GROUP BY model_id) q
         LEFT JOIN models m ON m.model_id = q.model_id",
    )
    .fetch_all(pool)
    .await?;
    for (model, pending, dead_rows, oldest) in &rows {
        depth.with_label_values(&[model]).set(*pending as f64);
        dead.with_label_values(&[model]).set(*dead_rows as f64);
        age.with_label_values(&[model]).set(oldest.max(0.0));
    }
    let rows: Vec<(String, i64, Option<f64>)> = match crate::citus::Topology::detect(pool).await? {
        crate::citus::Topology::Single => {
            sqlx::query_as(
                "SELECT m.name, m.version, v.loss_sum / nullif(v.examples, 0)
                     FROM models m
                     LEFT JOIN LATERAL (SELECT loss_sum, examples FROM model_versions mv
                                        WHERE mv.model_id = m.model_id AND mv.kind = 'gradient'
                                        ORDER BY mv.model_version DESC LIMIT 1) v ON TRUE",
            )
            .fetch_all(pool)
            .await?
        }
        // Citus joins no correlated subquery with a reference table: one routed lookup per
        // model instead (a scrape costs a round trip per model there).
        crate::citus::Topology::Citus => {
            let models: Vec<(Uuid, String, i64)> =
                sqlx::query_as("SELECT model_id, name, version FROM models")
                    .fetch_all(pool)
                    .await?;
            let mut rows = Vec::with_capacity(models.len());
            for (model_id, name, model_version) in models {
                let last: Option<f64> = sqlx::query_scalar(
                    "SELECT loss_sum / nullif(examples, 0) FROM model_versions
                         WHERE model_id = $1 AND kind = 'gradient'
                         ORDER BY model_version DESC LIMIT 1",
                )
                .bind(model_id)
                .fetch_optional(pool)
                .await?
                .flatten();
                rows.push((name, model_version, last));
            }
            rows
        }
    };
    for (model, model_version, last_loss) in &rows {
        let model = model.as_str();
        version
            .with_label_values(&[model])
            .set(*model_version as f64);
        // Models without queue rows still get depth 0, so every model has a series.
        depth.with_label_values(&[model]);
        dead.with_label_values(&[model]);
        age.with_label_values(&[model]);
        if let Some(l) = last_loss {
            loss.with_label_values(&[model]).set(*l);
        }
    }
    // The alerting gauges are left out alone if they cannot be read: the others stay.
    if let Err(e) = alerting_gauges(pool, &registry).await {
        tracing::warn!(error = %e, "metrics: alerting gauges unavailable");
    }
    retention_gauges(pool, &registry).await?;
    Ok(registry)
}

/// The gauges the alert rules and the dashboard read (deploy/): quarantined models, dead
/// letters by reason class, the queue by priority, labels waiting for their prediction, and
/// predictions that expired unlabeled. One statement each, grouped in the database.
async fn alerting_gauges(pool: &PgPool, registry: &Registry) -> Result<(), sqlx::Error> {
    let gauge = |name: &str, help: &str, labels: &[&str]| {
        let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        registry
            .register(Box::new(g.clone()))
            .expect("unique metric");
        g
    };
    let quarantined = gauge(
        "olps_model_quarantined",
        "1 while the model is quarantined by the guard (not learning), else 0",
        &["model"],
    );
    let dead = gauge(
        "olps_dead_letters",
        "Dead-lettered feedback queue rows by reason class",
        &["model", "reason"],
    );
    let depth = gauge(
        "olps_queue_depth_by_priority",
        "Pending feedback queue rows by priority",
        &["model", "priority"],
    );
    let age = gauge(
        "olps_queue_oldest_pending_age_by_priority_seconds",
        "Age of the oldest pending feedback queue row of the priority",
        &["model", "priority"],
    );
    let waiting = gauge(
        "olps_queue_waiting_labels",
        "Labels waiting for the prediction they name to be logged",
        &["model"],
    );
    let drifts = gauge(
        "olps_model_drift_events",
        "Drift events stored for the model (drift_events; retention deletes old ones)",
        &["model"],
    );
    let unlabeled = gauge(
        "olps_predictions_expired_unlabeled",
        "Logged predictions that retention deleted and no label ever trained on (cumulative)",
        &["model"],
    );
    // Three plain statements joined here: on Citus, drift_events is distributed, models a
    // reference table and retention_stats local, and no single join of the three runs there.
    let models: Vec<(Uuid, String, bool)> =
        sqlx::query_as("SELECT model_id, name, status = 'quarantined' FROM models")
            .fetch_all(pool)
            .await?;
    let expired: std::collections::HashMap<Uuid, i64> = sqlx::query_as(
        "SELECT model_id, unlabeled_predictions FROM retention_stats
         WHERE table_name = 'prediction_log'",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let drift_counts: std::collections::HashMap<Uuid, i64> =
        sqlx::query_as("SELECT model_id, count(*) FROM drift_events GROUP BY model_id")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    for (model_id, model, is_quarantined) in &models {
        let model = model.as_str();
        drifts
            .with_label_values(&[model])
            .set(drift_counts.get(model_id).copied().unwrap_or(0) as f64);
        quarantined
            .with_label_values(&[model])
            .set(if *is_quarantined { 1.0 } else { 0.0 });
        unlabeled
            .with_label_values(&[model])
            .set(expired.get(model_id).copied().unwrap_or(0) as f64);
        waiting.with_label_values(&[model]);
        for class in DEAD_REASON_CLASSES {
            dead.with_label_values(&[model, class]);
        }
    }
    let rows: Vec<(String, String, i64)> = sqlx::query_as(&format!(
        "SELECT coalesce(m.name, d.model_id::text), d.class, d.n
         FROM (SELECT model_id, {DEAD_REASON_CLASS} AS class, count(*) AS n
               FROM feedback_queue WHERE status = 'dead' GROUP BY 1, 2) d
         LEFT JOIN models m ON m.model_id = d.model_id"
    ))
    .fetch_all(pool)
    .await?;
    for (model, class, n) in &rows {
        dead.with_label_values(&[model, class]).set(*n as f64);
    }
    let rows: Vec<(String, f64, i64, f64)> = sqlx::query_as(
        "SELECT coalesce(m.name, q.model_id::text), q.priority, q.n,
                coalesce(extract(epoch FROM now() - q.oldest)::float8, 0)
         FROM (SELECT model_id, priority, count(*) AS n, min(created_at) AS oldest
               FROM feedback_queue WHERE status = 'pending' GROUP BY 1, 2) q
         LEFT JOIN models m ON m.model_id = q.model_id",
    )
    .fetch_all(pool)
    .await?;
    for (model, priority, n, oldest) in &rows {
        let priority = priority.to_string();
        depth.with_label_values(&[model, &priority]).set(*n as f64);
        age.with_label_values(&[model, &priority])
            .set(oldest.max(0.0));
    }
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT coalesce(m.name, q.model_id::text), q.n
         FROM (SELECT model_id, count(*) AS n FROM feedback_queue
               WHERE status = 'waiting' GROUP BY 1) q
         LEFT JOIN models m ON m.model_id = q.model_id",
    )
    .fetch_all(pool)
    .await?;
    for (model, n) in &rows {
        waiting.with_label_values(&[model]).set(*n as f64);
    }
    Ok(())
}

/// What retention deleted per model and table, and when it last ran (`retention_stats`).
async fn retention_gauges(pool: &PgPool, registry: &Registry) -> Result<(), sqlx::Error> {
    let deleted = GaugeVec::new(
        Opts::new(
            "olps_retention_rows_deleted",
            "Rows retention deleted from the table for the model (cumulative, every process)",
        ),
        &["model", "table"],
    )
    .expect("valid metric");
    let last_run = GaugeVec::new(
        Opts::new(
            "olps_retention_last_run_timestamp_seconds",
            "Unix time of the last retention run over the model",
        ),
        &["model"],
    )
    .expect("valid metric");
    for g in [&deleted, &last_run] {
        registry
            .register(Box::new(g.clone()))
            .expect("unique metric");
    }
    let rows: Vec<(String, String, i64, f64)> = sqlx::query_as(
        "SELECT m.name, s.table_name, s.rows_deleted, extract(epoch FROM s.last_run_at)::float8
         FROM retention_stats s JOIN models m ON m.model_id = s.model_id",
    )
    .fetch_all(pool)
    .await?;
    for (model, table, rows_deleted, at) in &rows {
        deleted
            .with_label_values(&[model, table])
            .set(*rows_deleted as f64);
        let g = last_run.with_label_values(&[model]);
        g.set(g.get().max(*at));
    }
    Ok(())
}

/// The Prometheus text document: the process's metrics plus the database gauges (left out, with
/// a warning, when the database cannot be read).
pub async fn render(pool: &PgPool) -> String {
    let mut families = global().registry.gather();
    match database_gauges(pool).await {
        Ok(registry) => families.extend(registry.gather()),
        Err(e) => tracing::warn!(error = %e, "metrics: database gauges unavailable"),
    }
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut buffer)
        .expect("text encoding of metrics");
    String::from_utf8(buffer).expect("metrics text is UTF-8")
}

/// The response of `GET /metrics`.
pub async fn response(pool: &PgPool) -> Response {
    (
        [(CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        render(pool).await,
    )
        .into_response()
}

/// Serves `GET /metrics` alone (for `olps worker --metrics-listen ADDR`) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    pool: PgPool,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    async fn metrics(State(pool): State<PgPool>) -> Response {
        response(&pool).await
    }
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(pool);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}
