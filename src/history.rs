//! Time travel over a model's history: point-in-time reads of its parameters, the update history
//! for people and scripts, and history retention (`prune`). Snapshots live in
//! [`crate::snapshots`], rollback in [`crate::rollback`]; they share the error type and the
//! reconstruction queries defined here.
//!
//! ## Reconstruction
//! The state of a parameter at version V is its latest `parameter_updates` row with
//! `model_version <= V` (each row carries the whole state after the change); a parameter without
//! one did not exist at V. Two set-based ways compute it inside PostgreSQL:
//! - *forward*: the nearest snapshot at or below V, overlaid with the latest history row in
//!   (snapshot, V] per parameter (`olps_parameters_from`, migration V2);
//! - *backward*: the current parameters, except those with history rows above V, which take their
//!   latest row at or below V (or the snapshot's state, or nothing). Its cost grows with what
//!   changed after V, not with the model's size.
//!
//! Pruned history (`models.history_pruned_through = P`: rows of versions `1..=P` are gone) leaves
//! a version V reachable when the nearest snapshot at or below it is at P or later, or is at V
//! itself, or V is the current version.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::learner::ParamState;
use crate::models::ModelError;

/// Rows returned by `updates` when no limit is given, and the most it returns.
pub const DEFAULT_HISTORY_LIMIT: i64 = 1_000;
pub const MAX_HISTORY_LIMIT: i64 = 100_000;

/// Errors of snapshots, rollback, point-in-time reads and history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(
        "snapshot '{0}' not found for this model (give its UUID or label; \
         `olps snapshot list --model M` shows them)"
    )]
    SnapshotNotFound(String),
    #[error(
        "a snapshot labelled '{0}' already exists for this model; choose another label or delete \
         that snapshot first"
    )]
    DuplicateLabel(String),
    /// A bad argument; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    #[error(
        "version {requested} does not exist: the model is at version {current} \
         (versions run from 0, before any learning, to {current})"
    )]
    VersionNotFound { requested: i64, current: i64 },
    #[error(
        "version {version} is no longer reachable: the history of versions 1..={pruned_through} \
         was pruned; reachable are versions {pruned_through}..={current}{}",
        snapshot_list(.snapshot_versions)
    )]
    Unreachable {
        version: i64,
        pruned_through: i64,
        current: i64,
        snapshot_versions: Vec<i64>,
    },
    #[error(
        "snapshot {snapshot_id} (version {version}) is where the retained history starts (the \
         history of versions 1..={version} was pruned): deleting it would make every version \
         before the current one unreachable; take a later snapshot and prune again first"
    )]
    SnapshotInUse { snapshot_id: Uuid, version: i64 },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn snapshot_list(versions: &[i64]) -> String {
    if versions.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = versions.iter().map(i64::to_string).collect();
        format!(", and the snapshot versions {}", list.join(", "))
    }
}

/// How far a model's history reaches: its current version and the pruning horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Horizon {
    pub current: i64,
    pub pruned_through: i64,
}

pub(crate) async fn horizon(
    conn: &mut PgConnection,
    model_id: Uuid,
) -> Result<Horizon, HistoryError> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT version, history_pruned_through FROM models WHERE model_id = $1")
            .bind(model_id)
            .fetch_optional(&mut *conn)
            .await?;
    let (current, pruned_through) =
        row.ok_or_else(|| ModelError::NotFound(model_id.to_string()))?;
    Ok(Horizon {
        current,
        pruned_through,
    })
}

/// Where a reconstruction starts: a snapshot at `version`, or nothing at version 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Base {
    pub snapshot_id: Option<Uuid>,
    pub version: i64,
}

pub(crate) fn check_version(version: i64, horizon: Horizon) -> Result<(), HistoryError> {
    if version < 0 {
        return Err(HistoryError::InvalidArgument(format!(
            "version: must be 0 or more, got {version}"
        )));
    }
    if version > horizon.current {
        return Err(HistoryError::VersionNotFound {
            requested: version,
            current: horizon.current,
        });
    }
    Ok(())
}

