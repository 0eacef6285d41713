//! The links between champions and their challengers (`model_challengers`): made, removed and
//! listed here, under the rules of [`ShadowError`]: no self-link, the same kind, one champion per
//! challenger, no circle.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

use super::ShadowError;
use crate::models::{self, Model, ModelError};

/// One challenger of a champion.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct Link {
    pub champion_id: Uuid,
    pub challenger_id: Uuid,
    pub challenger_name: String,
    /// The champion's version when the link was made: every event it applied after it was
    /// copied to the challenger.
    pub since_version: i64,
    pub added_at: DateTime<Utc>,
    pub added_by: Option<String>,
}

const LINK_COLUMNS: &str = "l.champion_id, l.challenger_id, m.name AS challenger_name, \
                            l.since_version, l.added_at, l.added_by";

/// Makes `challenger` a challenger of `champion`, in the caller's transaction: from the
/// champion's next batch on, every event it learns is copied to the challenger. Waits for a batch
/// of the champion in progress (its row lock), so the link falls between two versions.
pub async fn add(
    conn: &mut PgConnection,
    champion: &Model,
    challenger: &Model,
    added_by: &str,
) -> Result<Link, ShadowError> {
    if champion.model_id == challenger.model_id {
        return Err(ShadowError::SelfLink(champion.name.clone()));
    }
    if champion.kind != challenger.kind {
        return Err(ShadowError::KindMismatch {
            champion: champion.name.clone(),
            champion_kind: champion.kind.to_string(),
            challenger: challenger.name.clone(),
            challenger_kind: challenger.kind.to_string(),
        });
    }
    // Link changes one at a time, so that two concurrent links cannot close a circle that
    // neither sees; a worker's read of the links does not wait for it.
    sqlx::query("LOCK TABLE model_challengers IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *conn)
        .await?;
    let champion = models::lock(&mut *conn, champion.model_id, false)
        .await?
        .ok_or_else(|| ModelError::NotFound(champion.name.clone()))?;
    let current: Option<String> = sqlx::query_scalar(
        "SELECT m.name FROM model_challengers l JOIN models m ON m.model_id = l.champion_id
         WHERE l.challenger_id = $1",
    )
    .bind(challenger.model_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(current) = current {
        return Err(ShadowError::AlreadyLinked {
            challenger: challenger.name.clone(),
            champion: current,
        });
    }
    // The champion's champions, up the chain: the challenger must not be one of them.
    let above: Vec<String> = sqlx::query_scalar(
        "WITH RECURSIVE up(model_id, depth) AS (
             SELECT champion_id, 1 FROM model_challengers WHERE challenger_id = $1
             UNION ALL
             SELECT l.champion_id, u.depth + 1
             FROM model_challengers l JOIN up u ON l.challenger_id = u.model_id
         )
         SELECT m.name FROM up u JOIN models m ON m.model_id = u.model_id ORDER BY u.depth",
    )
    .bind(champion.model_id)
    .fetch_all(&mut *conn)
    .await?;
    if let Some(at) = above.iter().position(|name| *name == challenger.name) {
        let mut path = vec![champion.name.clone()];
        path.extend(above[..=at].iter().cloned());
        return Err(ShadowError::Cycle {
            champion: champion.name.clone(),
            challenger: challenger.name.clone(),
            path: path.join(" -> "),
        });
    }
    sqlx::query(
        "INSERT INTO model_challengers (challenger_id, champion_id, since_version, added_by)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(challenger.model_id)
    .bind(champion.model_id)
    .bind(champion.version)
    .bind(added_by)
    .execute(&mut *conn)
    .await?;
    find(&mut *conn, &champion, challenger).await
}

/// Ends the link, in the caller's transaction (after the champion's batch in progress). Events
/// already copied stay with the challenger.
pub async fn remove(
    conn: &mut PgConnection,
    champion: &Model,
    challenger: &Model,
) -> Result<Link, ShadowError> {
    models::lock(&mut *conn, champion.model_id, false)
        .await?
        .ok_or_else(|| ModelError::NotFound(champion.name.clone()))?;
    let link = find(&mut *conn, champion, challenger).await?;
    sqlx::query("DELETE FROM model_challengers WHERE challenger_id = $1 AND champion_id = $2")
        .bind(challenger.model_id)
        .bind(champion.model_id)
        .execute(&mut *conn)
        .await?;
    Ok(link)
}

/// The link between the two, or [`ShadowError::NotLinked`].
pub async fn find(
    db: impl PgExecutor<'_>,
    champion: &Model,
    challenger: &Model,
) -> Result<Link, ShadowError> {
    sqlx::query_as(&format!(
        "SELECT {LINK_COLUMNS} FROM model_challengers l
         JOIN models m ON m.model_id = l.challenger_id
         WHERE l.challenger_id = $1 AND l.champion_id = $2"
    ))
    .bind(challenger.model_id)
    .bind(champion.model_id)
    .fetch_optional(db)
    .await?
    .ok_or_else(|| ShadowError::NotLinked {
        champion: champion.name.clone(),
        challenger: challenger.name.clone(),
    })
}

/// A champion's challengers, by name.
pub async fn list(db: impl PgExecutor<'_>, champion_id: Uuid) -> Result<Vec<Link>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {LINK_COLUMNS} FROM model_challengers l
         JOIN models m ON m.model_id = l.challenger_id
         WHERE l.champion_id = $1 ORDER BY m.name"
    ))
    .bind(champion_id)
    .fetch_all(db)
    .await
}

/// The challengers a champion's batch is copied to (the worker, under the champion's lock).
pub async fn challenger_ids(
    db: impl PgExecutor<'_>,
    champion_id: Uuid,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT challenger_id FROM model_challengers WHERE champion_id = $1
         ORDER BY challenger_id",
    )
    .bind(champion_id)
    .fetch_all(db)
    .await
}
