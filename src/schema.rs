//! The schema: refinery migrations embedded from `migrations/`, applied under an advisory lock.

use tokio_postgres::NoTls;

mod embedded_migrations {
    refinery::embed_migrations!("migrations");
}

/// Advisory lock key held while migrating ("olps" in ASCII): refinery itself takes no lock, so two
/// processes migrating at once would both try to apply the same migration.
const MIGRATION_LOCK: i64 = 0x6f6c_7073;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect to PostgreSQL to migrate: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("migration lock: {0}")]
    Lock(#[source] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Refinery(#[from] refinery::Error),
}

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Names of the migrations applied by this run, e.g. `V1__schema`.
    pub applied: Vec<String>,
    /// The latest migration version embedded in this build (and now applied).
    pub latest_version: Option<i32>,
}

/// Applies every pending migration. Idempotent; safe when several processes run it at once.
pub async fn migrate(database_url: &str) -> Result<MigrationReport, MigrateError> {
    let (mut client, connection) = tokio_postgres::connect(database_url, NoTls)
        .await
        .map_err(MigrateError::Connect)?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "migration connection closed with an error");
        }
    });
    // Session-level lock: released explicitly below, or by the server when the connection drops.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(MigrateError::Lock)?;
    let outcome = embedded_migrations::migrations::runner()
        .set_grouped(false)
        .run_async(&mut client)
        .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    drop(client);
    let _ = driver.await;
    let report = outcome?;
    let applied = report
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect();
    let latest_version = embedded_migrations::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max();
    Ok(MigrationReport {
        applied,
        latest_version,
    })
}