/// The nearest snapshot at or below `version` (or nothing), checked against the pruning horizon.
/// With `lock`, the snapshot row is share-locked so a concurrent delete waits for the caller.
pub(crate) async fn base_for(
    conn: &mut PgConnection,
    model_id: Uuid,
    version: i64,
    horizon: Horizon,
    lock: bool,
) -> Result<Base, HistoryError> {
    check_version(version, horizon)?;
    let lock = if lock { "FOR KEY SHARE" } else { "" };
    let row: Option<(Uuid, i64)> = sqlx::query_as(&format!(
        "SELECT snapshot_id, model_version FROM snapshots
         WHERE model_id = $1 AND model_version <= $2
         ORDER BY model_version DESC, created_at DESC, snapshot_id
         LIMIT 1 {lock}"
    ))
    .bind(model_id)
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    let base = match row {
        Some((id, v)) => Base {
            snapshot_id: Some(id),
            version: v,
        },
        None => Base {
            snapshot_id: None,
            version: 0,
        },
    };
    let reachable = base.version >= horizon.pruned_through
        || base.version == version
        || version == horizon.current;
    if !reachable {
        let snapshot_versions: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT model_version FROM snapshots
             WHERE model_id = $1 AND model_version < $2 ORDER BY 1 LIMIT 50",
        )
        .bind(model_id)
        .bind(horizon.pruned_through)
        .fetch_all(&mut *conn)
        .await?;
        return Err(HistoryError::Unreachable {
            version,
            pruned_through: horizon.pruned_through,
            current: horizon.current,
            snapshot_versions,
        });
    }
    Ok(base)
}

/// How the backward reconstruction finds the parameters changed after the target version and
/// their latest history rows at or below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Chosen by [`choose_lookup`] from the version line's change counts.
    Auto,
    /// The changed parameters from the history rows after the target (an index range), each
    /// probed in the parameter index: best when few parameters changed since the target.
    Indexed,
    /// The changed parameters from `model_parameters.version`, their rows in one pass over the
    /// history between the base and the target, joined by hash: best when many did (a rollback
    /// of a whole model).
    Hashed,
}

/// The current-state columns every `target` CTE carries, for the rollback's comparison, from
/// the `model_parameters` row aliased `p`.
fn current_columns(p: &str) -> String {
    format!(
        "{p}.parameter_id IS NOT NULL AS exists_now,
               {p}.current_value AS cur_value, {p}.opt_m AS cur_m, {p}.opt_v AS cur_v,
               {p}.update_count AS cur_count, {p}.feature_mean AS cur_mean,
               {p}.feature_m2 AS cur_m2"
    )
}

/// The "backward" reconstruction's CTEs, for $1 model, $2 target version, $3 base version and
/// $4 base snapshot (nullable): `changed`, the parameters with history rows after $2, and
/// `target`, their state at $2 (`present` false, and a zero state, when they did not exist) next
/// to their current state (`exists_now`, `cur_*`).
///
/// The hashed form relies on `model_parameters.version` being the version of the parameter's
/// latest history row (every writer keeps it so; `assert_linear_history` checks it).
pub(crate) fn changed_and_target(lookup: Lookup) -> String {
    // The indexed form probes each changed parameter (LATERAL ... LIMIT 1 keeps the planner from
    // turning the probes into hash joins over whole tables); the hashed form joins whole sets.
    let (changed, history, joins, alias) = match lookup {
        Lookup::Hashed => (
            "SELECT p.* FROM model_parameters p
        WHERE p.model_id = $1 AND p.version > $2",
            "
    hist AS (
        SELECT DISTINCT ON (u.parameter_id)
               u.parameter_id, u.new_value, u.opt_m, u.opt_v, u.update_count, u.feature_mean,
               u.feature_m2, u.model_version
        FROM parameter_updates u
        WHERE u.model_id = $1 AND u.model_version > $3 AND u.model_version <= $2
        ORDER BY u.parameter_id, u.model_version DESC
    ),",
            "LEFT JOIN hist h ON h.parameter_id = c.parameter_id
        LEFT JOIN snapshot_parameters s
            ON s.model_id = $1 AND s.snapshot_id = $4::uuid AND s.parameter_id = c.parameter_id",
            "c",
        ),
        Lookup::Indexed | Lookup::Auto => (
            "SELECT DISTINCT u.parameter_id FROM parameter_updates u
        WHERE u.model_id = $1 AND u.model_version > $2",
            "",
            "LEFT JOIN LATERAL (
            SELECT u.new_value, u.opt_m, u.opt_v, u.update_count, u.feature_mean, u.feature_m2,
                   u.model_version
            FROM parameter_updates u
            WHERE u.model_id = $1 AND u.parameter_id = c.parameter_id
              AND u.model_version > $3 AND u.model_version <= $2
            ORDER BY u.model_version DESC
            LIMIT 1
        ) h ON TRUE
        LEFT JOIN LATERAL (
            SELECT * FROM snapshot_parameters s
            WHERE s.model_id = $1 AND s.snapshot_id = $4::uuid AND s.parameter_id = c.parameter_id
            LIMIT 1
        ) s ON TRUE
        LEFT JOIN LATERAL (
            SELECT * FROM model_parameters p
            WHERE p.model_id = $1 AND p.parameter_id = c.parameter_id
            LIMIT 1
        ) p ON TRUE",
            "p",
        ),
    };
    let current_columns = current_columns(alias);
    format!(
        "
    changed AS (
        {changed}
    ),{history}
    target AS (
        SELECT c.parameter_id,
               (h.new_value IS NOT NULL OR s.parameter_id IS NOT NULL) AS present,
               coalesce(h.new_value, s.value, 0) AS value,
               coalesce(h.opt_m, s.opt_m, 0) AS opt_m,
               coalesce(h.opt_v, s.opt_v, 0) AS opt_v,
               coalesce(h.update_count, s.update_count, 0) AS update_count,
               coalesce(h.feature_mean, s.feature_mean, 0) AS feature_mean,
               coalesce(h.feature_m2, s.feature_m2, 0) AS feature_m2,
               coalesce(h.model_version, s.last_version) AS last_version,
               {current_columns}
        FROM changed c
        {joins}
    )"
    )
}

