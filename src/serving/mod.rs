//! Serving: answering predictions from an in-memory copy of each model, kept fresh, and logging
//! the predictions made for an entity (delayed labels).
//!
//! - [`cache`]: the models in memory, one immutable copy per model and version, swapped
//!   atomically.
//! - Freshness: a listener on [`crate::timeline::version::VERSION_CHANNEL`] refreshes a cached model as
//!   soon as a new version is committed; a periodic version check is the fallback when
//!   notifications are lost, and every cached model is re-checked after the listener
//!   reconnects (by itself, with backoff: [`crate::notify`]). The listener's connection carries
//!   `application_name` [`LISTENER_APP_NAME`].
//! - [`log`]: the prediction log writers (batched binary COPY, off the request path).

pub mod cache;
pub mod log;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics;
use crate::timeline::version::VERSION_CHANNEL;

pub use cache::{ModelCache, Refresh, ServedModel};
pub use log::{LogConfig, LogCounts, LogMethod, LogRecord, PredictionLog};

/// `application_name` of the serving cache's LISTEN connection (visible in pg_stat_activity).
pub const LISTENER_APP_NAME: &str = "olps-serving-listener";

#[derive(Debug, Clone)]
pub struct ServingConfig {
    /// How often cached models are compared with `models.version` (the fallback for lost
    /// notifications).
    pub version_check_interval: Duration,
    /// Whether to LISTEN for version notifications (off: the periodic check alone).
    pub listen: bool,
    /// Logged predictions that may wait in memory before new ones are dropped (and counted).
    pub log_capacity: usize,
    /// Rows per prediction-log batch (one COPY or INSERT).
    pub log_batch: usize,
    /// Prediction-log writers (each entity always goes to the same one).
    pub log_writers: usize,
    /// How a prediction-log batch is written.
    pub log_method: LogMethod,
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            version_check_interval: Duration::from_secs(1),
            listen: true,
            log_capacity: LogConfig::default().capacity,
            log_batch: LogConfig::default().batch,
            log_writers: LogConfig::default().writers,
            log_method: LogConfig::default().method,
        }
    }
}

/// The serving side of one service: model cache, its refresh tasks, and the prediction log.
pub struct Serving {
    pub cache: Arc<ModelCache>,
    pub log: PredictionLog,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Serving {
    /// Starts the background tasks (listener, version check, log writer) on the current Tokio
    /// runtime.
    pub fn start(pool: PgPool, config: ServingConfig) -> Arc<Serving> {
        let cache = Arc::new(ModelCache::new(pool.clone()));
        let stop = CancellationToken::new();
        let mut tasks = vec![tokio::spawn(check_loop(
            cache.clone(),
            config.version_check_interval,
            stop.clone(),
        ))];
        if config.listen {
            tasks.push(tokio::spawn(listen_loop(
                pool.clone(),
                cache.clone(),
                stop.clone(),
            )));
        }
        Arc::new(Serving {
            cache,
            log: PredictionLog::start(
                pool,
                LogConfig {
                    capacity: config.log_capacity,
                    batch: config.log_batch,
                    writers: config.log_writers,
                    method: config.log_method,
                },
            ),
            stop,
            tasks: Mutex::new(tasks),
        })
    }

    /// Stops the refresh tasks and flushes the prediction log (graceful shutdown: call after
    /// the last request is answered).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock().expect("lock"));
        for task in tasks {
            let _ = task.await;
        }
        self.log.close().await;
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn check_loop(cache: Arc<ModelCache>, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = cache.check_versions().await {
            tracing::warn!(error = %e, "serving: version check failed");
        }
    }
}

#[derive(Deserialize)]
struct VersionNotice {
    model_id: Uuid,
    version: i64,
}

/// LISTENs for committed versions ([`crate::notify`]: the connection reconnects by itself with
/// capped exponential backoff and jitter). After every (re)connection, once LISTEN is in place,
/// every cached model is re-checked, so a version committed while the connection was down is
/// not missed; the same when notifications were dropped because this task fell behind.
async fn listen_loop(pool: PgPool, cache: Arc<ModelCache>, stop: CancellationToken) {
    let mut versions = crate::notify::Subscription::start(
        &pool,
        crate::notify::ListenConfig::new(LISTENER_APP_NAME, &[VERSION_CHANNEL]),
    );
    loop {
        let wake = tokio::select! {
            _ = stop.cancelled() => return,
            wake = versions.wait() => wake,
        };
        if wake.reconnects > 0 {
            metrics::global()
                .listener_reconnects
                .inc_by(u64::from(wake.reconnects));
        }
        // Only the newest version per model matters: a refresh reads the latest anyway.
        let mut newest: HashMap<Uuid, i64> = HashMap::new();
        for notification in &wake.notifications {
            match serde_json::from_str::<VersionNotice>(&notification.payload) {
                Ok(n) => {
                    let v = newest.entry(n.model_id).or_insert(n.version);
                    *v = (*v).max(n.version);
                }
                Err(e) => {
                    tracing::warn!(payload = notification.payload, error = %e, "serving: unreadable version notification")
                }
            }
        }
        for (model_id, version) in newest {
            cache.request_refresh(model_id, version);
        }
        if wake.catch_up {
            if let Err(e) = cache.check_versions().await {
                // The periodic check tries again.
                tracing::warn!(error = %e, "serving: version check after (re)connecting failed");
            }
        }
    }
}
