//! GET /v1/models/{m}/metrics (the prequential loss series and drift events) and
//! POST /v1/models/{m}/resume (lift a quarantine).

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::ErrorBody;
use super::{retry, ApiError, AppState};
use crate::models;
use crate::monitor;
use crate::shadow::compare;
use crate::timeline::version;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(model_metrics))
        .routes(routes!(resume))
}

/// The answer of GET /v1/models/{m}/metrics.
#[derive(Serialize, ToSchema)]
pub struct ModelMetricsDoc {
    model_id: uuid::Uuid,
    version: i64,
    /// `active` or `quarantined`.
    status: String,
    status_reason: Option<String>,
    examples_seen: i64,
    window: i64,
    /// Points of consecutive learned versions, about `window` examples each:
    /// {from_version, to_version, examples, mean_loss, accuracy (logistic), until}.
    loss: Vec<serde_json::Value>,
    /// {model_version, detector, statistic, threshold, at_example, adaptation, lr_multiplier,
    /// detected_at}.
    drift_events: Vec<serde_json::Value>,
    /// The model's challengers, each compared with it over the same events (those the model
    /// learned since the link was made that the challenger has learned too), whatever the version
    /// range: {challenger_id, challenger, challenger_version, since_version, added_at, events,
    /// not_learned_by_challenger, champion_mean_loss, challenger_mean_loss, champion_accuracy,
    /// challenger_accuracy (both logistic only)}.
    challengers: Vec<serde_json::Value>,
}

/// The answer of POST /v1/models/{m}/resume.
#[derive(Serialize, ToSchema)]
pub struct ResumeDoc {
    model_id: uuid::Uuid,
    /// False when the model was not quarantined.
    resumed: bool,
    status: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// First version of the range (default 1).
    pub from_version: Option<i64>,
    /// Last version of the range (default: the current version).
    pub to_version: Option<i64>,
    /// Examples per point of the loss series (default 500).
    pub window: Option<i64>,
}

/// The prequential loss series (each example's loss before it was learned) over a version range,
/// the drift events in it, the model's status, and its challengers compared with it.
#[utoipa::path(
    get,
    path = "/v1/models/{model}/metrics",
    tag = "monitoring",
    params(("model" = String, Path, description = "The model's UUID or name"), MetricsQuery),
    responses(
        (status = 200, description = "Loss series and drift events", body = ModelMetricsDoc),
        (status = 400, description = "Bad range or window", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
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
    let series = version::loss_series(&state.pool, model.model_id, from, to, window).await?;
    let drifts = monitor::drift_events(&state.pool, model.model_id, from, to).await?;
    let challengers = compare::compare(&state.pool, model.model_id, model.kind).await?;
    Ok(Json(json!({
        "model_id": model.model_id,
        "version": model.version,
        "status": model.status,
        "status_reason": model.status_reason,
        "examples_seen": model.examples_seen,
        "window": window,
        "loss": series,
        "drift_events": drifts,
        "challengers": challengers,
    })))
}

/// Lets a model quarantined by the guard learn again; its pending feedback is then applied.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/resume",
    tag = "monitoring",
    params(("model" = String, Path, description = "The model's UUID or name")),
    responses(
        (status = 200, description = "Resumed (or was not quarantined)", body = ResumeDoc),
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
async fn resume(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let model = models::find(&state.pool, &model).await?;
    let (pool, model_id) = (&state.pool, model.model_id);
    let resumed = retry::transient("resume", || monitor::resume(pool, model_id)).await?;
    Ok(Json(
        json!({"model_id": model.model_id, "resumed": resumed, "status": "active"}),
    ))
}