/// The current parameters the backward reconstruction keeps as they are (those not `changed`).
pub(crate) fn unchanged_condition(lookup: Lookup) -> &'static str {
    match lookup {
        Lookup::Hashed => "p.version <= $2",
        Lookup::Indexed | Lookup::Auto => {
            "NOT EXISTS (SELECT 1 FROM changed c WHERE c.parameter_id = p.parameter_id)"
        }
    }
}

/// Resolves [`Lookup::Auto`] by a rough cost model: the indexed form costs a probe (several
/// pages) per changed parameter, the hashed one a pass over the model's parameters and a sort of
/// the history rows between the base and the target. The version line
/// (`model_versions.parameters_changed`) says how many rows lie after and before the target.
pub(crate) async fn choose_lookup(
    conn: &mut PgConnection,
    model_id: Uuid,
    version: i64,
    base: Base,
    lookup: Lookup,
) -> Result<Lookup, HistoryError> {
    if lookup != Lookup::Auto {
        return Ok(lookup);
    }
    let (after, between): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(parameters_changed) FILTER (WHERE model_version > $2), 0)::int8,
                coalesce(sum(parameters_changed) FILTER (WHERE model_version <= $2), 0)::int8
         FROM model_versions WHERE model_id = $1 AND model_version > $3",
    )
    .bind(model_id)
    .bind(version)
    .bind(base.version)
    .fetch_one(&mut *conn)
    .await?;
    if after < 20_000 {
        return Ok(Lookup::Indexed);
    }
    let parameters: i64 =
        sqlx::query_scalar("SELECT count(*) FROM model_parameters WHERE model_id = $1")
            .bind(model_id)
            .fetch_one(&mut *conn)
            .await?;
    let changed = after.min(parameters);
    Ok(if parameters + 2 * between < after + 8 * changed {
        Lookup::Hashed
    } else {
        Lookup::Indexed
    })
}

/// Memory for the sorts and hashes of a reconstruction of up to millions of parameters (they
/// spill to disk, several times slower, under the 4MB default). Set for one transaction.
pub(crate) const RECONSTRUCTION_WORK_MEM: &str = "SET LOCAL work_mem = '128MB'";

/// The "forward" reconstruction as a `target` CTE over every parameter that exists now or
/// existed at $2, with the columns of [`changed_and_target`]'s.
pub(crate) const FULL_TARGET: &str = "
    target AS (
        SELECT coalesce(a.parameter_id, p.parameter_id) AS parameter_id,
               a.parameter_id IS NOT NULL AS present,
               coalesce(a.value, 0) AS value,
               coalesce(a.opt_m, 0) AS opt_m,
               coalesce(a.opt_v, 0) AS opt_v,
               coalesce(a.update_count, 0) AS update_count,
               coalesce(a.feature_mean, 0) AS feature_mean,
               coalesce(a.feature_m2, 0) AS feature_m2,
               a.last_version,
               p.parameter_id IS NOT NULL AS exists_now,
               p.current_value AS cur_value, p.opt_m AS cur_m, p.opt_v AS cur_v,
               p.update_count AS cur_count, p.feature_mean AS cur_mean, p.feature_m2 AS cur_m2
        FROM olps_parameters_from($1, $2, $3, $4::uuid) a
        FULL JOIN (SELECT * FROM model_parameters mp WHERE mp.model_id = $1) p
            ON p.parameter_id = a.parameter_id
    )";

