//! Snapshots: every parameter and its optimizer state at one model version, copied inside
//! PostgreSQL (`INSERT … SELECT`), never through the client. They are the starting points of
//! point-in-time reads and rollbacks, and what makes pruning history safe. A model may take them
//! automatically every N versions and/or T minutes ([`SnapshotPolicy`], stored on `models`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

use super::error::TimelineError;
use super::reconstruct::horizon;
use crate::models::ModelError;

pub const MAX_LABEL_LEN: usize = 200;

/// Labels olps writes itself start with this prefix, and no one else may create one (checked
/// here and by the `snapshots_system_label` constraint), so the system's labels never collide
/// with a user's. Compared case-insensitively.
pub const SYSTEM_LABEL_PREFIX: &str = "olps:";

/// The label of the snapshot the worker takes before a drift adaptation applied at `version`.
pub fn before_adaptation_label(version: i64) -> String {
    format!("{SYSTEM_LABEL_PREFIX}before-adaptation-v{version}")
}

/// Whether a label is in the namespace olps reserves for itself ([`SYSTEM_LABEL_PREFIX`]).
pub fn is_system_label(label: &str) -> bool {
    label
        .get(..SYSTEM_LABEL_PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(SYSTEM_LABEL_PREFIX))
}

/// Who took a snapshot: a person or script (`manual`), or olps itself (`auto`: the policy, or
/// the worker before a drift adaptation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum SnapshotKind {
    Manual,
    Auto,
}

impl SnapshotKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::Manual => "manual",
            SnapshotKind::Auto => "auto",
        }
    }
}

impl std::fmt::Display for SnapshotKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for SnapshotKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A snapshot's header (its parameters are in `snapshot_parameters`).
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct Snapshot {
    pub snapshot_id: Uuid,
    pub model_id: Uuid,
    pub model_version: i64,
    pub label: Option<String>,
    pub kind: SnapshotKind,
    pub parameter_count: i64,
    pub examples_seen: i64,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "snapshot_id, model_id, model_version, label, kind, parameter_count, examples_seen, created_at";

/// A label: 1..=200 characters, no control characters, not a UUID (snapshots are addressed by
/// UUID or label), not starting with `olps:` (reserved for the labels olps writes itself).
pub fn validate_label(label: &str) -> Result<(), TimelineError> {
    let invalid = |m: &str| Err(TimelineError::InvalidArgument(format!("label: {m}")));
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
    if label == "." || label == ".." {
        return invalid("must not be '.' or '..' (URLs drop such path segments)");
    }
    if is_system_label(label) {
        return invalid(&format!(
            "labels starting with '{SYSTEM_LABEL_PREFIX}' are reserved for the snapshots olps \
             takes itself; choose another label"
        ));
    }
    Ok(())
}

/// Snapshots the model's current version, in a transaction the caller has just begun (this
/// makes it REPEATABLE READ, so the version and the parameters come from one committed state
/// without blocking the worker); the caller commits.
pub async fn create(
    tx: &mut PgConnection,
    model_id: Uuid,
    label: Option<&str>,
) -> Result<Snapshot, TimelineError> {
    if let Some(label) = label {
        validate_label(label)?;
    }
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT version, examples_seen FROM models WHERE model_id = $1")
            .bind(model_id)
            .fetch_optional(&mut *tx)
            .await?;
    let (version, examples_seen) = row.ok_or_else(|| ModelError::NotFound(model_id.to_string()))?;
    copy(
        tx,
        model_id,
        version,
        examples_seen,
        label,
        SnapshotKind::Manual,
    )
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            TimelineError::DuplicateLabel(label.unwrap_or_default().to_string())
        }
        _ => TimelineError::Db(e),
    })
}

/// Copies the model's parameters as the caller's transaction sees them, recorded as `version`.
/// The caller guarantees they are that version's (a lock, or a REPEATABLE READ snapshot).
pub async fn copy(
    conn: &mut PgConnection,
    model_id: Uuid,
    version: i64,
    examples_seen: i64,
    label: Option<&str>,
    kind: SnapshotKind,
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
    sqlx::query_as(&format!(
        "UPDATE snapshots SET parameter_count = $3 WHERE model_id = $1 AND snapshot_id = $2
         RETURNING {COLUMNS}"
    ))
    .bind(model_id)
    .bind(snapshot_id)
    .bind(copied)
    .fetch_one(&mut *conn)
    .await
}

/// A model's snapshots, oldest version first.
pub async fn list(conn: &mut PgConnection, model_id: Uuid) -> Result<Vec<Snapshot>, TimelineError> {
    horizon(&mut *conn, model_id).await?;
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM snapshots WHERE model_id = $1
         ORDER BY model_version, created_at, snapshot_id"
    ))
    .bind(model_id)
    .fetch_all(&mut *conn)
    .await?)
}

/// The newest `limit` snapshots of versions `1..below` (id and version), newest first.
pub async fn recent(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    below: i64,
    limit: i64,
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT snapshot_id, model_version FROM snapshots
         WHERE model_id = $1 AND model_version BETWEEN 1 AND $2 - 1
         ORDER BY model_version DESC, created_at DESC LIMIT $3",
    )
    .bind(model_id)
    .bind(below)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The row lock [`find`] takes on the snapshot it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    None,
    /// Keeps a concurrent delete waiting (reads that start from the snapshot).
    KeyShare,
    /// For a delete.
    Update,
}

