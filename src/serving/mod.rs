//! Serving: answering predictions from an in-memory copy of each model, kept fresh, and logging
//! the predictions made for an entity (delayed labels).
//!
//! - [`cache`]: the models in memory, one immutable copy per model and version, swapped
//!   atomically.
//! - Freshness: a listener on [`crate::timeline::version::VERSION_CHANNEL`] refreshes a cached model as
//!   soon as a new version is committed; a periodic version check is the fallback when
//!   notifications are lost, and every cached model is re-checked after the listener
//!   reconnects. The listener's connection carries `application_name` [`LISTENER_APP_NAME`].
//! - [`log`]: the prediction log writer (batched, off the request path).

pub mod cache;
pub mod log;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics;
use crate::timeline::version::VERSION_CHANNEL;

pub use cache::{ModelCache, Refresh, ServedModel};
pub use log::{LogRecord, PredictionLog};

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
    /// Rows per prediction-log INSERT.
    pub log_batch: usize,
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            version_check_interval: Duration::from_secs(1),
            listen: true,
            log_capacity: 100_000,
            log_batch: 2_000,
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
            log: PredictionLog::start(pool, config.log_capacity, config.log_batch),
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

async fn connect_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let options = (*pool.connect_options())
        .clone()
        .application_name(LISTENER_APP_NAME);
    let own = PgPoolOptions::new()
        .max_connections(2)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options);
    let mut listener = PgListener::connect_with(&own).await?;
    listener.listen(VERSION_CHANNEL).await?;
    Ok(listener)
}

/// LISTENs for committed versions. After every (re)connection, once LISTEN is in place, every
/// cached model is re-checked, so a version committed while the connection was down is not
/// missed.
async fn listen_loop(pool: PgPool, cache: Arc<ModelCache>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    loop {
        let mut listener = tokio::select! {
            _ = stop.cancelled() => return,
            connected = connect_listener(&pool) => match connected {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "serving: cannot LISTEN for versions; retrying (the periodic check covers meanwhile)");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        };
        if !first {
            metrics::global().listener_reconnects.inc();
        }
        first = false;
        backoff = Duration::from_millis(50);
        if let Err(e) = cache.check_versions().await {
            tracing::warn!(error = %e, "serving: version check after (re)connecting failed");
        }
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.try_recv() => r,
            };
            match received {
                Ok(Some(notification)) => {
                    match serde_json::from_str::<VersionNotice>(notification.payload()) {
                        Ok(n) => cache.request_refresh(n.model_id, n.version),
                        Err(e) => {
                            tracing::warn!(payload = notification.payload(), error = %e, "serving: unreadable version notification")
                        }
                    }
                }
                Ok(None) => {
                    // Lost and already re-established (LISTEN included): re-check what may
                    // have been missed meanwhile.
                    tracing::warn!(
                        "serving: version notification connection lost and re-established"
                    );
                    metrics::global().listener_reconnects.inc();
                    if let Err(e) = cache.check_versions().await {
                        tracing::warn!(error = %e, "serving: version check after reconnecting failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "serving: version notification connection failed; reconnecting");
                    break;
                }
            }
        }
    }
}
