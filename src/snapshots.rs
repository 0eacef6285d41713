//! Snapshots: every parameter and its optimizer state at one model version, copied inside
//! PostgreSQL (`INSERT … SELECT`), never through the client. They are the starting points of
//! point-in-time reads and rollbacks, and what makes pruning history safe. A model may take them
//! automatically every N versions and/or T minutes ([`SnapshotPolicy`], stored on `models`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::history::HistoryError;
use crate::models::ModelError;

pub const MAX_LABEL_LEN: usize = 200;

/// A snapshot's header (its parameters are in `snapshot_parameters`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub snapshot_id: Uuid,
    pub model_id: Uuid,
    pub model_version: i64,
    pub label: Option<String>,
    /// `manual` or `auto`.
    pub kind: String,
    pub parameter_count: i64,
    pub examples_seen: i64,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "snapshot_id, model_id, model_version, label, kind, parameter_count, examples_seen, created_at";

fn from_row(row: &PgRow) -> Result<Snapshot, sqlx::Error> {
    Ok(Snapshot {
        snapshot_id: row.try_get("snapshot_id")?,
        model_id: row.try_get("model_id")?,
        model_version: row.try_get("model_version")?,
        label: row.try_get("label")?,
        kind: row.try_get("kind")?,
        parameter_count: row.try_get("parameter_count")?,
        examples_seen: row.try_get("examples_seen")?,
        created_at: row.try_get("created_at")?,
    })
}

/// A label: 1..=200 characters, no control characters, not a UUID (snapshots are addressed by
/// UUID or label).
pub fn validate_label(label: &str) -> Result<(), HistoryError> {
    let invalid = |m: &str| Err(HistoryError::InvalidArgument(format!("label: {m}")));
    if label.trim().is_empty() {
        return invalid("must not be empty");
    }
    if label.chars().count() > MAX_LABEL_LEN {
        return invalid(&format!("must be at most {MAX_LABEL_LEN} characters"));
    }
    if label.chars().any(char::is_control) {
        return invalid("must not contain control characters");
    }
    if Uuid::parse_str(label).is_ok() {
        return invalid("must not be a UUID (snapshots are addressed by UUID or label)");
    }
    Ok(())
}

/// Snapshots the model's current version. Runs in a REPEATABLE READ transaction, so the version
/// and the parameters come from one committed state without blocking the worker.
pub async fn create(
    pool: &PgPool,
    model_id: Uuid,
    label: Option<&str>,
) -> Result<Snapshot, HistoryError> {
    if let Some(label) = label {
        validate_label(label)?;
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT version, examples_seen FROM models WHERE model_id = $1")
            .bind(model_id)
            .fetch_optional(&mut *tx)
            .await?;
    let (version, examples_seen) = row.ok_or_else(|| ModelError::NotFound(model_id.to_string()))?;
    let snapshot = create_in_tx(&mut tx, model_id, version, examples_seen, label, "manual")
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                HistoryError::DuplicateLabel(label.unwrap_or_default().to_string())
            }
            _ => HistoryError::Db(e),
        })?;
    tx.commit().await?;
    Ok(snapshot)
}

/// Copies the model's parameters as the caller's transaction sees them, recorded as `version`.
/// The caller guarantees they are that version's (a lock, or a REPEATABLE READ snapshot).
pub async fn create_in_tx(
    conn: &mut PgConnection,
    model_id: Uuid,
    version: i64,
    examples_seen: i64,
    label: Option<&str>,
    kind: &str,
) -> Result<Snapshot, sqlx::Error> {
    let snapshot_id: Uuid = sqlx::query_scalar(
        "INSERT INTO snapshots (model_id, model_version, label, kind, examples_seen)
         VALUES ($1, $2, $3, $4, $5) RETURNING snapshot_id",
    )
    .bind(model_id)
    .bind(version)
    .bind(label)
    .bind(kind)
    .bind(examples_seen)
    .fetch_one(&mut *conn)
    .await?;
    let copied = sqlx::query(
        "INSERT INTO snapshot_parameters
             (model_id, snapshot_id, parameter_id, value, opt_m, opt_v, update_count,
              feature_mean, feature_m2, last_version)
         SELECT model_id, $2, parameter_id, current_value, opt_m, opt_v, update_count,
                feature_mean, feature_m2, version
         FROM model_parameters WHERE model_id = $1",
    )
    .bind(model_id)
    .bind(snapshot_id)
    .execute(&mut *conn)
    .await?
    .rows_affected() as i64;
    let row = sqlx::query(&format!(
        "UPDATE snapshots SET parameter_count = $3 WHERE model_id = $1 AND snapshot_id = $2
         RETURNING {COLUMNS}"
    ))
    .bind(model_id)
    .bind(snapshot_id)
    .bind(copied)
    .fetch_one(&mut *conn)
    .await?;
    from_row(&row)
}