/// One parameter at a version: its value, optimizer and standardization state, and the version
/// that last changed it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParameterAt {
    pub parameter_id: String,
    pub value: f64,
    pub opt_m: f64,
    pub opt_v: f64,
    pub update_count: i64,
    pub feature_mean: f64,
    pub feature_m2: f64,
    pub last_changed_version: i64,
}

impl ParameterAt {
    pub fn state(&self) -> ParamState {
        ParamState {
            value: self.value,
            m: self.opt_m,
            v: self.opt_v,
            count: self.update_count,
            mean: self.feature_mean,
            m2: self.feature_m2,
        }
    }

    fn from_row(row: &PgRow) -> Result<ParameterAt, sqlx::Error> {
        Ok(ParameterAt {
            parameter_id: row.try_get(0)?,
            value: row.try_get(1)?,
            opt_m: row.try_get(2)?,
            opt_v: row.try_get(3)?,
            update_count: row.try_get(4)?,
            feature_mean: row.try_get(5)?,
            feature_m2: row.try_get(6)?,
            last_changed_version: row.try_get(7)?,
        })
    }
}

/// Every parameter of a model at one version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParametersAt {
    pub model_id: Uuid,
    pub version: i64,
    pub parameters: Vec<ParameterAt>,
}

/// Which version a point-in-time read is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Current,
    Version(i64),
    /// The version the model was at, at that moment (`olps_version_at`).
    Time(DateTime<Utc>),
}

/// How a point-in-time read reconstructs: `Auto` chooses the one with less history to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPlan {
    Auto,
    Forward,
    Backward(Lookup),
}

/// The parameters of a model at a version, read in one consistent snapshot of the database.
pub async fn parameters_at(
    pool: &PgPool,
    model_id: Uuid,
    at: At,
) -> Result<ParametersAt, HistoryError> {
    parameters_at_with(pool, model_id, at, ReadPlan::Auto).await
}

/// [`parameters_at`] with a chosen plan (tests compare the two).
pub async fn parameters_at_with(
    pool: &PgPool,
    model_id: Uuid,
    at: At,
    plan: ReadPlan,
) -> Result<ParametersAt, HistoryError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    sqlx::query(RECONSTRUCTION_WORK_MEM)
        .execute(&mut *tx)
        .await?;
    let horizon = horizon(&mut tx, model_id).await?;
    let version = match at {
        At::Current => horizon.current,
        At::Version(v) => v,
        At::Time(t) => {
            sqlx::query_scalar("SELECT olps_version_at($1, $2)")
                .bind(model_id)
                .bind(t)
                .fetch_one(&mut *tx)
                .await?
        }
    };
    check_version(version, horizon)?;
    let rows = if version == horizon.current && plan != ReadPlan::Forward {
        sqlx::query(
            "SELECT parameter_id, current_value, opt_m, opt_v, update_count, feature_mean,
                    feature_m2, version
             FROM model_parameters WHERE model_id = $1
             ORDER BY parameter_id COLLATE \"C\"",
        )
        .bind(model_id)
        .fetch_all(&mut *tx)
        .await?
    } else {
        let base = base_for(&mut tx, model_id, version, horizon, false).await?;
        let forward = match plan {
            ReadPlan::Forward => true,
            // Backward needs the history above `version`, which pruning may have removed.
            ReadPlan::Backward(_) => version < horizon.pruned_through,
            ReadPlan::Auto => {
                version < horizon.pruned_through
                    || version - base.version <= horizon.current - version
            }
        };
        let sql = if forward {
            "SELECT * FROM olps_parameters_from($1, $2, $3, $4::uuid)
             ORDER BY parameter_id COLLATE \"C\""
                .to_string()
        } else {
            let lookup = match plan {
                ReadPlan::Backward(lookup) => lookup,
                _ => Lookup::Auto,
            };
            let lookup = choose_lookup(&mut tx, model_id, version, base, lookup).await?;
            format!(
                "WITH {}
                 SELECT * FROM (
                     SELECT p.parameter_id, p.current_value AS value, p.opt_m, p.opt_v,
                            p.update_count, p.feature_mean, p.feature_m2,
                            p.version AS last_version
                     FROM model_parameters p
                     WHERE p.model_id = $1 AND {}
                     UNION ALL
                     SELECT parameter_id, value, opt_m, opt_v, update_count, feature_mean,
                            feature_m2, last_version
                     FROM target WHERE present
                 ) r
                 ORDER BY parameter_id COLLATE \"C\"",
                changed_and_target(lookup),
                unchanged_condition(lookup)
            )
        };
        sqlx::query(&sql)
            .bind(model_id)
            .bind(version)
            .bind(base.version)
            .bind(base.snapshot_id)
            .fetch_all(&mut *tx)
            .await?
    };
    tx.commit().await?;
    let parameters = rows
        .iter()
        .map(ParameterAt::from_row)
        .collect::<Result<_, _>>()?;
    Ok(ParametersAt {
        model_id,
        version,
        parameters,
    })
}

