//! The `model_parameters` table and its history in `parameter_updates`: loading learner state and
//! writing a version's changes, each with one statement per batch (UNNEST arrays).

use std::collections::HashMap;

use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::learner::ParamState;

/// One parameter's change within a model version: the state before (None when the parameter did
/// not exist) and after.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamChange {
    pub parameter_id: String,
    pub old: Option<ParamState>,
    pub new: ParamState,
    pub learning_rate: Option<f64>,
}

/// What made a history row (`parameter_updates.update_type`) or a version
/// (`model_versions.kind`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum UpdateType {
    /// Learned from feedback by the worker.
    #[default]
    Gradient,
    Direct,
    Batch,
    /// Written by a rollback or roll-forward.
    Rollback,
    /// Written by the promotion of a challenger ([`crate::shadow::promote`]).
    Promotion,
}

impl UpdateType {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateType::Gradient => "gradient",
            UpdateType::Direct => "direct",
            UpdateType::Batch => "batch",
            UpdateType::Rollback => "rollback",
            UpdateType::Promotion => "promotion",
        }
    }
}

impl std::fmt::Display for UpdateType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for UpdateType {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The columns a [`ParamRow`] is read from.
pub const STATE_COLUMNS: &str =
    "parameter_id, current_value, opt_m, opt_v, update_count, feature_mean, feature_m2";

/// A parameter's name and learner state, from a row selecting [`STATE_COLUMNS`].
#[derive(Debug, Clone, FromRow)]
pub struct ParamRow {
    pub parameter_id: String,
    pub current_value: f64,
    pub opt_m: f64,
    pub opt_v: f64,
    pub update_count: i64,
    pub feature_mean: f64,
    pub feature_m2: f64,
}

impl ParamRow {
    pub fn into_state(self) -> (String, ParamState) {
        (
            self.parameter_id,
            ParamState {
                value: self.current_value,
                m: self.opt_m,
                v: self.opt_v,
                count: self.update_count,
                mean: self.feature_mean,
                m2: self.feature_m2,
            },
        )
    }
}

/// The current state of the named parameters of a model (absent ones are left out).
///
/// The names are joined as rows (`unnest`), not tested with `parameter_id = ANY($2)`: a plan
/// that reads the model's rows and filters them tests each row against the whole array (the
/// array is a parameter, so PostgreSQL does not hash it), 82 ms for 6,300 names against 10,000
/// parameters; the join is a primary-key lookup or a hash join per name, a few ms.
pub async fn load(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    parameter_ids: &[&str],
) -> Result<Vec<(String, ParamState)>, sqlx::Error> {
    let rows: Vec<ParamRow> = sqlx::query_as(
        "SELECT p.parameter_id, p.current_value, p.opt_m, p.opt_v, p.update_count,
                p.feature_mean, p.feature_m2
         FROM unnest($2::text[]) AS n(parameter_id)
         JOIN model_parameters p ON p.model_id = $1 AND p.parameter_id = n.parameter_id",
    )
    .bind(model_id)
    .bind(parameter_ids)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(ParamRow::into_state).collect())
}

/// Every current parameter of a model.
pub async fn load_all(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
) -> Result<HashMap<String, ParamState>, sqlx::Error> {
    let rows: Vec<ParamRow> = sqlx::query_as(&format!(
        "SELECT {STATE_COLUMNS} FROM model_parameters WHERE model_id = $1"
    ))
    .bind(model_id)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(ParamRow::into_state).collect())
}

/// The parameters of a model changed after `version` (an incremental reload).
pub async fn changed_since(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    version: i64,
) -> Result<Vec<(String, ParamState)>, sqlx::Error> {
    let rows: Vec<ParamRow> = sqlx::query_as(&format!(
        "SELECT {STATE_COLUMNS} FROM model_parameters WHERE model_id = $1 AND version > $2"
    ))
    .bind(model_id)
    .bind(version)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(ParamRow::into_state).collect())
}