/// A model's snapshots, oldest version first.
pub async fn list(pool: &PgPool, model_id: Uuid) -> Result<Vec<Snapshot>, HistoryError> {
    let mut conn = pool.acquire().await?;
    crate::history::horizon(&mut conn, model_id).await?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM snapshots WHERE model_id = $1
         ORDER BY model_version, created_at, snapshot_id"
    ))
    .bind(model_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

fn key_condition(key: &str) -> (&'static str, Option<Uuid>) {
    match Uuid::parse_str(key) {
        Ok(id) => ("snapshot_id = $2", Some(id)),
        Err(_) => ("label = $2", None),
    }
}

/// A snapshot of the model by UUID or label; `lock` adds a row lock (e.g. `FOR KEY SHARE`).
pub(crate) async fn find_in(
    conn: &mut PgConnection,
    model_id: Uuid,
    key: &str,
    lock: &str,
) -> Result<Snapshot, HistoryError> {
    let (condition, id) = key_condition(key);
    let sql = format!("SELECT {COLUMNS} FROM snapshots WHERE model_id = $1 AND {condition} {lock}");
    let query = sqlx::query(&sql).bind(model_id);
    let query = match id {
        Some(id) => query.bind(id),
        None => query.bind(key),
    };
    match query.fetch_optional(&mut *conn).await? {
        Some(row) => Ok(from_row(&row)?),
        None => Err(HistoryError::SnapshotNotFound(key.to_string())),
    }
}

/// A snapshot of the model by UUID or label.
pub async fn find(pool: &PgPool, model_id: Uuid, key: &str) -> Result<Snapshot, HistoryError> {
    let mut conn = pool.acquire().await?;
    crate::history::horizon(&mut conn, model_id).await?;
    find_in(&mut conn, model_id, key, "").await
}

/// Deletes a snapshot (by UUID or label) and its parameters; refuses the one the retained
/// history starts from after a prune. Does not block the worker.
pub async fn delete(pool: &PgPool, model_id: Uuid, key: &str) -> Result<Snapshot, HistoryError> {
    let mut tx = pool.begin().await?;
    crate::history::horizon(&mut tx, model_id).await?;
    // Lock first: a prune choosing this snapshot as its floor holds it share-locked until it
    // commits, and the horizon is read again after the lock is granted.
    let snapshot = find_in(&mut tx, model_id, key, "FOR UPDATE").await?;
    let pruned_through: i64 =
        sqlx::query_scalar("SELECT history_pruned_through FROM models WHERE model_id = $1")
            .bind(model_id)
            .fetch_one(&mut *tx)
            .await?;
    if pruned_through > 0 && snapshot.model_version == pruned_through {
        let twins: Vec<Uuid> = sqlx::query_scalar(
            "SELECT snapshot_id FROM snapshots WHERE model_id = $1 AND model_version = $2
             FOR UPDATE",
        )
        .bind(model_id)
        .bind(snapshot.model_version)
        .fetch_all(&mut *tx)
        .await?;
        if twins.len() <= 1 {
            return Err(HistoryError::SnapshotInUse {
                snapshot_id: snapshot.snapshot_id,
                version: snapshot.model_version,
            });
        }
    }
    sqlx::query(
        "WITH header AS (
             DELETE FROM snapshots WHERE model_id = $1 AND snapshot_id = $2
         )
         DELETE FROM snapshot_parameters WHERE model_id = $1 AND snapshot_id = $2",
    )
    .bind(model_id)
    .bind(snapshot.snapshot_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(snapshot)
}

/// A model's automatic snapshot policy: a snapshot after a version that is `every_versions` past
/// the newest snapshot, or `every_minutes` after the newest snapshot (or the model's creation);
/// keep only the newest `keep` of the policy's snapshots (manual and labelled ones are never
/// trimmed). All None: off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPolicy {
    #[serde(default)]
    pub every_versions: Option<i32>,
    #[serde(default)]
    pub every_minutes: Option<i32>,
    #[serde(default)]
    pub keep: Option<i32>,
}

