//! POST /v1/models/{m}/feedback: one event or a batch, one transaction and one insert per request.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{AcceptedDoc, ErrorBody, FeedbackRequestDoc};
use super::{parse_json, ApiError, AppState};
use crate::feedback::{self, Accepted};
use crate::{metrics, models};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ingest))
}

/// Stores one event or a batch for the worker to learn (one transaction: a batch with one bad
/// event stores nothing, and the error names the event's index).
#[utoipa::path(
    post,
    path = "/v1/models/{model}/feedback",
    tag = "feedback",
    params(("model" = String, Path, description = "The model's UUID or name")),
    request_body = FeedbackRequestDoc,
    responses(
        (status = 202, description = "Stored and queued", body = AcceptedDoc),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "An event is invalid; the message names its field", body = ErrorBody),
    )
)]
async fn ingest(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let outcome = ingest_events(&state, &model, body).await;
    if let Err(e) = &outcome {
        metrics::global()
            .feedback_rejected
            .with_label_values(&[e.code])
            .inc();
    }
    outcome
}

async fn ingest_events(
    state: &AppState,
    model: &str,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let body: serde_json::Value = parse_json(body)?;
    let model = models::find(&state.pool, model).await?;
    let events = feedback::parse_request(&body, model.kind)?;
    // One statement is one transaction: the whole batch is stored, or nothing.
    let ids = feedback::insert(&state.pool, model.model_id, &events).await?;
    metrics::global()
        .feedback_accepted
        .with_label_values(&[&model.name])
        .inc_by(ids.len() as u64);
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: ids.len(),
            ids,
        }),
    ))
}
