//! Bounded retries of the service's write transactions on serialization failures (SQLSTATE 40001)
//! and deadlocks (40P01): PostgreSQL rolled the transaction back, so running it again is safe and
//! usually succeeds. After [`ATTEMPTS`] tries the error stands (answered 503 `database_conflict`
//! with `Retry-After`, see [`super::error`]).

use std::future::Future;
use std::time::Duration;

use super::error::DbFailure;
use crate::models::ModelError;
use crate::timeline::error::TimelineError;

/// Tries per request, the first included.
pub const ATTEMPTS: u32 = 4;

/// An error that may carry a database error.
pub trait MaybeTransient {
    /// A serialization failure or a deadlock: the transaction may succeed when run again.
    fn is_transient(&self) -> bool;
}

impl MaybeTransient for sqlx::Error {
    fn is_transient(&self) -> bool {
        DbFailure::of(self) == DbFailure::Transient
    }
}

impl MaybeTransient for ModelError {
    fn is_transient(&self) -> bool {
        matches!(self, ModelError::Db(e) if e.is_transient())
    }
}

impl MaybeTransient for TimelineError {
    fn is_transient(&self) -> bool {
        match self {
            TimelineError::Db(e) => e.is_transient(),
            TimelineError::Model(e) => e.is_transient(),
            _ => false,
        }
    }
}

impl MaybeTransient for crate::settings::SettingsError {
    fn is_transient(&self) -> bool {
        match self {
            crate::settings::SettingsError::Db(e) => e.is_transient(),
            crate::settings::SettingsError::Model(e) => e.is_transient(),
            _ => false,
        }
    }
}

impl MaybeTransient for crate::shadow::ShadowError {
    fn is_transient(&self) -> bool {
        use crate::shadow::ShadowError;
        match self {
            ShadowError::Db(e) => e.is_transient(),
            ShadowError::Model(e) => e.is_transient(),
            ShadowError::Settings(e) => e.is_transient(),
            ShadowError::Timeline(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Runs `attempt` (one whole transaction) until it succeeds, fails for another reason, or has
/// been tried [`ATTEMPTS`] times; waits a little longer (with jitter) before each retry.
pub async fn transient<T, E, F, Fut>(what: &str, mut attempt: F) -> Result<T, E>
where
    E: MaybeTransient + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut tried = 1;
    loop {
        match attempt().await {
            Err(e) if e.is_transient() && tried < ATTEMPTS => {
                let base = 10u64 << (2 * (tried - 1)); // 10, 40, 160 ms
                let wait = base + rand::random::<u64>() % base;
                tracing::info!(error = %e, attempt = tried, wait_ms = wait, "{what}: retrying");
                tokio::time::sleep(Duration::from_millis(wait)).await;
                tried += 1;
            }
            outcome => return outcome,
        }
    }
}
