//! POST /v1/models/{m}/feedback: one event or a batch, one transaction and one insert per request.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;

use super::{parse_json, ApiError, AppState};
use crate::feedback::{self, Accepted};
use crate::models;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/models/{model}/feedback", post(ingest))
}

async fn ingest(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let body: serde_json::Value = parse_json(body)?;
    let model = models::find(&state.pool, &model).await?;
    let events = feedback::parse_request(&body, model.kind)?;
    // One statement is one transaction: the whole batch is stored, or nothing.
    let ids = feedback::insert(&state.pool, model.model_id, &events).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: ids.len(),
            ids,
        }),
    ))
}
