//! The one application error type of the HTTP API: every domain error maps to a status here, and
//! the body is always `{"error": {"code": "...", "message": "..."}}`. Internal errors are logged
//! and answered with a generic message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::feedback::InvalidFeedback;
use crate::models::ModelError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// Logs the cause and answers 500 without leaking internals.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::NotFound(_) => ApiError::not_found(e.to_string()),
            ModelError::DuplicateName(_) => ApiError::conflict(e.to_string()),
            ModelError::InvalidName(_) | ModelError::InvalidSettings(_) => {
                ApiError::bad_request(e.to_string())
            }
            // Not a client mistake, and only this model's routes answer it (documented).
            ModelError::CorruptSettings { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "model_state_unreadable",
                e.to_string(),
            ),
            ModelError::Db(_) => ApiError::internal(e),
        }
    }
}

impl From<InvalidFeedback> for ApiError {
    fn from(e: InvalidFeedback) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_feedback",
            e.to_string(),
        )
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::internal(e)
    }
}

/// Turns a body that axum could not read (too large, not UTF-8 JSON, wrong content type) into our
/// error shape.
pub fn body_rejection(status: StatusCode, text: String) -> ApiError {
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "payload_too_large"
    } else {
        "invalid_body"
    };
    ApiError::new(status, code, text)
}
