//! Models: the `models` table, addressed by UUID or by name.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection, PgExecutor};
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
    /// The model's stored settings, kind or learner state cannot be read (changed by hand, or
    /// written by an older bug). Only this model's operations fail (HTTP 500
    /// `model_state_unreadable`); listing and every other model keep working, and the worker
    /// sets the model aside, keeping its feedback queued.
    #[error(
        "the stored state of model '{name}' ({model_id}) is unreadable: {message}; repair the row \
         in `models` (README: \"An unreadable model\"); its feedback stays queued meanwhile"
    )]
    CorruptSettings {
        model_id: Uuid,
        name: String,
        message: String,
    },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<ConfigError> for ModelError {
    fn from(e: ConfigError) -> Self {
        ModelError::InvalidSettings(e)
    }
}

/// Whether the worker learns from a model's feedback: `quarantined` (by the guard) keeps the
/// feedback queued until `olps model resume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum ModelStatus {
    Active,
    Quarantined,
}

impl ModelStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelStatus::Active => "active",
            ModelStatus::Quarantined => "quarantined",
        }
    }
}

impl std::fmt::Display for ModelStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ModelStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
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
    pub status: ModelStatus,
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

/// A `models` row as stored; [`ModelRow::decode`] checks the JSON columns.
#[derive(FromRow)]
struct ModelRow {
    model_id: Uuid,
    name: String,
    kind: String,
    settings: serde_json::Value,
    version: i64,
    examples_seen: i64,
    status: ModelStatus,
    status_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    learner_state: serde_json::Value,
}

impl ModelRow {
    fn decode(self) -> Result<Model, ModelError> {
        let model_id = self.model_id;
        let name = self.name.clone();
        let corrupt = |message: String| ModelError::CorruptSettings {
            model_id,
            name: name.clone(),
            message,
        };
        Ok(Model {
            model_id,
            kind: self
                .kind
                .parse()
                .map_err(|e| corrupt(format!("kind: {e}")))?,
            // Fields a model's stored settings lack take their values from before they existed.
            settings: LearnerConfig::from_stored(&self.settings)
                .map_err(|e| corrupt(format!("settings: {e}")))?,
            name: self.name,
            version: self.version,
            examples_seen: self.examples_seen,
            status: self.status,
            status_reason: self.status_reason,
            created_at: self.created_at,
            updated_at: self.updated_at,
            learner_state: serde_json::from_value(self.learner_state)
                .map_err(|e| corrupt(format!("learner_state: {e}")))?,
        })
    }
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
    if name == "." || name == ".." {
        return invalid("must not be '.' or '..' (URLs drop such path segments)");
    }
    Ok(())
}

pub async fn create(db: impl PgExecutor<'_>, new: &NewModel) -> Result<Model, ModelError> {
    validate_name(&new.name)?;
    new.settings.validate()?;
    let settings = serde_json::to_value(&new.settings).expect("settings serialize");
    let row: ModelRow = sqlx::query_as(&format!(
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
    row.decode()
}

/// A model whose stored settings, kind or learner state cannot be read: what can be shown of it.
#[derive(Debug, Clone, Serialize)]
pub struct UnreadableModel {
    pub model_id: Uuid,
    pub name: String,
    pub kind: String,
    pub version: i64,
    pub examples_seen: i64,
    pub status: ModelStatus,
    /// Always true: tells this entry apart from a model in JSON listings.
    pub unreadable: bool,
    /// What cannot be read, and how to repair it.
    pub error: String,
}

/// One entry of [`list_all`].
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Listed {
    Model(Box<Model>),
    Unreadable(UnreadableModel),
}

/// Every model by name, each decoded on its own: one whose stored state cannot be read is listed
/// as [`Listed::Unreadable`] and does not stop the others.
pub async fn list_all(db: impl PgExecutor<'_>) -> Result<Vec<Listed>, ModelError> {
    let rows: Vec<ModelRow> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM models ORDER BY name"))
            .fetch_all(db)
            .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let (model_id, name, kind) = (row.model_id, row.name.clone(), row.kind.clone());
            let (version, examples_seen, status) = (row.version, row.examples_seen, row.status);
            match row.decode() {
                Ok(model) => Listed::Model(Box::new(model)),
                Err(e) => Listed::Unreadable(UnreadableModel {
                    model_id,
                    name,
                    kind,
                    version,
                    examples_seen,
                    status,
                    unreadable: true,
                    error: e.to_string(),
                }),
            }
        })
        .collect())
}

