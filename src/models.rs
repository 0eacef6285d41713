//! Models: the `models` table, addressed by UUID or by name.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

use crate::learner::{ConfigError, LearnerConfig, ModelKind, ModelState};

pub const MAX_NAME_LEN: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model '{0}' not found (give its UUID or its name; `olps model list` shows them)")]
    NotFound(String),
    #[error("a model named '{0}' already exists; choose another name")]
    DuplicateName(String),
    #[error("name: {0}")]
    InvalidName(String),
    #[error("settings.{0}")]
    InvalidSettings(ConfigError),
    #[error("stored settings of model {model_id} are unreadable: {message}")]
    CorruptSettings { model_id: Uuid, message: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<ConfigError> for ModelError {
    fn from(e: ConfigError) -> Self {
        ModelError::InvalidSettings(e)
    }
}

/// A model as stored: identity, kind, learner settings, current version and status.
#[derive(Debug, Clone, Serialize)]
pub struct Model {
    pub model_id: Uuid,
    pub name: String,
    pub kind: ModelKind,
    pub settings: LearnerConfig,
    pub version: i64,
    pub examples_seen: i64,
    pub status: String,
    pub status_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The learner's model-level state (drift detectors); internal, not shown by the API.
    #[serde(skip)]
    pub learner_state: ModelState,
}

/// What `create` needs.
#[derive(Debug, Clone)]
pub struct NewModel {
    pub name: String,
    pub kind: ModelKind,
    pub settings: LearnerConfig,
}

const COLUMNS: &str = "model_id, name, kind, settings, version, examples_seen, status, \
                       status_reason, created_at, updated_at, learner_state";

fn from_row(row: &PgRow) -> Result<Model, ModelError> {
    let model_id: Uuid = row.try_get("model_id")?;
    let kind: String = row.try_get("kind")?;
    let settings: serde_json::Value = row.try_get("settings")?;
    let corrupt = |message: String| ModelError::CorruptSettings { model_id, message };
    Ok(Model {
        model_id,
        name: row.try_get("name")?,
        kind: kind.parse().map_err(|e| corrupt(format!("{e}")))?,
        settings: serde_json::from_value(settings).map_err(|e| corrupt(e.to_string()))?,
        version: row.try_get("version")?,
        examples_seen: row.try_get("examples_seen")?,
        status: row.try_get("status")?,
        status_reason: row.try_get("status_reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        learner_state: serde_json::from_value(row.try_get("learner_state")?)
            .map_err(|e| corrupt(format!("learner_state: {e}")))?,
    })
}

/// Checks a model name: 1..=200 characters, no control characters, not a UUID (a name that parses
/// as a UUID would be ambiguous wherever a model is given "by UUID or name").
pub fn validate_name(name: &str) -> Result<(), ModelError> {
    let invalid = |m: &str| Err(ModelError::InvalidName(m.to_string()));
    if name.trim().is_empty() {
        return invalid("must not be empty");
    }
    if name.chars().count() > MAX_NAME_LEN {
        return invalid(&format!("must be at most {MAX_NAME_LEN} characters"));
    }
    if name.chars().any(char::is_control) {
        return invalid("must not contain control characters");
    }
    if Uuid::parse_str(name).is_ok() {
        return invalid("must not be a UUID (models are addressed by UUID or name)");
    }
    Ok(())
}

pub async fn create(db: impl PgExecutor<'_>, new: &NewModel) -> Result<Model, ModelError> {
    validate_name(&new.name)?;
    new.settings.validate()?;
    let settings = serde_json::to_value(&new.settings).expect("settings serialize");
    let row = sqlx::query(&format!(
        "INSERT INTO models (name, kind, settings) VALUES ($1, $2, $3) RETURNING {COLUMNS}"
    ))
    .bind(&new.name)
    .bind(new.kind.as_str())
    .bind(settings)
    .fetch_one(db)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            ModelError::DuplicateName(new.name.clone())
        }
        _ => ModelError::Db(e),
    })?;
    from_row(&row)
}

pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<Model>, ModelError> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM models ORDER BY name"))
        .fetch_all(db)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Finds a model by UUID or by name.
pub async fn find(db: impl PgExecutor<'_>, key: &str) -> Result<Model, ModelError> {
    let row = match Uuid::parse_str(key) {
        Ok(id) => {
            sqlx::query(&format!("SELECT {COLUMNS} FROM models WHERE model_id = $1"))
                .bind(id)
                .fetch_optional(db)
                .await?
        }
        Err(_) => {
            sqlx::query(&format!("SELECT {COLUMNS} FROM models WHERE name = $1"))
                .bind(key)
                .fetch_optional(db)
                .await?
        }
    };
    match row {
        Some(row) => from_row(&row),
        None => Err(ModelError::NotFound(key.to_string())),
    }
}

/// Resolves a model given by UUID or name to its UUID.
pub async fn resolve_id(db: impl PgExecutor<'_>, key: &str) -> Result<Uuid, ModelError> {
    Ok(find(db, key).await?.model_id)
}

/// Locks a model's row for the rest of the caller's transaction: every change to a model's
/// parameters (a worker batch, a rollback) holds it, so they never interleave. With `skip_locked`
/// a model another transaction holds is skipped (None) instead of waited for.
pub async fn lock(
    conn: &mut sqlx::PgConnection,
    model_id: Uuid,
    skip_locked: bool,
) -> Result<Option<Model>, ModelError> {
    let wait = if skip_locked { "SKIP LOCKED" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM models WHERE model_id = $1 FOR UPDATE {wait}"
    ))
    .bind(model_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Deletes a model and every row that belongs to it, in one transaction. Returns the rows
/// removed per table.
pub async fn delete(pool: &sqlx::PgPool, model_id: Uuid) -> Result<Vec<(String, u64)>, ModelError> {
    // Children first: the queue references events, snapshot parameters reference snapshots.
    const TABLES: [&str; 9] = [
        "feedback_queue",
        "feedback_events",
        "prediction_log",
        "drift_events",
        "snapshot_parameters",
        "snapshots",
        "parameter_updates",
        "model_parameters",
        "model_versions",
    ];
    let mut tx = pool.begin().await?;
    lock(&mut tx, model_id, false).await?;
    let mut removed = Vec::new();
    for table in TABLES {
        let done = sqlx::query(&format!("DELETE FROM {table} WHERE model_id = $1"))
            .bind(model_id)
            .execute(&mut *tx)
            .await?;
        removed.push((table.to_string(), done.rows_affected()));
    }
    let done = sqlx::query("DELETE FROM models WHERE model_id = $1")
        .bind(model_id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ModelError::NotFound(model_id.to_string()));
    }
    tx.commit().await?;
    Ok(removed)
}
