//! The version counter: each model's version line (`models.version`, `model_versions`), the
//! notification that tells services a new version is committed, and the prequential loss
//! recorded per version.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::params::UpdateType;

/// The channel on which each committed version is announced, payload `{"model_id", "version"}`.
pub const VERSION_CHANNEL: &str = "olps_model_version";

/// What made a version, recorded in `model_versions`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VersionRecord {
    /// What made the version: `gradient` (a learned batch) or `rollback`.
    pub kind: UpdateType,
    pub examples: i32,
    pub loss_sum: f64,
    pub correct: Option<i32>,
    pub dead_lettered: i32,
    pub parameters_changed: i32,
    pub learning_rate: Option<f64>,
    pub rolled_back_to: Option<i64>,
    pub source: Option<String>,
    /// The learner's model-level state after this version (`learner::ModelState` as JSON);
    /// None keeps the model's current state.
    pub learner_state: Option<serde_json::Value>,
}

/// Moves a model from `version - 1` to `version`, records the version and announces it, all in
/// the caller's transaction. The caller holds the model row's lock; the `version - 1` guard makes
/// a lost lock a loud error instead of a fork in the version line.
pub async fn commit_version(
    conn: &mut PgConnection,
    model_id: Uuid,
    version: i64,
    examples_seen: i64,
    record: &VersionRecord,
) -> Result<(), sqlx::Error> {
    let payload = serde_json::json!({"model_id": model_id, "version": version}).to_string();
    let bumped = sqlx::query(
        "WITH bumped AS (
             UPDATE models SET version = $2, examples_seen = $3, updated_at = now(),
                               learner_state = coalesce($15, learner_state)
             WHERE model_id = $1 AND version = $2 - 1
             RETURNING model_id, learner_state
         ), recorded AS (
             INSERT INTO model_versions
                 (model_id, model_version, kind, examples, loss_sum, correct, dead_lettered,
                  parameters_changed, learning_rate, rolled_back_to, source, examples_seen,
                  learner_state)
             SELECT model_id, $2, $4, $5, $6, $7, $8, $9, $10, $11, $12, $3, learner_state
             FROM bumped
         )
         SELECT pg_notify($13, $14) FROM bumped",
    )
    .bind(model_id)
    .bind(version)
    .bind(examples_seen)
    .bind(record.kind)
    .bind(record.examples)
    .bind(record.loss_sum)
    .bind(record.correct)
    .bind(record.dead_lettered)
    .bind(record.parameters_changed)
    .bind(record.learning_rate)
    .bind(record.rolled_back_to)
    .bind(&record.source)
    .bind(VERSION_CHANNEL)
    .bind(payload)
    .bind(&record.learner_state)
    .execute(conn)
    .await?;
    if bumped.rows_affected() != 1 {
        return Err(sqlx::Error::Protocol(format!(
            "model {model_id} is not at version {} any more: its version line moved under a lock",
            version - 1
        )));
    }
    Ok(())
}

/// One point of the prequential loss series: consecutive learned versions covering about
/// `window` examples.
#[derive(Debug, Clone, Serialize, PartialEq, FromRow)]
pub struct LossPoint {
    pub from_version: i64,
    pub to_version: i64,
    pub examples: i64,
    pub mean_loss: f64,
    /// Logistic models: the share of examples whose prediction (before learning) was on the
    /// right side of 0.5.
    pub accuracy: Option<f64>,
    pub until: DateTime<Utc>,
}

/// The loss series over versions `from..=to`, in points of at least `window` examples each
/// (the last point may be smaller).
pub async fn loss_series(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    from: i64,
    to: i64,
    window: i64,
) -> Result<Vec<LossPoint>, sqlx::Error> {
    sqlx::query_as(
        "WITH v AS (
             SELECT model_version, examples, loss_sum, correct, created_at,
                    sum(examples) OVER (ORDER BY model_version) - examples AS before
             FROM model_versions
             WHERE model_id = $1 AND kind = 'gradient' AND examples > 0
               AND model_version BETWEEN $2 AND $3
         )
         SELECT min(model_version) AS from_version, max(model_version) AS to_version,
                sum(examples)::int8 AS examples, sum(loss_sum) / sum(examples) AS mean_loss,
                sum(correct)::float8 / sum(examples) AS accuracy, max(created_at) AS until
         FROM v GROUP BY before / $4 ORDER BY 1",
    )
    .bind(model_id)
    .bind(from)
    .bind(to)
    .bind(window.max(1))
    .fetch_all(db)
    .await
}

/// The mean prequential loss over the last `window` examples learned at or before `version`
/// (whole batches: at least `window` examples when there are that many). None without data.
pub async fn windowed_loss(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    version: i64,
    window: i64,
) -> Result<Option<(f64, i64)>, sqlx::Error> {
    let row: (Option<f64>, Option<i64>) = sqlx::query_as(
        "SELECT sum(loss_sum) / nullif(sum(examples), 0), sum(examples)::int8 FROM (
             SELECT loss_sum, examples,
                    sum(examples) OVER (ORDER BY model_version DESC) - examples AS after
             FROM model_versions
             WHERE model_id = $1 AND kind = 'gradient' AND examples > 0 AND model_version <= $2
         ) v WHERE after < $3",
    )
    .bind(model_id)
    .bind(version)
    .bind(window)
    .fetch_one(db)
    .await?;
    Ok(row.0.zip(row.1))
}

/// Whether every version of the model after `version` was learned (none a rollback), so the
/// parameters changed since then can be applied on top of a copy at `version`.
pub async fn only_learned_since(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    version: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM model_versions
                            WHERE model_id = $1 AND model_version > $2 AND kind <> $3)",
    )
    .bind(model_id)
    .bind(version)
    .bind(UpdateType::Gradient)
    .fetch_one(db)
    .await
}

/// The example count and the learner's model-level state recorded with a version.
pub async fn examples_and_state_at(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    version: i64,
) -> Result<(i64, Option<serde_json::Value>), sqlx::Error> {
    sqlx::query_as(
        "SELECT examples_seen, learner_state FROM model_versions
         WHERE model_id = $1 AND model_version = $2",
    )
    .bind(model_id)
    .bind(version)
    .fetch_one(db)
    .await
}
