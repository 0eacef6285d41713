//! A LISTEN connection that keeps itself up, for the worker (feedback hints) and the serving cache
//! (new versions).
//!
//! The connection lives in a task of its own, so a caller's `select!` never cancels a connection
//! attempt half-way. When it cannot connect, or loses its connection (a restart, an outage, a
//! terminated backend), the task tries again after a capped exponential backoff with jitter
//! ([`Backoff`]): 100 ms doubling up to 5 s by default, each wait drawn between half and all of
//! the step, so services that lost the same server do not all come back at the same instant.
//!
//! Notifications sent while the connection is down are lost (PostgreSQL keeps none for a
//! listener that is not connected), so every (re)connection, once LISTEN is in place, reaches
//! the subscriber as a wake-up with `catch_up` set: it must look at the database for what it may
//! have missed. [`Subscription::wait`] returns everything queued since the last call in one
//! wake-up, so a burst of notifications costs the subscriber one look, not one per notification.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events buffered for a subscriber that is busy; past it, notifications are dropped and the
/// next wake-up says `catch_up` instead (they are hints: the subscriber looks for itself).
const BUFFER: usize = 1024;

/// Capped exponential backoff with "equal jitter": each wait is drawn uniformly between half and
/// all of the current step; the step doubles after each wait, up to the cap.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            step: initial,
        }
    }

    /// The wait before the next attempt (and the step doubles).
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.max);
        let half = step / 2;
        let jitter = rand::random::<f64>() * half.as_secs_f64();
        half + Duration::from_secs_f64(jitter)
    }

    /// Back to the first step (after a connection that held).
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

/// What to listen to, and how to come back.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// `application_name` of the connection (visible in `pg_stat_activity`).
    pub app_name: &'static str,
    pub channels: Vec<&'static str>,
    /// First wait after a failed or lost connection.
    pub backoff_initial: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
    /// How long one attempt may take (sqlx keeps retrying a refused connection within it).
    pub connect_timeout: Duration,
}

impl ListenConfig {
    pub fn new(app_name: &'static str, channels: &[&'static str]) -> ListenConfig {
        ListenConfig {
            app_name,
            channels: channels.to_vec(),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub channel: String,
    pub payload: String,
}

/// What woke a subscriber: every notification queued since the last wake-up, and whether it must
/// look at the database for what notifications may not tell (a (re)connection, or notifications
/// dropped while it was busy).
#[derive(Debug, Default)]
pub struct Wake {
    pub notifications: Vec<Notification>,
    pub catch_up: bool,
    /// Times the connection was re-established (not counting the first connection).
    pub reconnects: u32,
}

enum Event {
    Connected { reconnect: bool },
    Notified(Notification),
}

/// A LISTEN connection kept up by a background task; stops when dropped.
pub struct Subscription {
    rx: mpsc::Receiver<Event>,
    lagged: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Subscription {
    /// Starts listening on a connection of its own, made like `pool`'s (same server, credentials
    /// and TLS), in a task on the current Tokio runtime.
    pub fn start(pool: &PgPool, config: ListenConfig) -> Subscription {
        let options = (*pool.connect_options())
            .clone()
            .application_name(config.app_name);
        // One connection, never recycled by age: it is the listener's. The acquire timeout bounds
        // one connection attempt.
        let own = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(config.connect_timeout)
            .connect_lazy_with(options);
        let (tx, rx) = mpsc::channel(BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        tokio::spawn(keep_listening(
            own,
            config,
            tx,
            lagged.clone(),
            stop.clone(),
        ));
        Subscription { rx, lagged, stop }
    }

    /// Waits for the next wake-up and takes everything queued behind it. Cancel-safe: nothing is
    /// lost when the caller's `select!` takes another branch.
    pub async fn wait(&mut self) -> Wake {
        let Some(first) = self.rx.recv().await else {
            // The task stopped (only when this subscription is dropped): nothing will come.
            return std::future::pending().await;
        };
        let mut wake = Wake::default();
        wake.add(first);
        while let Ok(event) = self.rx.try_recv() {
            wake.add(event);
        }
        if self.lagged.swap(false, Ordering::AcqRel) {
            wake.catch_up = true;
        }
        wake
    }
}

impl Wake {
    fn add(&mut self, event: Event) {
        match event {
            Event::Connected { reconnect } => {
                self.catch_up = true;
                self.reconnects += u32::from(reconnect);
            }
            Event::Notified(n) => self.notifications.push(n),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Whether the subscriber is gone.
fn deliver(tx: &mpsc::Sender<Event>, lagged: &AtomicBool, event: Event) -> bool {
    match tx.try_send(event) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            lagged.store(true, Ordering::Release);
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

async fn connect(pool: &PgPool, channels: &[&'static str]) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection ends the receive loop below, which reconnects with backoff; sqlx's own
    // reconnection would retry at once, without it.
    listener.eager_reconnect(false);
    listener.listen_all(channels.iter().copied()).await?;
    Ok(listener)
}

async fn keep_listening(
    pool: PgPool,
    config: ListenConfig,
    tx: mpsc::Sender<Event>,
    lagged: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let name = config.app_name;
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    let mut connected_before = false;
    let mut failures = 0u32;
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => break,
            attempt = connect(&pool, &config.channels) => attempt,
        };
        let mut listener = match attempt {
            Ok(listener) => listener,
            Err(e) => {
                failures += 1;
                let wait = backoff.next_delay();
                // The first failure loudly, then every tenth: an outage must not flood the log.
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(listener = name, error = %e, attempt = failures,
                        retry_in_ms = wait.as_millis() as u64,
                        "cannot LISTEN; retrying with backoff (polling covers meanwhile)");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        if connected_before {
            tracing::info!(
                listener = name,
                attempts = failures + 1,
                "LISTEN connection re-established"
            );
        }
        failures = 0;
        let since = Instant::now();
        if !deliver(
            &tx,
            &lagged,
            Event::Connected {
                reconnect: connected_before,
            },
        ) {
            break;
        }
        connected_before = true;
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => return close(listener, pool).await,
                received = listener.try_recv() => received,
            };
            let lost = match received {
                Ok(Some(n)) => {
                    let n = Notification {
                        channel: n.channel().to_string(),
                        payload: n.payload().to_string(),
                    };
                    if !deliver(&tx, &lagged, Event::Notified(n)) {
                        return close(listener, pool).await;
                    }
                    continue;
                }
                Ok(None) => "connection closed".to_string(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(listener = name, error = %lost, "LISTEN connection lost; reconnecting with backoff");
            break;
        }
        drop(listener);
        // A connection that held for a while starts the backoff over; one that drops at once
        // (a server in a crash loop) keeps growing it.
        if since.elapsed() > config.backoff_max {
            backoff.reset();
        }
        let wait = backoff.next_delay();
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), pool.close()).await;
}

/// Closes the connection on the way out (bounded: the server may be unreachable).
async fn close(listener: PgListener, pool: PgPool) {
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(1), pool.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_within_the_step() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let steps = [100u64, 200, 400, 800, 800, 800];
        for step in steps {
            let d = b.next_delay().as_secs_f64() * 1e3;
            assert!(
                d >= step as f64 / 2.0 - 1e-6 && d <= step as f64 + 1e-6,
                "{d} ms outside [{}, {step}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
