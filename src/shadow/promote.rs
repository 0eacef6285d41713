//! Promotion (`olps model challenger promote`, `POST …/challengers/{c}/promote`): the champion
//! takes a challenger's parameters (value and optimizer state, bit for bit), example count,
//! model-level learner state and settings, as ONE new version of the champion (kind
//! `promotion`), with one history row per parameter that changed, so point-in-time reads and a
//! rollback past it work as for any version. Predictions by the champion's name then answer with
//! those parameters. Who promoted, and when, is in `model_promotions` and the version's
//! `source`; the settings change is in `model_settings_changes`. The link stays.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{links, ShadowError};
use crate::models::{self, Model, ModelError};
use crate::params::UpdateType;
use crate::settings;
use crate::timeline::rollback::{restore_statement, RestoreParams};
use crate::timeline::snapshots;
use crate::timeline::version::{commit_version, VersionRecord};

/// What a promotion did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Promotion {
    pub model_id: Uuid,
    /// The champion's new version, holding the challenger's parameters.
    pub version: i64,
    pub previous_version: i64,
    pub challenger_id: Uuid,
    pub challenger: String,
    /// The challenger's version whose parameters were taken.
    pub challenger_version: i64,
    /// Parameters whose state changed (one history row each).
    pub parameters_changed: i64,
    /// Of those, parameters the challenger does not have, set to the initial state.
    pub parameters_zeroed: i64,
    pub examples_seen: i64,
    /// The settings fields that changed (empty: the same settings).
    pub settings_changed: Vec<String>,
    pub promoted_by: String,
    pub promoted_at: DateTime<Utc>,
}

/// The promotion's target: the challenger's parameters ($2) against the champion's ($1).
const TARGET: &str = "
    target AS (
        SELECT coalesce(p.parameter_id, c.parameter_id) AS parameter_id,
               c.parameter_id IS NOT NULL AS present,
               coalesce(c.current_value, 0) AS value,
               coalesce(c.opt_m, 0) AS opt_m,
               coalesce(c.opt_v, 0) AS opt_v,
               coalesce(c.update_count, 0) AS update_count,
               coalesce(c.feature_mean, 0) AS feature_mean,
               coalesce(c.feature_m2, 0) AS feature_m2,
               p.parameter_id IS NOT NULL AS exists_now,
               p.current_value AS cur_value, p.opt_m AS cur_m, p.opt_v AS cur_v,
               p.update_count AS cur_count, p.feature_mean AS cur_mean, p.feature_m2 AS cur_m2
        FROM (SELECT * FROM model_parameters WHERE model_id = $1) p
        FULL JOIN (SELECT * FROM model_parameters WHERE model_id = $2) c
            ON c.parameter_id = p.parameter_id
    )";

/// Promotes `challenger` into `champion`, in the caller's transaction: waits for a batch of
/// either in progress (both row locks, champion first), and refuses a model that is not a
/// challenger of the champion. `promoted_by` names who asked (e.g. `cli (alice)`).
pub async fn promote(
    conn: &mut PgConnection,
    champion: &Model,
    challenger: &Model,
    promoted_by: &str,
) -> Result<Promotion, ShadowError> {
    let champion = models::lock(&mut *conn, champion.model_id, false)
        .await?
        .ok_or_else(|| ModelError::NotFound(champion.name.clone()))?;
    let challenger = models::lock(&mut *conn, challenger.model_id, false)
        .await?
        .ok_or_else(|| ModelError::NotFound(challenger.name.clone()))?;
    links::find(&mut *conn, &champion, &challenger).await?;
    let version = champion.version + 1;
    let source = format!(
        "promotion of '{}' ({}, version {}) by {promoted_by}",
        challenger.name, challenger.model_id, challenger.version
    );
    let metadata = serde_json::json!({
        "promoted_from": challenger.model_id,
        "challenger_version": challenger.version,
    });
    let statement = restore_statement(
        TARGET,
        UpdateType::Promotion,
        RestoreParams {
            model: 1,
            version: 3,
            source: 4,
            metadata: 5,
        },
    );
    let (changed, zeroed): (i64, i64) = sqlx::query_as(&statement)
        .bind(champion.model_id)
        .bind(challenger.model_id)
        .bind(version)
        .bind(&source)
        .bind(&metadata)
        .fetch_one(&mut *conn)
        .await?;
    let settings_change =
        settings::replace_settings(&mut *conn, &champion, &challenger.settings, promoted_by)
            .await?;
    let record = VersionRecord {
        kind: UpdateType::Promotion,
        parameters_changed: changed as i32,
        source: Some(source),
        learner_state: Some(
            serde_json::to_value(&challenger.learner_state).expect("learner state serializes"),
        ),
        ..VersionRecord::default()
    };
    commit_version(
        &mut *conn,
        champion.model_id,
        version,
        challenger.examples_seen,
        &record,
    )
    .await?;
    let promoted_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO model_promotions
             (model_id, model_version, challenger_id, challenger_name, challenger_version,
              promoted_by)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING promoted_at",
    )
    .bind(champion.model_id)
    .bind(version)
    .bind(challenger.model_id)
    .bind(&challenger.name)
    .bind(challenger.version)
    .bind(promoted_by)
    .fetch_one(&mut *conn)
    .await?;
    snapshots::maybe_auto_snapshot(&mut *conn, champion.model_id, version).await?;
    tracing::info!(champion = %champion.name, challenger = %challenger.name, version,
        parameters_changed = changed, "challenger promoted");
    Ok(Promotion {
        model_id: champion.model_id,
        version,
        previous_version: champion.version,
        challenger_id: challenger.model_id,
        challenger: challenger.name.clone(),
        challenger_version: challenger.version,
        parameters_changed: changed,
        parameters_zeroed: zeroed,
        examples_seen: challenger.examples_seen,
        settings_changed: settings_change.map_or_else(Vec::new, |c| c.changed_fields),
        promoted_by: promoted_by.to_string(),
        promoted_at,
    })
}
