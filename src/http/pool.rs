//! The service's own connection pool: every connection carries a `statement_timeout`, so no
//! statement the service runs (a lookup, an ingest, a rollback waiting for a model's lock) can hold
//! a connection for longer, and a short acquire timeout turns an exhausted pool into a quick 503
//! `database_busy` (with `Retry-After`) instead of requests piling up until their own timeout.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Default `statement_timeout` of the service's connections (`olps serve --statement-timeout-ms`,
/// `OLPS_STATEMENT_TIMEOUT_MS`): below the request timeout, so a slow statement is reported as
/// such (503 `statement_timeout`) rather than as the request's timeout.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Default wait for a free connection before answering 503 `database_busy`.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the service's pool.
#[derive(Debug, Clone)]
pub struct ServicePool {
    pub max_connections: u32,
    /// Wait at most this long for a free connection.
    pub acquire_timeout: Duration,
    /// PostgreSQL's `statement_timeout` on every connection; zero turns it off.
    pub statement_timeout: Duration,
}

impl Default for ServicePool {
    fn default() -> Self {
        ServicePool {
            max_connections: 16,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
        }
    }
}

/// A pool for the service that connects like `base` (same server, credentials and TLS settings)
/// but whose connections run with `statement_timeout` (sent as a startup option, so it holds from
/// the first statement on). Connections are opened on demand.
pub fn service_pool(base: &PgPool, settings: &ServicePool) -> PgPool {
    let options = (*base.connect_options()).clone().options([(
        "statement_timeout",
        settings.statement_timeout.as_millis().to_string(),
    )]);
    PgPoolOptions::new()
        .max_connections(settings.max_connections.max(1))
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options)
}
