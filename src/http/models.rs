//! /v1/models: create, list, show.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;

use super::{parse_json, ApiError, AppState};
use crate::learner::{LearnerConfig, ModelKind};
use crate::models::{self, Model, NewModel};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(list).post(create))
        .route("/v1/models/{model}", get(show))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateModel {
    name: String,
    kind: ModelKind,
    #[serde(default)]
    settings: Option<LearnerConfig>,
}

async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Model>), ApiError> {
    let request: CreateModel = parse_json(body)?;
    let new = NewModel {
        name: request.name,
        kind: request.kind,
        settings: request.settings.unwrap_or_default(),
    };
    let model = models::create(&state.pool, &new).await?;
    Ok((StatusCode::CREATED, Json(model)))
}

async fn list(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let models = models::list(&state.pool).await?;
    Ok(Json(serde_json::json!({ "models": models })))
}

async fn show(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Model>, ApiError> {
    Ok(Json(models::find(&state.pool, &model).await?))
}