/// Which history rows `updates` returns: newest first, up to `limit` (default
/// [`DEFAULT_HISTORY_LIMIT`]); `since` is inclusive, `until` exclusive.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub parameter: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: Option<i64>,
}

/// One `parameter_updates` row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdateRow {
    pub model_version: i64,
    pub parameter_id: String,
    pub old_value: Option<f64>,
    pub new_value: f64,
    pub update_type: String,
    pub learning_rate: Option<f64>,
    pub source: Option<String>,
    pub timestamp: DateTime<Utc>,
    pub opt_m: f64,
    pub opt_v: f64,
    pub update_count: i64,
    pub feature_mean: f64,
    pub feature_m2: f64,
    pub metadata: Option<serde_json::Value>,
}

impl HistoryFilter {
    pub fn validate(&self) -> Result<i64, HistoryError> {
        let limit = self.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
        if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
            return Err(HistoryError::InvalidArgument(format!(
                "limit: must be between 1 and {MAX_HISTORY_LIMIT}, got {limit}"
            )));
        }
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if since >= until {
                return Err(HistoryError::InvalidArgument(format!(
                    "since ({since}) must be before until ({until})"
                )));
            }
        }
        if let Some(p) = &self.parameter {
            if p.is_empty() {
                return Err(HistoryError::InvalidArgument(
                    "parameter: must not be empty".into(),
                ));
            }
        }
        Ok(limit)
    }
}

