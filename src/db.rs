//! Which PostgreSQL olps talks to: `DATABASE_URL`, else the embedded default cluster under `.olps/`.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::embedded;

/// The directory of the embedded default cluster, relative to the working directory.
pub const EMBEDDED_DIR: &str = ".olps";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Embedded(#[from] embedded::EmbeddedError),
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    BadUrl(String),
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("embedded cluster task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A resolved database: its URL and a description for people ("DATABASE_URL" or the cluster path).
#[derive(Debug, Clone)]
pub struct Database {
    pub url: String,
    pub description: String,
    pub embedded: bool,
}

/// Resolves the database every command uses: `DATABASE_URL` when set (and non-empty), else the
/// embedded cluster under `.olps/` in the working directory, created and started on demand.
pub async fn resolve() -> Result<Database, DbError> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Ok(Database {
            description: format!("DATABASE_URL ({})", redact(&url)),
            url,
            embedded: false,
        }),
        _ => {
            let base = std::env::current_dir()
                .unwrap_or_else(|_| PathBuf::from("."))
                .join(EMBEDDED_DIR);
            let cluster =
                tokio::task::spawn_blocking(move || embedded::ensure_cluster(&base)).await??;
            Ok(Database {
                description: format!(
                    "embedded PostgreSQL in {} ({})",
                    cluster.data_dir.display(),
                    redact(&cluster.url)
                ),
                url: cluster.url,
                embedded: true,
            })
        }
    }
}

/// Hides a password in a URL before it is printed or logged.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// A connection pool for the application.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options: PgConnectOptions =
        crate::pgtls::sqlx_options(url).map_err(|e| DbError::BadUrl(e.to_string()))?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect {
            target: redact(url),
            source,
        })
}