/// Writes a version's changes: updates (or inserts) the current parameters and appends one history row per
/// change, in one statement. `changes` should be sorted by parameter_id (index locality).
pub async fn write_changes(
    conn: &mut PgConnection,
    model_id: Uuid,
    version: i64,
    update_type: UpdateType,
    source: &str,
    changes: &[ParamChange],
) -> Result<(), sqlx::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let n = changes.len();
    let mut ids = Vec::with_capacity(n);
    let mut old = Vec::with_capacity(n);
    let (mut value, mut m, mut v, mut count, mut mean, mut m2, mut lr) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for c in changes {
        ids.push(c.parameter_id.as_str());
        old.push(c.old.map(|s| s.value));
        value.push(c.new.value);
        m.push(c.new.m);
        v.push(c.new.v);
        count.push(c.new.count);
        mean.push(c.new.mean);
        m2.push(c.new.m2);
        lr.push(c.learning_rate);
    }
    let known = changes.iter().filter(|c| c.old.is_some()).count() as i64;
    let written = sqlx::query(
        "WITH u AS (
             SELECT * FROM unnest($3::text[], $4::float8[], $5::float8[], $6::float8[], $7::float8[],
                                  $8::int8[], $9::float8[], $10::float8[], $11::float8[])
                 AS u(parameter_id, old_value, value, m, v, cnt, mean, m2, lr)
         ),
         -- The worker knows which parameters exist (its cache is trusted only at the version the
         -- model row, locked by this batch, is at; the parameters it lacks it has just read), so
         -- a parameter with an old value is updated and one without is inserted: no probe of the
         -- table per row (it was half the time of this statement). Not INSERT … ON CONFLICT DO
         -- UPDATE for the known ones: that locks each row before updating it, one more WAL
         -- record per parameter, and the model's row lock already serialises their writers.
         updated AS (
             UPDATE model_parameters p SET
                 current_value = u.value, opt_m = u.m, opt_v = u.v, update_count = u.cnt,
                 feature_mean = u.mean, feature_m2 = u.m2, version = $2, last_updated = now()
             FROM u
             WHERE u.old_value IS NOT NULL
               AND p.model_id = $1 AND p.parameter_id = u.parameter_id COLLATE \"C\"
             RETURNING 1
         ),
         inserted AS (
             INSERT INTO model_parameters
                 (model_id, parameter_id, current_value, opt_m, opt_v, update_count, feature_mean,
                  feature_m2, version, last_updated)
             SELECT $1, parameter_id, value, m, v, cnt, mean, m2, $2, now() FROM u
             WHERE u.old_value IS NULL
             ON CONFLICT DO NOTHING
             RETURNING 1
         )
         -- History only when every parameter was written as the worker expected; otherwise
         -- nothing, and the caller fails the batch (below).
         INSERT INTO parameter_updates
             (model_id, model_version, parameter_id, old_value, new_value, opt_m, opt_v,
              update_count, feature_mean, feature_m2, update_type, learning_rate, source)
         SELECT $1, $2, parameter_id, old_value, value, m, v, cnt, mean, m2, $12, lr, $13 FROM u
         WHERE (SELECT count(*) FROM updated) = $14
           AND (SELECT count(*) FROM inserted) = $15",
    )
    .bind(model_id)
    .bind(version)
    .bind(&ids)
    .bind(&old)
    .bind(&value)
    .bind(&m)
    .bind(&v)
    .bind(&count)
    .bind(&mean)
    .bind(&m2)
    .bind(&lr)
    .bind(update_type)
    .bind(source)
    .bind(known)
    .bind(n as i64 - known)
    .execute(conn)
    .await?;
    if written.rows_affected() != n as u64 {
        // Someone changed model_parameters without a new version (by hand, say): the caller's
        // transaction is rolled back, and the worker, which drops its cache on a failed batch,
        // reads the parameters again and retries the batch (a protocol error is transient).
        return Err(sqlx::Error::Protocol(format!(
            "the parameters of model {model_id} in the database are not those the worker holds \
             at version {}: a parameter row was added or removed outside a version",
            version - 1
        )));
    }
    Ok(())
}

/// Whether two states are bit-for-bit equal (so -0.0 vs 0.0 or a NaN payload counts as a change).
pub fn same_bits(a: &ParamState, b: &ParamState) -> bool {
    a.value.to_bits() == b.value.to_bits()
        && a.m.to_bits() == b.m.to_bits()
        && a.v.to_bits() == b.v.to_bits()
        && a.count == b.count
        && a.mean.to_bits() == b.mean.to_bits()
        && a.m2.to_bits() == b.m2.to_bits()
}
