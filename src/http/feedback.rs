//! POST /v1/models/{m}/feedback: one event or a batch, one transaction and one insert per request.
//! Events may carry their own `id`: a retried request stores each event once, and the answer
//! counts the new and the already stored ones.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{data_exception_message, DbFailure};
use super::openapi::{AcceptedDoc, ErrorBody, FeedbackRequestDoc};
use super::{parse_json, retry, ApiError, AppState};
use crate::feedback::{self, Accepted};
use crate::{metrics, models};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(ingest))
}

/// Stores one event or a batch for the worker to learn (one transaction: a batch with one bad
/// event stores nothing, and the error names the event's index). An event with an `id` already
/// stored for the model is not stored again: retry a request that timed out with the same ids.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/feedback",
    tag = "feedback",
    params(("model" = String, Path, description = "The model's UUID or name")),
    request_body = FeedbackRequestDoc,
    responses(
        (status = 202, description = "Stored and queued (`new`), or already stored by an earlier \
                                     try (`already_stored`)", body = AcceptedDoc),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "An event is invalid, or two events share an id; the \
                                     message names the field (and the events' indexes)", body = ErrorBody),
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
    // One statement is one transaction: the whole batch is stored, or nothing (so a retry after
    // a serialization failure or deadlock cannot store anything twice).
    let (pool, model_id, events) = (&state.pool, model.model_id, &events);
    let stored = retry::transient("feedback insert", || async move {
        feedback::insert(pool, model_id, events).await
    })
    .await
    .map_err(|e| match DbFailure::of(&e) {
        // Validation leaves nothing the database refuses; if it missed something, it is still
        // the client's value.
        DbFailure::DataException => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_feedback",
            data_exception_message(&e),
        ),
        _ => ApiError::from(e),
    })?;
    metrics::global()
        .feedback_accepted
        .with_label_values(&[&model.name])
        .inc_by(stored.new as u64);
    Ok((StatusCode::ACCEPTED, Json(Accepted::from(stored))))
}
