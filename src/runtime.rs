//! What every long-running command needs before and around its work: a migrated database, and a
//! token cancelled when the process is asked to stop. Shared by the CLI, the demo and the
//! benchmarks.

use tokio_util::sync::CancellationToken;

use crate::db::{self, Database};
use crate::schema;

/// Resolves the database, says which one is used, and applies pending migrations.
pub async fn prepare_database() -> anyhow::Result<Database> {
    let database = db::resolve().await?;
    eprintln!("olps: using {}", database.description);
    let report = schema::migrate(&database.url).await?;
    for name in &report.applied {
        eprintln!("olps: applied migration {name}");
    }
    Ok(database)
}

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested; finishing in-flight work");
        cancel.cancel();
    });
    token
}
