//! Changing a model's settings after creation (`PATCH /v1/models/{m}`, `olps model update`), and
//! the history of those changes (`model_settings_changes`).
//!
//! Only the settings that can change without changing what the stored parameters mean may change
//! ([`CHANGEABLE`]): the step size and its schedule, regularization and clipping, the drift
//! detectors and the guard, and the snapshot policy. The optimizer, standardization, target
//! centring and the other settings that shape the optimizer state or the prediction are fixed at
//! creation: to try another, create a new model and replay this one's feedback into it
//! ([`crate::replay`]).
//!
//! A change is made under the model's row lock, which every worker batch holds, so it falls
//! between two versions: it applies from the next batch on (the worker compares its cached
//! learner's settings with the stored ones at every batch), and it is recorded with that first
//! version. Settings are configuration, not learned state: a change makes no version, and a
//! rollback restores parameters and learner state but leaves the settings as they are (change
//! them back with another update; the history says what they were).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::{FromRow, PgConnection, PgExecutor};
use uuid::Uuid;

use crate::learner::{ConfigError, LearnerConfig};
use crate::models::{self, Model, ModelError};
use crate::timeline::error::TimelineError;
use crate::timeline::snapshots::{self, SnapshotPolicy};

/// The learner settings that may change after creation (`drift` and `guard` with all their
/// fields).
pub const CHANGEABLE: &[&str] = &[
    "learning_rate",
    "lr_schedule",
    "power_t",
    "l1",
    "l2",
    "clip_gradient",
    "drift",
    "guard",
];

/// Why a setting outside [`CHANGEABLE`] is fixed.
fn fixed_because(field: &str) -> &'static str {
    match field {
        "optimizer" => {
            "each parameter's stored optimizer state (m, v) means something else under another \
             optimizer"
        }
        "standardize" | "standardize_clip" => {
            "the stored weights are per standardized feature value, so predictions would change \
             meaning"
        }
        "center_target" => "the intercept follows the label's mean only when it is on",
        "beta1" | "beta2" | "rho" | "epsilon" | "ftrl_beta" => {
            "the optimizer state accumulated so far was built with it (Adam's bias correction \
             assumes one beta for the whole run)"
        }
        _ => "it is not one of the settings that can change safely",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The request is not a change: not an object, an unknown top-level field, nothing to change.
    #[error("{0}")]
    InvalidRequest(String),
    #[error(
        "settings.{field} cannot change after the model is created: {why}. The settings that can \
         change are {changeable} and snapshot_policy; to try another {field}, create a new model \
         and replay this one's feedback into it (`olps model replay --from M --into N`)",
        changeable = CHANGEABLE.join(", ")
    )]
    Fixed { field: String, why: &'static str },
    #[error("settings.{0}")]
    Invalid(ConfigError),
    #[error("snapshot_policy.{0}")]
    InvalidPolicy(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<TimelineError> for SettingsError {
    fn from(e: TimelineError) -> Self {
        match e {
            TimelineError::Db(e) => SettingsError::Db(e),
            TimelineError::Model(e) => SettingsError::Model(e),
            // The policy's own checks (a value below 1), naming the field.
            other => SettingsError::InvalidPolicy(other.to_string()),
        }
    }
}

/// A requested change, checked for its shape (not yet against the model).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SettingsPatch {
    /// Learner settings to merge into the stored ones (`drift` and `guard` field by field).
    pub settings: Map<String, Value>,
    /// Snapshot policy fields to replace (`null` turns that part off).
    pub snapshot_policy: Map<String, Value>,
}

impl SettingsPatch {
    /// Parses `{"settings": {...}?, "snapshot_policy": {...}?}`. Every error names the field.
    pub fn from_json(body: &Value) -> Result<SettingsPatch, SettingsError> {
        let invalid = |m: String| Err(SettingsError::InvalidRequest(m));
        let Value::Object(body) = body else {
            return invalid(
                "the body must be a JSON object: {\"settings\": {...}, \"snapshot_policy\": {...}}"
                    .into(),
            );
        };
        let mut patch = SettingsPatch::default();
        for (key, value) in body {
            let target = match key.as_str() {
                "settings" => &mut patch.settings,
                "snapshot_policy" => &mut patch.snapshot_policy,
                other => {
                    return invalid(format!(
                        "{other}: cannot change; a model's name and kind are fixed, and only \
                         `settings` ({}) and `snapshot_policy` may change",
                        CHANGEABLE.join(", ")
                    ))
                }
            };
            match value {
                Value::Object(fields) => target.extend(fields.clone()),
                _ => return invalid(format!("{key}: must be a JSON object")),
            }
        }
        for (field, value) in &patch.settings {
            if !CHANGEABLE.contains(&field.as_str()) {
                return Err(SettingsError::Fixed {
                    field: field.clone(),
                    why: fixed_because(field),
                });
            }
            if value.is_null() {
                return invalid(format!(
                    "settings.{field}: null is not a value; give the new value"
                ));
            }
        }
        if patch.settings.is_empty() && patch.snapshot_policy.is_empty() {
            return invalid(
                "nothing to change: give `settings` and/or `snapshot_policy` with the fields to \
                 change"
                    .into(),
            );
        }
        Ok(patch)
    }

    /// The learner settings with this patch applied, validated.
    pub fn apply_settings(&self, current: &LearnerConfig) -> Result<LearnerConfig, SettingsError> {
        let mut merged = serde_json::to_value(current).expect("settings serialize");
        let object = merged.as_object_mut().expect("settings are an object");
        for (field, value) in &self.settings {
            match (object.get_mut(field), value) {
                // drift and guard: only the fields given change.
                (Some(Value::Object(stored)), Value::Object(given)) => {
                    for (k, v) in given {
                        stored.insert(k.clone(), v.clone());
                    }
                }
                _ => {
                    object.insert(field.clone(), value.clone());
                }
            }
        }
        let config = LearnerConfig::from_input(&merged).map_err(SettingsError::Invalid)?;
        config.validate().map_err(SettingsError::Invalid)?;
        Ok(config)
    }

    /// The snapshot policy with this patch applied, validated.
    pub fn apply_policy(&self, current: SnapshotPolicy) -> Result<SnapshotPolicy, SettingsError> {
        let mut merged = serde_json::to_value(current).expect("policy serializes");
        let object = merged.as_object_mut().expect("policy is an object");
        for (k, v) in &self.snapshot_policy {
            object.insert(k.clone(), v.clone());
        }
        let policy: SnapshotPolicy = serde_path_to_error::deserialize(merged).map_err(|e| {
            let path = e.path().to_string();
            SettingsError::InvalidPolicy(format!("{path}: {}", e.into_inner()))
        })?;
        policy.validate().map_err(SettingsError::from)?;
        Ok(policy)
    }
}

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct SettingsChange {
    pub change_id: i64,
    /// The first version learned with the new settings.
    pub model_version: i64,
    pub changed_fields: Vec<String>,
    pub old_settings: Value,
    pub new_settings: Value,
    pub old_snapshot_policy: Value,
    pub new_snapshot_policy: Value,
    pub changed_by: Option<String>,
    pub changed_at: DateTime<Utc>,
}

/// What an update did: the model as it is now, its snapshot policy, and the change recorded
/// (None when every given value was already in force: nothing is recorded).
#[derive(Debug, Clone, Serialize)]
pub struct Updated {
    pub model: Model,
    pub snapshot_policy: SnapshotPolicy,
    pub change: Option<SettingsChange>,
}

/// The paths (`learning_rate`, `drift.detector`, …) whose values differ between two JSON objects,
/// one level into nested objects, sorted.
fn changed_paths(prefix: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    let empty = Map::new();
    let (o, n) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let (a, b) = (o.get(key), n.get(key));
        if a == b {
            continue;
        }
        match (a, b) {
            (Some(a @ Value::Object(_)), Some(b @ Value::Object(_))) => {
                changed_paths(&format!("{prefix}{key}."), a, b, out)
            }
            _ => out.push(format!("{prefix}{key}")),
        }
    }
}

