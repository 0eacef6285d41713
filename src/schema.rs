//! The schema: refinery migrations embedded from `migrations/`, applied under an advisory lock,
//! then the least-privilege group roles and their grants (`src/roles.sql`).

mod embedded_migrations {
    refinery::embed_migrations!("migrations");
}

/// Advisory lock key held while migrating ("olps" in ASCII): refinery itself takes no lock, so two
/// processes migrating at once would both try to apply the same migration.
const MIGRATION_LOCK: i64 = 0x6f6c_7073;

/// The group roles `olps_writer`, `olps_worker`, `olps_service`, `olps_analyst` and their grants
/// (idempotent; see the file).
pub const ROLES_SQL: &str = include_str!("roles.sql");

/// The group roles olps creates (NOLOGIN); a DBA makes LOGIN roles members of them.
pub const ROLES: [&str; 4] = ["olps_writer", "olps_worker", "olps_service", "olps_analyst"];

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot connect to PostgreSQL to migrate: {0}")]
    Connect(#[source] crate::pgtls::ConnectError),
    #[error("migration lock: {0}")]
    Lock(#[source] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Refinery(#[from] refinery::Error),
    #[error(
        "the schema needs migrating, but the role olps is connected as ({user}) does not own it: \
         run `olps migrate` as the schema's owner first ({source})"
    )]
    NotOwner {
        user: String,
        #[source]
        source: refinery::Error,
    },
    #[error("applying the group roles and grants: {0}")]
    Roles(#[source] tokio_postgres::Error),
    #[error(
        "distributing the schema on Citus (the database has the citus extension): {0}; \
         check that the worker nodes are added (SELECT * FROM citus_get_active_worker_nodes())"
    )]
    Distribute(#[source] tokio_postgres::Error),
}

/// What a migration run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Names of the migrations applied by this run, e.g. `V1__schema`.
    pub applied: Vec<String>,
    /// The latest migration version embedded in this build (and now applied).
    pub latest_version: Option<i32>,
    /// Whether the group roles and grants were (re)applied.
    pub roles_applied: bool,
}

fn latest_embedded() -> Option<i32> {
    embedded_migrations::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
}

/// Applies every pending migration, then the roles and grants when a migration was applied or a
/// group role is missing. Idempotent; safe when several processes run it at once. A role that
/// does not own the schema (olps_service, olps_worker) passes when nothing is pending.
pub async fn migrate(database_url: &str) -> Result<MigrationReport, MigrateError> {
    run(database_url, false).await
}

/// [`migrate`], always (re)applying the roles and grants: `olps migrate`.
pub async fn migrate_and_grant(database_url: &str) -> Result<MigrationReport, MigrateError> {
    run(database_url, true).await
}

async fn run(database_url: &str, always_grant: bool) -> Result<MigrationReport, MigrateError> {
    let (mut client, connection) = crate::pgtls::connect_tokio_postgres(database_url)
        .await
        .map_err(MigrateError::Connect)?;
    let driver = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "migration connection closed with an error");
        }
    });
    let latest_version = latest_embedded();
    // Up to date and every role there: nothing to do, and no lock or catalog write needed (so a
    // role without rights on the schema, like olps_service, gets through).
    if !always_grant && up_to_date(&client, latest_version).await {
        drop(client);
        let _ = driver.await;
        return Ok(MigrationReport {
            applied: Vec::new(),
            latest_version,
            roles_applied: false,
        });
    }
    // Session-level lock: released explicitly below, or by the server when the connection drops.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(MigrateError::Lock)?;
    let outcome = embedded_migrations::migrations::runner()
        .set_grouped(false)
        .run_async(&mut client)
        .await;
    // On Citus, tables a migration created are distributed before they are granted on.
    let distributed = match &outcome {
        Ok(_) => client.batch_execute(crate::citus::DISTRIBUTE_SQL).await,
        Err(_) => Ok(()),
    };
    let grant = match (&outcome, &distributed) {
        (Ok(report), Ok(())) => {
            always_grant || !report.applied_migrations().is_empty() || !roles_exist(&client).await
        }
        _ => false,
    };
    let roles = if grant {
        client.batch_execute(ROLES_SQL).await
    } else {
        Ok(())
    };
    let roles_applied = grant;
    let user: String = match client.query_one("SELECT current_user::text", &[]).await {
        Ok(row) => row.get(0),
        Err(_) => "?".into(),
    };
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    drop(client);
    let _ = driver.await;
    let report = match outcome {
        Ok(report) => report,
        Err(source) if is_permission_error(&source) => {
            return Err(MigrateError::NotOwner { user, source })
        }
        Err(e) => return Err(e.into()),
    };
    distributed.map_err(MigrateError::Distribute)?;
    roles.map_err(MigrateError::Roles)?;
    let applied = report
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect();
    Ok(MigrationReport {
        applied,
        latest_version,
        roles_applied,
    })
}

fn is_permission_error(e: &refinery::Error) -> bool {
    let text = e.to_string();
    text.contains("permission denied") || text.contains("must be owner")
}

async fn roles_exist(client: &tokio_postgres::Client) -> bool {
    let names: Vec<String> = ROLES.iter().map(|r| r.to_string()).collect();
    match client
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)",
            &[&names],
        )
        .await
    {
        Ok(row) => row.get::<_, i64>(0) == ROLES.len() as i64,
        Err(_) => false,
    }
}

/// Every embedded migration is recorded as applied and the group roles exist.
async fn up_to_date(client: &tokio_postgres::Client, latest: Option<i32>) -> bool {
    let Some(latest) = latest else {
        return true;
    };
    let exists = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .is_ok_and(|row| row.get::<_, bool>(0));
    if !exists {
        return false;
    }
    let applied: Option<i32> = client
        .query_one("SELECT max(version) FROM refinery_schema_history", &[])
        .await
        .ok()
        .and_then(|row| row.get(0));
    applied.is_some_and(|v| v >= latest) && roles_exist(client).await
}
