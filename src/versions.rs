//! Model versions: the version line of each model (`models.version`, `model_versions`) and the
//! notification that tells services a new version is committed.

use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// The channel on which each committed version is announced, payload `{"model_id", "version"}`.
pub const VERSION_CHANNEL: &str = "olps_model_version";

/// What made a version, recorded in `model_versions`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VersionRecord {
    pub kind: &'static str,
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
