//! GET /v1/models/{m}/metrics (the prequential loss series and drift events) and
//! POST /v1/models/{m}/resume (lift a quarantine).

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::models;
use crate::monitor;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/models/{model}/metrics", get(model_metrics))
        .route("/v1/models/{model}/resume", post(resume))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsQuery {
    /// First version of the range (default 1).
    pub from_version: Option<i64>,
    /// Last version of the range (default: the current version).
    pub to_version: Option<i64>,
    /// Examples per point of the loss series (default 500).
    pub window: Option<i64>,
}

async fn model_metrics(
    State(state): State<AppState>,
    Path(model): Path<String>,
    query: Result<Query<MetricsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let model = models::find(&state.pool, &model).await?;
    let from = query.from_version.unwrap_or(1);
    let to = query.to_version.unwrap_or(model.version);
    let window = query.window.unwrap_or(500);
    if from < 0 || to < from {
        return Err(ApiError::bad_request(format!(
            "from_version ({from}) and to_version ({to}) must satisfy 0 <= from_version <= to_version"
        )));
    }
    if !(1..=10_000_000).contains(&window) {
        return Err(ApiError::bad_request(format!(
            "window must be between 1 and 10000000 examples, got {window}"
        )));
    }
    let series = monitor::loss_series(&state.pool, model.model_id, from, to, window).await?;
    let drifts = monitor::drift_events(&state.pool, model.model_id, from, to).await?;
    Ok(Json(json!({
        "model_id": model.model_id,
        "version": model.version,
        "status": model.status,
        "status_reason": model.status_reason,
        "examples_seen": model.examples_seen,
        "window": window,
        "loss": series,
        "drift_events": drifts,
    })))
}

async fn resume(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let model = models::find(&state.pool, &model).await?;
    let resumed = monitor::resume(&state.pool, model.model_id).await?;
    Ok(Json(
        json!({"model_id": model.model_id, "resumed": resumed, "status": "active"}),
    ))
}