/// Every readable model, by name. A model whose stored state cannot be read is left out (with a
/// warning in the log) rather than failing the whole list; [`list_all`] shows it.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<Model>, ModelError> {
    Ok(list_all(db)
        .await?
        .into_iter()
        .filter_map(|entry| match entry {
            Listed::Model(model) => Some(*model),
            Listed::Unreadable(u) => {
                tracing::warn!(model_id = %u.model_id, name = %u.name, error = %u.error,
                    "model left out of the list: its stored state is unreadable");
                None
            }
        })
        .collect())
}

/// Finds a model by UUID or by name.
pub async fn find(db: impl PgExecutor<'_>, key: &str) -> Result<Model, ModelError> {
    let row: Option<ModelRow> = match Uuid::parse_str(key) {
        Ok(id) => {
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM models WHERE model_id = $1"))
                .bind(id)
                .fetch_optional(db)
                .await?
        }
        Err(_) => {
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM models WHERE name = $1"))
                .bind(key)
                .fetch_optional(db)
                .await?
        }
    };
    match row {
        Some(row) => row.decode(),
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
    conn: &mut PgConnection,
    model_id: Uuid,
    skip_locked: bool,
) -> Result<Option<Model>, ModelError> {
    let wait = if skip_locked { "SKIP LOCKED" } else { "" };
    let row: Option<ModelRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM models WHERE model_id = $1 FOR UPDATE {wait}"
    ))
    .bind(model_id)
    .fetch_optional(conn)
    .await?;
    row.map(ModelRow::decode).transpose()
}

/// Deletes a model and every row that belongs to it, in the caller's transaction (holding the
/// model's lock until it ends). Returns the rows removed per table.
pub async fn delete(
    conn: &mut PgConnection,
    model_id: Uuid,
) -> Result<Vec<(String, u64)>, ModelError> {
    // Children first: the queue references events, snapshot parameters reference snapshots.
    const TABLES: [&str; 11] = [
        "model_settings_changes",
        "model_promotions",
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
    lock(&mut *conn, model_id, false).await?;
    let mut removed = Vec::new();
    for table in TABLES {
        let done = sqlx::query(&format!("DELETE FROM {table} WHERE model_id = $1"))
            .bind(model_id)
            .execute(&mut *conn)
            .await?;
        removed.push((table.to_string(), done.rows_affected()));
    }
    let done = sqlx::query("DELETE FROM models WHERE model_id = $1")
        .bind(model_id)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ModelError::NotFound(model_id.to_string()));
    }
    Ok(removed)
}

/// How far a model's history reaches: its current version and the pruning horizon (history of
/// versions `1..=pruned_through` is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromRow)]
pub struct Horizon {
    #[sqlx(rename = "version")]
    pub current: i64,
    #[sqlx(rename = "history_pruned_through")]
    pub pruned_through: i64,
}

pub async fn horizon(db: impl PgExecutor<'_>, model_id: Uuid) -> Result<Horizon, ModelError> {
    sqlx::query_as("SELECT version, history_pruned_through FROM models WHERE model_id = $1")
        .bind(model_id)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| ModelError::NotFound(model_id.to_string()))
}

/// Records that the history of versions `1..=version` is gone (never lowers it). Takes the
/// model's row lock for the rest of the caller's transaction.
pub async fn raise_pruned_through(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    version: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE models SET history_pruned_through = greatest(history_pruned_through, $2)
         WHERE model_id = $1",
    )
    .bind(model_id)
    .bind(version)
    .execute(db)
    .await?;
    Ok(())
}

/// Moves a model from status `from` to `to` with its reason (None clears it). Returns false when
/// the model was not in `from` (or does not exist). Waits for a batch in progress (the model's
/// row lock).
pub async fn change_status(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    from: ModelStatus,
    to: ModelStatus,
    reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE models SET status = $3, status_reason = $4, updated_at = now()
         WHERE model_id = $1 AND status = $2",
    )
    .bind(model_id)
    .bind(from)
    .bind(to)
    .bind(reason)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The current version of each of the given models that still exists.
pub async fn versions_of(
    db: impl PgExecutor<'_>,
    model_ids: &[Uuid],
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT model_id, version FROM models WHERE model_id = ANY($1)")
        .bind(model_ids)
        .fetch_all(db)
        .await
}