/// A snapshot of the model by UUID or label, locked as asked for the rest of the caller's
/// transaction. A missing model and a missing snapshot are told apart.
pub async fn find(
    conn: &mut PgConnection,
    model_id: Uuid,
    key: &str,
    lock: Lock,
) -> Result<Snapshot, TimelineError> {
    let lock = match lock {
        Lock::None => "",
        Lock::KeyShare => "FOR KEY SHARE",
        Lock::Update => "FOR UPDATE",
    };
    let (condition, id) = match Uuid::parse_str(key) {
        Ok(id) => ("snapshot_id = $2", Some(id)),
        Err(_) => ("label = $2", None),
    };
    let sql = format!("SELECT {COLUMNS} FROM snapshots WHERE model_id = $1 AND {condition} {lock}");
    let query = sqlx::query_as(&sql).bind(model_id);
    let query = match id {
        Some(id) => query.bind(id),
        None => query.bind(key),
    };
    match query.fetch_optional(&mut *conn).await? {
        Some(snapshot) => Ok(snapshot),
        None => {
            horizon(&mut *conn, model_id).await?;
            Err(TimelineError::SnapshotNotFound(key.to_string()))
        }
    }
}

/// Deletes a snapshot (by UUID or label) and its parameters; refuses the one the retained
/// history starts from after a prune. Does not block the worker. Runs in the caller's
/// transaction, which holds the snapshot's lock until it ends.
pub async fn delete(
    tx: &mut PgConnection,
    model_id: Uuid,
    key: &str,
) -> Result<Snapshot, TimelineError> {
    horizon(&mut *tx, model_id).await?;
    // Lock first: a prune choosing this snapshot as its floor holds it share-locked until it
    // commits, and the horizon is read again after the lock is granted.
    let snapshot = find(&mut *tx, model_id, key, Lock::Update).await?;
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
            return Err(TimelineError::SnapshotInUse {
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
    pub fn validate(&self) -> Result<(), TimelineError> {
        for (name, value) in [
            ("every_versions", self.every_versions),
            ("every_minutes", self.every_minutes),
            ("keep", self.keep),
        ] {
            if let Some(v) = value {
                if v < 1 {
                    return Err(TimelineError::InvalidArgument(format!(
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

pub async fn policy(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
) -> Result<SnapshotPolicy, TimelineError> {
    let row: Option<(Option<i32>, Option<i32>, Option<i32>)> = sqlx::query_as(
        "SELECT auto_snapshot_every_versions, auto_snapshot_every_minutes, auto_snapshot_keep
         FROM models WHERE model_id = $1",
    )
    .bind(model_id)
    .fetch_optional(db)
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
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    policy: &SnapshotPolicy,
) -> Result<SnapshotPolicy, TimelineError> {
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
    .execute(db)
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
    #[derive(FromRow)]
    struct Due {
        examples_seen: i64,
        auto_snapshot_keep: Option<i32>,
        history_pruned_through: i64,
        due: Option<bool>,
    }
    let row: Option<Due> = sqlx::query_as(
        "SELECT m.examples_seen, m.auto_snapshot_keep, m.history_pruned_through,
                (m.auto_snapshot_every_versions IS NOT NULL
                 AND $2 - coalesce(last.version, 0) >= m.auto_snapshot_every_versions)
                OR (m.auto_snapshot_every_minutes IS NOT NULL
                    AND now() - coalesce(last.created_at, m.created_at)
                        >= make_interval(mins => m.auto_snapshot_every_minutes)) AS due
         FROM models m
         -- One row even without snapshots (an aggregate); named by $1, not correlated with
         -- m, since Citus joins no correlated subquery with a reference table.
         CROSS JOIN (
             SELECT max(s.model_version) AS version, max(s.created_at) AS created_at
             FROM snapshots s WHERE s.model_id = $1
         ) last
         WHERE m.model_id = $1
           AND (m.auto_snapshot_every_versions IS NOT NULL
                OR m.auto_snapshot_every_minutes IS NOT NULL)",
    )
    .bind(model_id)
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(Due {
        examples_seen,
        auto_snapshot_keep: keep,
        history_pruned_through: pruned_through,
        due: Some(true),
    }) = row
    else {
        return Ok(None);
    };
    let snapshot = copy(
        conn,
        model_id,
        version,
        examples_seen,
        None,
        SnapshotKind::Auto,
    )
    .await?;
    if let Some(keep) = keep {
        // Only the policy's own (unlabelled) snapshots, never the floor of pruned history, and
        // not those a prune or delete holds right now. Labelled automatic snapshots (the
        // worker's guard takes one before a drift adaptation) are kept.
        let trimmed = sqlx::query(
            "WITH gone AS (
                 DELETE FROM snapshots WHERE model_id = $1 AND snapshot_id IN (
                     SELECT snapshot_id FROM snapshots
                     WHERE model_id = $1 AND kind = $4 AND label IS NULL
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
        .bind(SnapshotKind::Auto)
        .execute(&mut *conn)
        .await?;
        tracing::debug!(%model_id, rows = trimmed.rows_affected(), "trimmed automatic snapshots");
    }
    tracing::info!(%model_id, version, parameters = snapshot.parameter_count, "automatic snapshot");
    Ok(Some(snapshot))
}