impl SnapshotPolicy {
    pub fn validate(&self) -> Result<(), HistoryError> {
        for (name, value) in [
            ("every_versions", self.every_versions),
            ("every_minutes", self.every_minutes),
            ("keep", self.keep),
        ] {
            if let Some(v) = value {
                if v < 1 {
                    return Err(HistoryError::InvalidArgument(format!(
                        "{name}: must be 1 or more (leave it out to turn it off), got {v}"
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn is_off(&self) -> bool {
        self.every_versions.is_none() && self.every_minutes.is_none()
    }
}

pub async fn policy(pool: &PgPool, model_id: Uuid) -> Result<SnapshotPolicy, HistoryError> {
    let row: Option<(Option<i32>, Option<i32>, Option<i32>)> = sqlx::query_as(
        "SELECT auto_snapshot_every_versions, auto_snapshot_every_minutes, auto_snapshot_keep
         FROM models WHERE model_id = $1",
    )
    .bind(model_id)
    .fetch_optional(pool)
    .await?;
    let (every_versions, every_minutes, keep) =
        row.ok_or_else(|| ModelError::NotFound(model_id.to_string()))?;
    Ok(SnapshotPolicy {
        every_versions,
        every_minutes,
        keep,
    })
}

/// Replaces a model's policy (None fields turn that part off).
pub async fn set_policy(
    pool: &PgPool,
    model_id: Uuid,
    policy: &SnapshotPolicy,
) -> Result<SnapshotPolicy, HistoryError> {
    policy.validate()?;
    let updated = sqlx::query(
        "UPDATE models SET auto_snapshot_every_versions = $2, auto_snapshot_every_minutes = $3,
                           auto_snapshot_keep = $4
         WHERE model_id = $1",
    )
    .bind(model_id)
    .bind(policy.every_versions)
    .bind(policy.every_minutes)
    .bind(policy.keep)
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(ModelError::NotFound(model_id.to_string()).into());
    }
    Ok(*policy)
}

/// Takes an automatic snapshot of `version` when the model's policy says one is due, and trims
/// old automatic snapshots to the policy's `keep`. Call it in the transaction that committed
/// `version`, holding the model's lock, after `versions::commit_version`: it copies the
/// parameters that transaction sees. Costs one small query when no snapshot is due.
pub async fn maybe_auto_snapshot(
    conn: &mut PgConnection,
    model_id: Uuid,
    version: i64,
) -> Result<Option<Snapshot>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT m.examples_seen, m.auto_snapshot_keep, m.history_pruned_through,
                (m.auto_snapshot_every_versions IS NOT NULL
                 AND $2 - coalesce(last.version, 0) >= m.auto_snapshot_every_versions)
                OR (m.auto_snapshot_every_minutes IS NOT NULL
                    AND now() - coalesce(last.created_at, m.created_at)
                        >= make_interval(mins => m.auto_snapshot_every_minutes)) AS due
         FROM models m
         LEFT JOIN LATERAL (
             SELECT max(s.model_version) AS version, max(s.created_at) AS created_at
             FROM snapshots s WHERE s.model_id = m.model_id
         ) last ON TRUE
         WHERE m.model_id = $1
           AND (m.auto_snapshot_every_versions IS NOT NULL
                OR m.auto_snapshot_every_minutes IS NOT NULL)",
    )
    .bind(model_id)
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    if !row.try_get::<Option<bool>, _>("due")?.unwrap_or(false) {
        return Ok(None);
    }
    let examples_seen: i64 = row.try_get("examples_seen")?;
    let keep: Option<i32> = row.try_get("auto_snapshot_keep")?;
    let pruned_through: i64 = row.try_get("history_pruned_through")?;
    let snapshot = create_in_tx(conn, model_id, version, examples_seen, None, "auto").await?;
    if let Some(keep) = keep {
        // Only the policy's own (unlabelled) snapshots, never the floor of pruned history, and
        // not those a prune or delete holds right now. Labelled automatic snapshots (the
        // worker's guard takes one before a drift adaptation) are kept.
        let trimmed = sqlx::query(
            "WITH gone AS (
                 DELETE FROM snapshots WHERE model_id = $1 AND snapshot_id IN (
                     SELECT snapshot_id FROM snapshots
                     WHERE model_id = $1 AND kind = 'auto' AND label IS NULL
                       AND NOT ($3 > 0 AND model_version = $3)
                     ORDER BY model_version DESC, created_at DESC, snapshot_id
                     OFFSET $2
                     FOR UPDATE SKIP LOCKED)
                 RETURNING snapshot_id
             )
             DELETE FROM snapshot_parameters
             WHERE model_id = $1 AND snapshot_id IN (SELECT snapshot_id FROM gone)",
        )
        .bind(model_id)
        .bind(i64::from(keep))
        .bind(pruned_through)
        .execute(&mut *conn)
        .await?;
        tracing::debug!(%model_id, rows = trimmed.rows_affected(), "trimmed automatic snapshots");
    }
    tracing::info!(%model_id, version, parameters = snapshot.parameter_count, "automatic snapshot");
    Ok(Some(snapshot))
}