const CHANGE_COLUMNS: &str = "change_id, model_version, changed_fields, old_settings, \
                              new_settings, old_snapshot_policy, new_snapshot_policy, \
                              changed_by, changed_at";

/// Applies `patch` to a model in the caller's transaction: waits for a batch in progress (the
/// model's row lock, held until the caller commits), checks the new values, stores them and
/// records the change with the version it takes effect at.
pub async fn update(
    conn: &mut PgConnection,
    model_id: Uuid,
    patch: &SettingsPatch,
    changed_by: &str,
) -> Result<Updated, SettingsError> {
    let model = models::lock(&mut *conn, model_id, false)
        .await?
        .ok_or_else(|| ModelError::NotFound(model_id.to_string()))?;
    let old_policy = snapshots::policy(&mut *conn, model_id).await?;
    let new_settings = patch.apply_settings(&model.settings)?;
    let new_policy = patch.apply_policy(old_policy)?;

    let (old_s, new_s) = (to_json(&model.settings), to_json(&new_settings));
    let (old_p, new_p) = (to_json(&old_policy), to_json(&new_policy));
    let mut changed = Vec::new();
    changed_paths("", &old_s, &new_s, &mut changed);
    changed_paths("snapshot_policy.", &old_p, &new_p, &mut changed);
    if changed.is_empty() {
        return Ok(Updated {
            model,
            snapshot_policy: old_policy,
            change: None,
        });
    }
    sqlx::query(
        "UPDATE models SET settings = $2, auto_snapshot_every_versions = $3,
                auto_snapshot_every_minutes = $4, auto_snapshot_keep = $5, updated_at = now()
         WHERE model_id = $1",
    )
    .bind(model_id)
    .bind(&new_s)
    .bind(new_policy.every_versions)
    .bind(new_policy.every_minutes)
    .bind(new_policy.keep)
    .execute(&mut *conn)
    .await?;
    let change = record_change(
        &mut *conn,
        &model,
        &changed,
        [&old_s, &new_s, &old_p, &new_p],
        changed_by,
    )
    .await?;
    let model = models::find(&mut *conn, &model_id.to_string()).await?;
    Ok(Updated {
        model,
        snapshot_policy: new_policy,
        change: Some(change),
    })
}

