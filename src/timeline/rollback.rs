//! Rollback (and roll-forward): makes a model's parameters, optimizer state, example count and
//! model-level learner state equal to those of an earlier version, as a new version of its own.
//!
//! It holds the model's row lock (waiting for a worker batch in progress, never interleaving with
//! one), computes the target state set-based inside PostgreSQL, and writes only the parameters
//! whose state differs, bit for bit, each with a history row of type `rollback`. A parameter that
//! did not exist at the target version is zeroed (value and all state 0): the learner treats a
//! parameter in its initial state exactly like an absent one, and its history chain stays
//! unbroken. The worker's cached learner is invalidated by the version bump.

use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::error::TimelineError;
use super::reconstruct::{self, Base, Lookup};
use super::snapshots::{self, Lock};
use super::version::{self, commit_version, VersionRecord};
use crate::models::{self, ModelError};
use crate::params::UpdateType;

/// Recorded as `parameter_updates.source` and `model_versions.source`.
pub const ROLLBACK_SOURCE: &str = "rollback";

/// Where to roll back (or forward) to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTarget {
    Version(i64),
    /// A snapshot by UUID or label.
    Snapshot(String),
}

/// How the target state is computed. `Auto`: `Incremental` when the history after the target
/// version is intact, else `Full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackPlan {
    Auto,
    /// Only the parameters with history rows after the target version (its cost follows what
    /// changed since, not the model's size), each looked up as given.
    Incremental(Lookup),
    /// Every parameter: the target version rebuilt from its nearest snapshot and history, compared
    /// with every current parameter.
    Full,
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollbackOutcome {
    pub model_id: Uuid,
    /// The new version the rollback made.
    pub version: i64,
    pub previous_version: i64,
    pub rolled_back_to: i64,
    /// The snapshot given as the target, if any.
    pub snapshot_id: Option<Uuid>,
    /// Parameters whose state changed (one history row each).
    pub parameters_changed: i64,
    /// Of those, parameters that did not exist at the target version, set to the initial state.
    pub parameters_zeroed: i64,
    pub examples_seen: i64,
    /// `incremental-indexed`, `incremental-hashed` or `full`.
    pub plan: &'static str,
}

/// Where [`restore_statement`] finds its values: the numbers of the statement's parameters
/// (`$n`) holding the model, the new version, the history rows' `source` and `metadata`.
pub(crate) struct RestoreParams {
    pub model: u8,
    pub version: u8,
    pub source: u8,
    pub metadata: u8,
}

/// The statement that makes a model's parameters those of a `target` CTE (one row per parameter
/// now or then: `parameter_id`, `present` (at the target), `exists_now`, the target state
/// `value, opt_m, opt_v, update_count, feature_mean, feature_m2` and the current one
/// `cur_value, cur_m, cur_v, cur_count, cur_mean, cur_m2`) as a new version: only parameters
/// whose state differs bit for bit are written, each with one history row of `update_type`; a
/// parameter absent at the target is set to its initial state. Returns (parameters changed, of
/// those zeroed). Rollback and promotion ([`crate::shadow::promote`]) share it.
pub(crate) fn restore_statement(
    target_sql: &str,
    update_type: UpdateType,
    p: RestoreParams,
) -> String {
    let RestoreParams {
        model,
        version,
        source,
        metadata,
    } = p;
    let update_type = update_type.as_str();
    format!(
        "WITH {target_sql},
         diff AS (
             SELECT t.parameter_id, t.present, t.exists_now, t.cur_value AS old_value, t.value,
                    t.opt_m, t.opt_v, t.update_count, t.feature_mean, t.feature_m2
             FROM target t
             WHERE CASE WHEN NOT t.exists_now THEN t.present
                        ELSE float8send(t.cur_value) <> float8send(t.value)
                          OR float8send(t.cur_m) <> float8send(t.opt_m)
                          OR float8send(t.cur_v) <> float8send(t.opt_v)
                          OR t.cur_count <> t.update_count
                          OR float8send(t.cur_mean) <> float8send(t.feature_mean)
                          OR float8send(t.cur_m2) <> float8send(t.feature_m2) END
         ),
         updated AS (
             UPDATE model_parameters p
             SET current_value = d.value, opt_m = d.opt_m, opt_v = d.opt_v,
                 update_count = d.update_count, feature_mean = d.feature_mean,
                 feature_m2 = d.feature_m2, version = ${version}, last_updated = now()
             FROM diff d
             WHERE d.exists_now AND p.model_id = ${model} AND p.parameter_id = d.parameter_id
         ),
         inserted AS (
             INSERT INTO model_parameters
                 (model_id, parameter_id, current_value, opt_m, opt_v, update_count,
                  feature_mean, feature_m2, version, last_updated)
             SELECT ${model}, d.parameter_id, d.value, d.opt_m, d.opt_v, d.update_count,
                    d.feature_mean, d.feature_m2, ${version}, now()
             FROM diff d WHERE NOT d.exists_now
         ),
         history AS (
             INSERT INTO parameter_updates
                 (model_id, model_version, parameter_id, old_value, new_value, opt_m, opt_v,
                  update_count, feature_mean, feature_m2, update_type, learning_rate, source,
                  metadata)
             SELECT ${model}, ${version}, d.parameter_id, d.old_value, d.value, d.opt_m, d.opt_v,
                    d.update_count, d.feature_mean, d.feature_m2, '{update_type}', NULL,
                    ${source}, jsonb_strip_nulls(${metadata})
             FROM diff d
             -- In index order: both indexes of parameter_updates then grow page by page.
             ORDER BY d.parameter_id
             RETURNING 1
         )
         SELECT (SELECT count(*) FROM history), (SELECT count(*) FROM diff WHERE NOT present)"
    )
}

