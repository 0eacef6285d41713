//! /v1/models: create, list, show, update (the settings that can change, [`crate::settings`]).

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{
    CreateModelDoc, ErrorBody, ModelDetailDoc, ModelDoc, ModelListDoc, UpdateModelDoc, UpdatedDoc,
};
use super::{parse_json, retry, ApiError, AppState};
use crate::auth::Principal;
use crate::learner::{LearnerConfig, ModelKind};
use crate::models::{self, Model, NewModel};
use crate::settings::{self, SettingsChange, SettingsPatch, Updated};
use crate::timeline::snapshots::{self, SnapshotPolicy};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show, update))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateModel {
    name: String,
    kind: ModelKind,
    /// Parsed by [`LearnerConfig::from_input`] (an optimizer without a rate gets its own).
    #[serde(default)]
    settings: Option<serde_json::Value>,
}

/// Creates a model (version 0, no parameters yet).
#[utoipa::path(
    post,
    path = "/v1/models",
    tag = "models",
    request_body = CreateModelDoc,
    responses(
        (status = 201, description = "Created", body = ModelDoc),
        (status = 400, description = "Invalid name, kind or settings", body = ErrorBody),
        (status = 409, description = "A model with that name exists", body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Model>), ApiError> {
    let request: CreateModel = parse_json(body)?;
    let new = NewModel {
        name: request.name,
        kind: request.kind,
        settings: match &request.settings {
            Some(given) => LearnerConfig::from_input(given).map_err(models::ModelError::from)?,
            None => LearnerConfig::default(),
        },
    };
    let (pool, new) = (&state.pool, &new);
    let model = retry::transient("create model", || models::create(pool, new)).await?;
    Ok((StatusCode::CREATED, Json(model)))
}

/// Every model, by name.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "models",
    responses((status = 200, description = "The models", body = ModelListDoc))
)]
async fn list(
    State(state): State<AppState>,
    principal: Option<axum::Extension<std::sync::Arc<crate::auth::Principal>>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut models = models::list(&state.pool).await?;
    // A token limited to some models lists only those.
    if let Some(axum::Extension(p)) = principal {
        models.retain(|m| p.sees_model(m.model_id));
    }
    Ok(Json(serde_json::json!({ "models": models })))
}

/// `GET /v1/models/{m}`: the model, its snapshot policy and the history of its settings.
#[derive(serde::Serialize)]
struct ModelDetail {
    #[serde(flatten)]
    model: Model,
    snapshot_policy: SnapshotPolicy,
    /// Oldest first, each with the first version learned under it.
    settings_changes: Vec<SettingsChange>,
}

/// One model, by UUID or name, with its snapshot policy and settings history.
#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "models",
    params(("model" = String, Path, description = "The model's UUID or name")),
    responses(
        (status = 200, description = "The model", body = ModelDetailDoc),
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
async fn show(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<ModelDetail>, ApiError> {
    let model = models::find(&state.pool, &model).await?;
    let snapshot_policy = snapshots::policy(&state.pool, model.model_id).await?;
    let settings_changes = settings::history(&state.pool, model.model_id).await?;
    Ok(Json(ModelDetail {
        model,
        snapshot_policy,
        settings_changes,
    }))
}

/// Changes the settings that can change safely (learning rate and schedule, regularization,
/// clipping, drift, guard, snapshot policy); others are refused with the field's name. The
/// change applies from the next batch on and is recorded with that version.
#[utoipa::path(
    patch,
    path = "/v1/models/{model}",
    tag = "models",
    params(("model" = String, Path, description = "The model's UUID or name")),
    request_body = UpdateModelDoc,
    responses(
        (status = 200, description = "The model as it is now, and the change recorded (null when nothing changed)", body = UpdatedDoc),
        (status = 400, description = "A field that cannot change, or a bad value; nothing was changed", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
async fn update(
    State(state): State<AppState>,
    Path(model): Path<String>,
    principal: Option<axum::Extension<std::sync::Arc<Principal>>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Updated>, ApiError> {
    let request: serde_json::Value = parse_json(body)?;
    let patch = SettingsPatch::from_json(&request)?;
    let model_id = models::resolve_id(&state.pool, &model).await?;
    let changed_by = crate::auth::changed_by(principal.as_ref().map(|p| p.0.as_ref()));
    let (pool, patch, changed_by) = (&state.pool, &patch, changed_by.as_str());
    let updated = retry::transient("update model", || async move {
        let mut tx = pool.begin().await?;
        let updated = settings::update(&mut tx, model_id, patch, changed_by).await?;
        tx.commit().await?;
        Ok::<_, settings::SettingsError>(updated)
    })
    .await?;
    Ok(Json(updated))
}
