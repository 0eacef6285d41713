//! The `audit_log` table: who changed what. The HTTP service records every state-changing request
//! (after its answer, with the answer's status); the command line records its own such commands.
//! `sql/audit_trail.sql` lists it.

use sqlx::PgExecutor;
use uuid::Uuid;

use super::{Actor, Principal};

/// One audited action.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// e.g. `rollback`, `snapshot.create`, `token.revoke`.
    pub action: String,
    pub model_id: Option<Uuid>,
    /// The model, snapshot or token as given.
    pub target: Option<String>,
    pub method: Option<String>,
    pub route: Option<String>,
    pub status: Option<u16>,
    pub details: Option<serde_json::Value>,
}

/// Removes secrets from what is stored as `details`.
pub fn scrub(mut details: serde_json::Value) -> serde_json::Value {
    if let Some(object) = details.as_object_mut() {
        object.remove("secret");
    }
    details
}

pub async fn record(
    db: impl PgExecutor<'_>,
    who: &Principal,
    entry: &Entry,
) -> Result<(), sqlx::Error> {
    let (token_id, token_name) = match &who.actor {
        Actor::Token { token_id, name } => (Some(*token_id), Some(name.as_str())),
        _ => (None, None),
    };
    sqlx::query(
        "INSERT INTO audit_log (actor, token_id, token_name, action, model_id, target, method,
                                route, status, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(who.actor_kind())
    .bind(token_id)
    .bind(token_name)
    .bind(&entry.action)
    .bind(entry.model_id)
    .bind(&entry.target)
    .bind(&entry.method)
    .bind(&entry.route)
    .bind(entry.status.map(i32::from))
    .bind(entry.details.clone().map(scrub))
    .execute(db)
    .await?;
    Ok(())
}

/// [`record`] for the command line: a failure to record is reported on stderr, not fatal (the
/// action itself is done).
pub async fn record_cli(db: impl PgExecutor<'_>, entry: Entry) {
    if let Err(e) = record(db, &Principal::cli(), &entry).await {
        eprintln!(
            "olps: warning: could not record '{}' in the audit log: {e}",
            entry.action
        );
    }
}