/// Records a change of `model`'s settings or policy (`[old settings, new settings, old policy,
/// new policy]`), taking effect at the model's next version.
async fn record_change(
    conn: &mut PgConnection,
    model: &Model,
    changed: &[String],
    [old_s, new_s, old_p, new_p]: [&Value; 4],
    changed_by: &str,
) -> Result<SettingsChange, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO model_settings_changes
             (model_id, model_version, changed_fields, old_settings, new_settings,
              old_snapshot_policy, new_snapshot_policy, changed_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING {CHANGE_COLUMNS}"
    ))
    .bind(model.model_id)
    .bind(model.version + 1)
    .bind(changed)
    .bind(old_s)
    .bind(new_s)
    .bind(old_p)
    .bind(new_p)
    .bind(changed_by)
    .fetch_one(conn)
    .await
}

/// Replaces all of a locked model's learner settings, fixed fields too (a promotion, where the
/// parameters change with them in the same version), and records the change like any other.
/// None when they are the same.
pub async fn replace_settings(
    conn: &mut PgConnection,
    model: &Model,
    new_settings: &LearnerConfig,
    changed_by: &str,
) -> Result<Option<SettingsChange>, SettingsError> {
    let (old_s, new_s) = (to_json(&model.settings), to_json(new_settings));
    let mut changed = Vec::new();
    changed_paths("", &old_s, &new_s, &mut changed);
    if changed.is_empty() {
        return Ok(None);
    }
    sqlx::query("UPDATE models SET settings = $2, updated_at = now() WHERE model_id = $1")
        .bind(model.model_id)
        .bind(&new_s)
        .execute(&mut *conn)
        .await?;
    let policy = to_json(&snapshots::policy(&mut *conn, model.model_id).await?);
    let change = record_change(
        &mut *conn,
        model,
        &changed,
        [&old_s, &new_s, &policy, &policy],
        changed_by,
    )
    .await?;
    Ok(Some(change))
}

/// Replaces a model's whole snapshot policy (`PUT …/snapshot-policy`, `olps snapshot policy`),
/// recorded like any other change; the caller's transaction, as [`update`].
pub async fn set_snapshot_policy(
    conn: &mut PgConnection,
    model_id: Uuid,
    policy: &SnapshotPolicy,
    changed_by: &str,
) -> Result<SnapshotPolicy, SettingsError> {
    policy.validate()?;
    let Value::Object(fields) = to_json(policy) else {
        unreachable!("a policy serializes to an object")
    };
    let patch = SettingsPatch {
        settings: Map::new(),
        snapshot_policy: fields,
    };
    Ok(update(conn, model_id, &patch, changed_by)
        .await?
        .snapshot_policy)
}

/// A model's settings changes, oldest first.
pub async fn history(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
) -> Result<Vec<SettingsChange>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {CHANGE_COLUMNS} FROM model_settings_changes WHERE model_id = $1
         ORDER BY change_id"
    ))
    .bind(model_id)
    .fetch_all(db)
    .await
}

fn to_json(value: &impl Serialize) -> Value {
    serde_json::to_value(value).expect("settings serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fixed_settings_are_refused_by_name() {
        let err = SettingsPatch::from_json(&json!({"settings": {"optimizer": "adam"}}))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("settings.optimizer cannot change"), "{err}");
        let err = SettingsPatch::from_json(&json!({"name": "x"}))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("name: cannot change"), "{err}");
        let err = SettingsPatch::from_json(&json!({}))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("nothing to change"), "{err}");
    }

    #[test]
    fn nested_settings_merge_field_by_field() {
        let patch = SettingsPatch::from_json(
            &json!({"settings": {"learning_rate": 0.5, "drift": {"detector": "page_hinkley"}}}),
        )
        .unwrap();
        let before = LearnerConfig::default();
        let after = patch.apply_settings(&before).unwrap();
        assert_eq!(after.learning_rate, 0.5);
        assert_eq!(after.drift.adwin_delta, before.drift.adwin_delta);
        let mut paths = Vec::new();
        changed_paths(
            "",
            &serde_json::to_value(&before).unwrap(),
            &serde_json::to_value(&after).unwrap(),
            &mut paths,
        );
        assert_eq!(paths, ["drift.detector", "learning_rate"]);
        let bad = SettingsPatch::from_json(&json!({"settings": {"drift": {"detector": "x"}}}))
            .unwrap()
            .apply_settings(&before)
            .unwrap_err()
            .to_string();
        assert!(bad.starts_with("settings.drift.detector"), "{bad}");
    }
}