/// A model's update history, newest first (by version, then parameter).
pub async fn updates(
    pool: &PgPool,
    model_id: Uuid,
    filter: &HistoryFilter,
) -> Result<Vec<UpdateRow>, HistoryError> {
    let limit = filter.validate()?;
    let mut conn = pool.acquire().await?;
    horizon(&mut conn, model_id).await?;
    // Only the conditions in use, so each shape gets its own plan (and index).
    let mut sql = String::from(
        "SELECT model_version, parameter_id, old_value, new_value, update_type, learning_rate,
                source, timestamp, opt_m, opt_v, update_count, feature_mean, feature_m2, metadata
         FROM parameter_updates WHERE model_id = $1",
    );
    let mut n = 2;
    let mut next = |sql: &mut String, condition: &str| {
        sql.push_str(&condition.replace('?', &format!("${n}")));
        n += 1;
    };
    if filter.parameter.is_some() {
        next(&mut sql, " AND parameter_id = ?");
    }
    if filter.since.is_some() {
        next(&mut sql, " AND timestamp >= ?");
    }
    if filter.until.is_some() {
        next(&mut sql, " AND timestamp < ?");
    }
    next(
        &mut sql,
        " ORDER BY model_version DESC, parameter_id COLLATE \"C\" LIMIT ?",
    );
    let mut query = sqlx::query(&sql).bind(model_id);
    if let Some(p) = &filter.parameter {
        query = query.bind(p);
    }
    if let Some(t) = filter.since {
        query = query.bind(t);
    }
    if let Some(t) = filter.until {
        query = query.bind(t);
    }
    let rows = query.bind(limit).fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|r| {
            Ok(UpdateRow {
                model_version: r.try_get(0)?,
                parameter_id: r.try_get(1)?,
                old_value: r.try_get(2)?,
                new_value: r.try_get(3)?,
                update_type: r.try_get(4)?,
                learning_rate: r.try_get(5)?,
                source: r.try_get(6)?,
                timestamp: r.try_get(7)?,
                opt_m: r.try_get(8)?,
                opt_v: r.try_get(9)?,
                update_count: r.try_get(10)?,
                feature_mean: r.try_get(11)?,
                feature_m2: r.try_get(12)?,
                metadata: r.try_get(13)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(HistoryError::from)
}

/// What `prune` did (or, with `dry_run`, would do), and why.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub model_id: Uuid,
    pub before: DateTime<Utc>,
    pub dry_run: bool,
    pub current_version: i64,
    /// The newest version whose every predecessor was created before `before`.
    pub last_version_before: i64,
    /// The snapshot the retained history now starts from, when there is one at or below
    /// `last_version_before`.
    pub floor_snapshot: Option<Uuid>,
    /// History of versions 1..=this is gone (was `previous_pruned_through`).
    pub pruned_through: i64,
    pub previous_pruned_through: i64,
    pub deleted_rows: i64,
    /// History rows older than `before` that were kept: their versions come after the floor
    /// snapshot, so reconstructing them (and everything later) needs those rows.
    pub kept_rows_before: i64,
    /// Versions that can no longer be reconstructed (`first..=last`), apart from
    /// `unreachable_except` (versions with a snapshot of their own).
    pub unreachable: Option<(i64, i64)>,
    pub unreachable_except: Vec<i64>,
    /// What was kept and why, for people.
    pub notes: Vec<String>,
}

/// Deletes a model's history rows older than `before`, but only as far as a snapshot still covers
/// every version that remains reachable: with S the newest snapshot at a version all of whose
/// history is older than `before`, the rows of versions 1..=S go, and every version from S on
/// stays reconstructible (S plus the rows above it). Versions below S become unreachable (except
/// those with a snapshot of their own); rows older than `before` above S are kept. Without such a
/// snapshot nothing is deleted. The floor snapshot cannot be deleted while it is the floor.
pub async fn prune(
    pool: &PgPool,
    model_id: Uuid,
    before: DateTime<Utc>,
    dry_run: bool,
) -> Result<PruneReport, HistoryError> {
    let mut tx = pool.begin().await?;
    let h = horizon(&mut tx, model_id).await?;
    let last_version_before: i64 = sqlx::query_scalar(
        "SELECT coalesce(min(model_version), $2 + 1) - 1 FROM model_versions
         WHERE model_id = $1 AND created_at >= $3",
    )
    .bind(model_id)
    .bind(h.current)
    .bind(before)
    .fetch_one(&mut *tx)
    .await?;
    // The floor candidate, share-locked: a concurrent `snapshot delete` of it waits for us and
    // then sees the new horizon.
    let floor: Option<(Uuid, i64)> = sqlx::query_as(
        "SELECT snapshot_id, model_version FROM snapshots
         WHERE model_id = $1 AND model_version <= $2 AND model_version > 0
         ORDER BY model_version DESC, created_at DESC, snapshot_id
         LIMIT 1 FOR KEY SHARE",
    )
    .bind(model_id)
    .bind(last_version_before)
    .fetch_optional(&mut *tx)
    .await?;
    let mut report = PruneReport {
        model_id,
        before,
        dry_run,
        current_version: h.current,
        last_version_before,
        floor_snapshot: None,
        pruned_through: h.pruned_through,
        previous_pruned_through: h.pruned_through,
        deleted_rows: 0,
        kept_rows_before: 0,
        unreachable: None,
        unreachable_except: Vec::new(),
        notes: Vec::new(),
    };
    let count_kept = |from: i64| {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM parameter_updates
             WHERE model_id = $1 AND model_version > $2 AND timestamp < $3",
        )
        .bind(model_id)
        .bind(from)
        .bind(before)
    };
    match floor {
        None => {
            report.kept_rows_before = count_kept(h.pruned_through).fetch_one(&mut *tx).await?;
            report.notes.push(format!(
                "nothing deleted: no snapshot at or below version {last_version_before} (the last \
                 version older than {before}) covers the history to delete; take one \
                 (`olps snapshot create`) or enable automatic snapshots, then prune again"
            ));
        }
        Some((_, version)) if version <= h.pruned_through => {
            report.kept_rows_before = count_kept(h.pruned_through).fetch_one(&mut *tx).await?;
            report.notes.push(format!(
                "nothing deleted: the history of versions 1..={} is already pruned and no later \
                 snapshot at or below version {last_version_before} covers more",
                h.pruned_through
            ));
        }
        Some((snapshot_id, version)) => {
            report.floor_snapshot = Some(snapshot_id);
            report.pruned_through = version;
            report.deleted_rows = if dry_run {
                sqlx::query_scalar(
                    "SELECT count(*) FROM parameter_updates
                     WHERE model_id = $1 AND model_version <= $2",
                )
                .bind(model_id)
                .bind(version)
                .fetch_one(&mut *tx)
                .await?
            } else {
                let deleted = sqlx::query(
                    "DELETE FROM parameter_updates WHERE model_id = $1 AND model_version <= $2",
                )
                .bind(model_id)
                .bind(version)
                .execute(&mut *tx)
                .await?
                .rows_affected() as i64;
                // Last, so the model row is locked (and a worker batch or rollback waits) only
                // for the moment before commit; a rollback holding it makes this wait, so it never
                // reads history this deletes with the old horizon.
                sqlx::query(
                    "UPDATE models
                     SET history_pruned_through = greatest(history_pruned_through, $2)
                     WHERE model_id = $1",
                )
                .bind(model_id)
                .bind(version)
                .execute(&mut *tx)
                .await?;
                deleted
            };
            report.kept_rows_before = count_kept(version).fetch_one(&mut *tx).await?;
            report.notes.push(format!(
                "{} the history of versions 1..={version}: snapshot {snapshot_id} (version \
                 {version}) covers them; versions {version}..={} stay reachable",
                if dry_run { "would delete" } else { "deleted" },
                h.current
            ));
        }
    }
    if report.kept_rows_before > 0 {
        report.notes.push(format!(
            "kept {} history rows older than {before}: they belong to versions {}..={}, which \
             no snapshot covers, and reconstructing those versions (and every later one) needs \
             them",
            report.kept_rows_before,
            report.pruned_through + 1,
            last_version_before
        ));
    }
    if report.pruned_through > 1 {
        report.unreachable_except = sqlx::query_scalar(
            "SELECT DISTINCT model_version FROM snapshots
             WHERE model_id = $1 AND model_version BETWEEN 1 AND $2 - 1 ORDER BY 1",
        )
        .bind(model_id)
        .bind(report.pruned_through)
        .fetch_all(&mut *tx)
        .await?;
        report.unreachable = Some((1, report.pruned_through - 1));
        let except = if report.unreachable_except.is_empty() {
            String::new()
        } else {
            format!(
                " (except {}, which have snapshots of their own)",
                report
                    .unreachable_except
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        report.notes.push(format!(
            "versions 1..={} {} reachable for rollback or point-in-time reads{except}",
            report.pruned_through - 1,
            if dry_run {
                "would no longer be"
            } else {
                "are no longer"
            }
        ));
    }
    tx.commit().await?;
    Ok(report)
}

/// Parses a moment given by a person or a script: RFC 3339 (`2026-11-25T17:00:00Z`), the same
/// with a space, a naive date-time (UTC), or a date (midnight UTC).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(&t.replacen(' ', "T", 1)) {
        return Ok(dt.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, format) {
            return Ok(naive.and_utc());
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(date.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    Err(format!(
        "'{text}' is not a time: use RFC 3339 like 2026-11-25T17:00:00Z, or 2026-11-25 17:00:00 \
         (UTC), or a date"
    ))
}

/// Times of the time-travel operations on a synthetic model ([`measure_time_travel`]).
#[derive(Debug, Clone, Serialize)]
pub struct TimeTravelTimings {
    pub parameters: i64,
    /// Building the model: 4 versions written set-based (all, all, all, 1% of the parameters).
    pub setup_ms: f64,
    /// Snapshot of version 2 (every parameter).
    pub snapshot_ms: f64,
    /// Point-in-time read of version 2, from its snapshot.
    pub read_snapshot_version_ms: f64,
    /// Point-in-time read of version 1, from history alone (no snapshot at or below it).
    pub read_history_version_ms: f64,
    /// Point-in-time read of the current version.
    pub read_current_ms: f64,
    /// Point-in-time read of version 3, one version back (1% of the parameters changed since).
    pub read_previous_version_ms: f64,
    /// Rollback of the last version (1% of the parameters differ), the common "undo" case.
    pub rollback_last_version_ms: f64,
    /// Rollback to the snapshot (every parameter differs).
    pub rollback_to_snapshot_ms: f64,
    /// Rollback to version 1, rebuilt from history (every parameter differs).
    pub rollback_from_history_ms: f64,
    /// Roll forward to version 4 (every parameter differs).
    pub roll_forward_ms: f64,
}

/// Creates a model with `parameters` parameters written set-based over four versions, then times
/// a snapshot, point-in-time reads and rollbacks on it (the benchmarks reuse this). The model
/// (named `time-travel-…`) is left in place.
pub async fn measure_time_travel(
    pool: &PgPool,
    parameters: i64,
) -> Result<TimeTravelTimings, HistoryError> {
    use std::time::Instant;

    use crate::learner::{LearnerConfig, ModelKind};
    use crate::rollback::{rollback, RollbackTarget};

    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let model = crate::models::create(
        pool,
        &crate::models::NewModel {
            name: format!("time-travel-{parameters}-{}", Uuid::new_v4().simple()),
            kind: ModelKind::Linear,
            settings: LearnerConfig::default(),
        },
    )
    .await?;
    let id = model.model_id;
    let started = Instant::now();
    let mut snapshot = None;
    let mut snapshot_ms = 0.0;
    for (version, every) in [(1i64, 1i64), (2, 1), (3, 1), (4, 100)] {
        let mut tx = pool.begin().await?;
        let changed = sqlx::query(
            "WITH new AS (
                 SELECT 'f' || i AS parameter_id, sin(i * $2::float8) AS value,
                        cos(i * $2::float8) AS m, 1 + i % 7 AS v, $2 * 10 AS cnt
                 FROM generate_series(1, $3::int8) i WHERE i % $4 = 0
             ), old AS (
                 SELECT p.parameter_id, p.current_value FROM model_parameters p
                 WHERE p.model_id = $1
             ), up AS (
                 INSERT INTO model_parameters AS p
                     (model_id, parameter_id, current_value, opt_m, opt_v, update_count,
                      version, last_updated)
                 SELECT $1, parameter_id, value, m, v, cnt, $2, now() FROM new
                 ON CONFLICT (model_id, parameter_id) DO UPDATE SET
                     current_value = EXCLUDED.current_value, opt_m = EXCLUDED.opt_m,
                     opt_v = EXCLUDED.opt_v, update_count = EXCLUDED.update_count,
                     version = EXCLUDED.version, last_updated = EXCLUDED.last_updated
             )
             INSERT INTO parameter_updates
                 (model_id, model_version, parameter_id, old_value, new_value, opt_m, opt_v,
                  update_count, update_type, learning_rate, source)
             SELECT $1, $2, n.parameter_id, o.current_value, n.value, n.m, n.v, n.cnt, 'batch',
                    0.01, 'time-travel'
             FROM new n LEFT JOIN old o ON o.parameter_id = n.parameter_id",
        )
        .bind(id)
        .bind(version)
        .bind(parameters)
        .bind(every)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let record = crate::versions::VersionRecord {
            kind: "gradient",
            parameters_changed: changed as i32,
            source: Some("time-travel".into()),
            ..Default::default()
        };
        crate::versions::commit_version(&mut tx, id, version, version * 10, &record).await?;
        tx.commit().await?;
        if version == 2 {
            let t = Instant::now();
            snapshot = Some(crate::snapshots::create(pool, id, Some("time-travel")).await?);
            snapshot_ms = ms(t);
        }
    }
    sqlx::query("ANALYZE parameter_updates, model_parameters")
        .execute(pool)
        .await?;
    let setup_ms = ms(started) - snapshot_ms;
    let snapshot = snapshot.expect("snapshot of version 2");
    let current = 4;

    let t = Instant::now();
    let read = parameters_at(pool, id, At::Version(snapshot.model_version)).await?;
    let read_snapshot_version_ms = ms(t);
    debug_assert_eq!(read.parameters.len() as i64, parameters);
    let t = Instant::now();
    parameters_at(pool, id, At::Version(1)).await?;
    let read_history_version_ms = ms(t);
    let t = Instant::now();
    parameters_at(pool, id, At::Version(current)).await?;
    let read_current_ms = ms(t);
    let t = Instant::now();
    parameters_at(pool, id, At::Version(current - 1)).await?;
    let read_previous_version_ms = ms(t);

    // Undo the last version (a rollback to 3), then return to 4, untimed.
    let t = Instant::now();
    rollback(pool, id, &RollbackTarget::Version(current - 1)).await?;
    let rollback_last_version_ms = ms(t);
    rollback(pool, id, &RollbackTarget::Version(current)).await?;

    let t = Instant::now();
    rollback(
        pool,
        id,
        &RollbackTarget::Snapshot(snapshot.snapshot_id.to_string()),
    )
    .await?;
    let rollback_to_snapshot_ms = ms(t);
    let t = Instant::now();
    rollback(pool, id, &RollbackTarget::Version(1)).await?;
    let rollback_from_history_ms = ms(t);
    let t = Instant::now();
    rollback(pool, id, &RollbackTarget::Version(4)).await?;
    let roll_forward_ms = ms(t);
    Ok(TimeTravelTimings {
        parameters,
        setup_ms,
        snapshot_ms,
        read_snapshot_version_ms,
        read_history_version_ms,
        read_current_ms,
        read_previous_version_ms,
        rollback_last_version_ms,
        rollback_to_snapshot_ms,
        rollback_from_history_ms,
        roll_forward_ms,
    })
}
