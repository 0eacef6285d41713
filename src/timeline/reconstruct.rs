//! The state of every parameter at a version, computed set-based inside PostgreSQL (see the
//! module documentation of [`crate::timeline`] for the two ways), and point-in-time reads.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::error::TimelineError;
use crate::learner::ParamState;
use crate::models::{self, Horizon};

/// How far a model's history reaches (see [`models::horizon`]), as the version line's error.
pub(crate) async fn horizon(
    conn: &mut PgConnection,
    model_id: Uuid,
) -> Result<Horizon, TimelineError> {
    Ok(models::horizon(&mut *conn, model_id).await?)
}

/// Where a reconstruction starts: a snapshot at `version`, or nothing at version 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Base {
    pub snapshot_id: Option<Uuid>,
    pub version: i64,
}

pub(crate) fn check_version(version: i64, horizon: Horizon) -> Result<(), TimelineError> {
    if version < 0 {
        return Err(TimelineError::InvalidArgument(format!(
            "version: must be 0 or more, got {version}"
        )));
    }
    if version > horizon.current {
        return Err(TimelineError::VersionNotFound {
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
) -> Result<Base, TimelineError> {
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
        return Err(TimelineError::Unreachable {
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
) -> Result<Lookup, TimelineError> {
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

/// The forward reconstruction: the parameters of model $1 at version $2 from snapshot $4 (taken
/// at version $3; NULL and 0 to start from nothing) overlaid with each parameter's latest
/// history row in ($3, $2], as a subquery with the columns of `olps_parameters_from`
/// (migration V2), whose body it is. Written out instead of calling the function: PostgreSQL
/// inlines that SQL function into the same plan anyway, and Citus sends a statement to the
/// model's node whole only when it calls no function that reads distributed tables itself.
pub(crate) const PARAMETERS_FROM: &str = "(
    WITH hist AS (
        SELECT DISTINCT ON (u.parameter_id)
               u.parameter_id, u.new_value, u.opt_m, u.opt_v, u.update_count, u.feature_mean,
               u.feature_m2, u.model_version
        FROM parameter_updates u
        WHERE u.model_id = $1 AND u.model_version > $3 AND u.model_version <= $2
        ORDER BY u.parameter_id, u.model_version DESC
    ), snap AS (
        SELECT s.parameter_id, s.value, s.opt_m, s.opt_v, s.update_count, s.feature_mean,
               s.feature_m2, s.last_version
        FROM snapshot_parameters s
        WHERE s.model_id = $1 AND s.snapshot_id = $4::uuid
    )
    SELECT coalesce(h.parameter_id, s.parameter_id) AS parameter_id,
           coalesce(h.new_value, s.value) AS value,
           coalesce(h.opt_m, s.opt_m) AS opt_m,
           coalesce(h.opt_v, s.opt_v) AS opt_v,
           coalesce(h.update_count, s.update_count) AS update_count,
           coalesce(h.feature_mean, s.feature_mean) AS feature_mean,
           coalesce(h.feature_m2, s.feature_m2) AS feature_m2,
           coalesce(h.model_version, s.last_version) AS last_version
    FROM hist h FULL JOIN snap s ON s.parameter_id = h.parameter_id
)";

/// The "forward" reconstruction ([`PARAMETERS_FROM`]) as a `target` CTE over every parameter that
/// exists now or existed at $2, with the columns of [`changed_and_target`]'s.
pub(crate) fn full_target() -> String {
    format!(
        "
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
        FROM {PARAMETERS_FROM} a
        FULL JOIN (SELECT * FROM model_parameters mp WHERE mp.model_id = $1) p
            ON p.parameter_id = a.parameter_id
    )"
    )
}

/// One parameter at a version: its value, optimizer and standardization state, and the version
/// that last changed it.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct ParameterAt {
    pub parameter_id: String,
    pub value: f64,
    pub opt_m: f64,
    pub opt_v: f64,
    pub update_count: i64,
    pub feature_mean: f64,
    pub feature_m2: f64,
    #[sqlx(rename = "last_version")]
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

/// The parameters of a model at a version, read in one consistent snapshot of the database: in a
/// transaction the caller has just begun (this makes it REPEATABLE READ, READ ONLY).
pub async fn parameters_at(
    tx: &mut PgConnection,
    model_id: Uuid,
    at: At,
) -> Result<ParametersAt, TimelineError> {
    parameters_at_with(tx, model_id, at, ReadPlan::Auto).await
}

/// [`parameters_at`] with a chosen plan (tests compare the two).
pub async fn parameters_at_with(
    tx: &mut PgConnection,
    model_id: Uuid,
    at: At,
    plan: ReadPlan,
) -> Result<ParametersAt, TimelineError> {
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    sqlx::query(RECONSTRUCTION_WORK_MEM)
        .execute(&mut *tx)
        .await?;
    let horizon = horizon(&mut *tx, model_id).await?;
    let version = match at {
        At::Current => horizon.current,
        At::Version(v) => v,
        At::Time(t) => {
            let (version, next_known): (i64, bool) = sqlx::query_as(
                "SELECT v, EXISTS (SELECT 1 FROM model_versions
                                   WHERE model_id = $1 AND model_version = v + 1)
                 FROM olps_version_at($1, $2) v",
            )
            .bind(model_id)
            .bind(t)
            .fetch_one(&mut *tx)
            .await?;
            // Below the floor, retention deletes version rows: the newest row at or before t
            // names the version in force at t only if the next version's row is still there.
            if version < horizon.pruned_through && !next_known {
                return Err(TimelineError::Unreachable {
                    version,
                    pruned_through: horizon.pruned_through,
                    current: horizon.current,
                    snapshot_versions: Vec::new(),
                });
            }
            version
        }
    };
    check_version(version, horizon)?;
    let parameters: Vec<ParameterAt> = if version == horizon.current && plan != ReadPlan::Forward {
        sqlx::query_as(
            "SELECT parameter_id, current_value AS value, opt_m, opt_v, update_count,
                    feature_mean, feature_m2, version AS last_version
             FROM model_parameters WHERE model_id = $1
             ORDER BY parameter_id COLLATE \"C\"",
        )
        .bind(model_id)
        .fetch_all(&mut *tx)
        .await?
    } else {
        let base = base_for(&mut *tx, model_id, version, horizon, false).await?;
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
            format!("SELECT * FROM {PARAMETERS_FROM} a ORDER BY parameter_id COLLATE \"C\"")
        } else {
            let lookup = match plan {
                ReadPlan::Backward(lookup) => lookup,
                _ => Lookup::Auto,
            };
            let lookup = choose_lookup(&mut *tx, model_id, version, base, lookup).await?;
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
        sqlx::query_as(&sql)
            .bind(model_id)
            .bind(version)
            .bind(base.version)
            .bind(base.snapshot_id)
            .fetch_all(&mut *tx)
            .await?
    };
    Ok(ParametersAt {
        model_id,
        version,
        parameters,
    })
}
