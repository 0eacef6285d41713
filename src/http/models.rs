//! /v1/models: create, list, show.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{CreateModelDoc, ErrorBody, ModelDoc, ModelListDoc};
use super::{parse_json, retry, ApiError, AppState};
use crate::learner::{LearnerConfig, ModelKind};
use crate::models::{self, Model, NewModel};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(show))
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

/// One model, by UUID or name.
#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "models",
    params(("model" = String, Path, description = "The model's UUID or name")),
    responses(
        (status = 200, description = "The model", body = ModelDoc),
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
async fn show(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Model>, ApiError> {
    Ok(Json(models::find(&state.pool, &model).await?))
}