/// Rolls a model back (or forward) to a version or snapshot, as a new version, in the caller's
/// transaction: it takes the model's lock, which the caller holds until it commits.
pub async fn rollback(
    tx: &mut PgConnection,
    model_id: Uuid,
    target: &RollbackTarget,
) -> Result<RollbackOutcome, TimelineError> {
    rollback_with(tx, model_id, target, RollbackPlan::Auto).await
}

/// [`rollback`], naming who rolled back in the version's `source` (and its history rows'), e.g.
/// `rollback by token NAME (UUID)`.
pub async fn rollback_by(
    tx: &mut PgConnection,
    model_id: Uuid,
    target: &RollbackTarget,
    source: &str,
) -> Result<RollbackOutcome, TimelineError> {
    rollback_as(tx, model_id, target, RollbackPlan::Auto, source).await
}

/// [`rollback`] with a chosen plan (tests compare them).
pub async fn rollback_with(
    tx: &mut PgConnection,
    model_id: Uuid,
    target: &RollbackTarget,
    plan: RollbackPlan,
) -> Result<RollbackOutcome, TimelineError> {
    rollback_as(tx, model_id, target, plan, ROLLBACK_SOURCE).await
}

async fn rollback_as(
    tx: &mut PgConnection,
    model_id: Uuid,
    target: &RollbackTarget,
    plan: RollbackPlan,
    source: &str,
) -> Result<RollbackOutcome, TimelineError> {
    if let RollbackTarget::Version(v) = target {
        if *v < 0 {
            return Err(TimelineError::InvalidArgument(format!(
                "to_version: must be 0 or more, got {v}"
            )));
        }
    }
    let model = models::lock(&mut *tx, model_id, false)
        .await?
        .ok_or_else(|| ModelError::NotFound(model_id.to_string()))?;
    sqlx::query(reconstruct::RECONSTRUCTION_WORK_MEM)
        .execute(&mut *tx)
        .await?;
    let horizon = reconstruct::horizon(&mut *tx, model_id).await?;
    let (to, base, snapshot_id) = match target {
        RollbackTarget::Version(v) => {
            let base = reconstruct::base_for(&mut *tx, model_id, *v, horizon, true).await?;
            (*v, base, None)
        }
        RollbackTarget::Snapshot(key) => {
            let s = snapshots::find(&mut *tx, model_id, key, Lock::KeyShare).await?;
            reconstruct::check_version(s.model_version, horizon)?;
            let base = Base {
                snapshot_id: Some(s.snapshot_id),
                version: s.model_version,
            };
            (s.model_version, base, Some(s.snapshot_id))
        }
    };
    // The incremental plan reads the history after `to`, which pruning may have removed.
    let lookup = match plan {
        RollbackPlan::Full => None,
        RollbackPlan::Auto if to >= horizon.pruned_through => Some(Lookup::Auto),
        RollbackPlan::Incremental(lookup) if to >= horizon.pruned_through => Some(lookup),
        RollbackPlan::Auto | RollbackPlan::Incremental(_) => None,
    };
    let lookup = match lookup {
        Some(l) => Some(reconstruct::choose_lookup(&mut *tx, model_id, to, base, l).await?),
        None => None,
    };
    let (examples_seen, learner_state): (i64, Option<serde_json::Value>) = if to == 0 {
        (0, Some(serde_json::json!({})))
    } else {
        version::examples_and_state_at(&mut *tx, model_id, to).await?
    };
    let version = model.version + 1;
    let target_sql = match lookup {
        Some(lookup) => reconstruct::changed_and_target(lookup),
        None => reconstruct::full_target(),
    };
    let metadata = serde_json::json!({"rolled_back_to": to, "snapshot_id": snapshot_id});
    let statement = restore_statement(
        &target_sql,
        UpdateType::Rollback,
        RestoreParams {
            model: 1,
            version: 5,
            source: 6,
            metadata: 7,
        },
    );
    let (changed, zeroed): (i64, i64) = sqlx::query_as(&statement)
        .bind(model_id)
        .bind(to)
        .bind(base.version)
        .bind(base.snapshot_id)
        .bind(version)
        .bind(source)
        .bind(&metadata)
        .fetch_one(&mut *tx)
        .await?;
    let record = VersionRecord {
        kind: UpdateType::Rollback,
        parameters_changed: changed as i32,
        rolled_back_to: Some(to),
        source: Some(source.to_string()),
        learner_state: learner_state.or_else(|| Some(serde_json::json!({}))),
        ..VersionRecord::default()
    };
    commit_version(&mut *tx, model_id, version, examples_seen, &record).await?;
    snapshots::maybe_auto_snapshot(&mut *tx, model_id, version).await?;
    tracing::info!(%model_id, version, rolled_back_to = to, parameters_changed = changed,
        parameters_zeroed = zeroed, "rolled back");
    Ok(RollbackOutcome {
        model_id,
        version,
        previous_version: model.version,
        rolled_back_to: to,
        snapshot_id,
        parameters_changed: changed,
        parameters_zeroed: zeroed,
        examples_seen,
        plan: match lookup {
            Some(Lookup::Hashed) => "incremental-hashed",
            Some(_) => "incremental-indexed",
            None => "full",
        },
    })
}
