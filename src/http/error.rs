//! The one application error type of the HTTP API: every domain error maps to a status here, and
//! the body is always `{"error": {"code": "...", "message": "..."}}`. Internal errors are logged
//! and answered with a generic message.
//!
//! Database failures that are not the server's fault are not 500s either:
//! - a PostgreSQL data exception (SQLSTATE class 22: a value the database cannot take, such as a
//!   NUL character or a time out of range) is a 400 `invalid_value` with the database's message
//!   (and the column when PostgreSQL names one); ingest answers 422 `invalid_feedback` instead;
//! - no free connection within the pool's acquire timeout is a 503 `database_busy`;
//! - a statement cancelled by `statement_timeout` is a 503 `statement_timeout`;
//! - a serialization failure (40001) or deadlock (40P01) that persisted through the bounded
//!   retries of [`super::retry`] is a 503 `database_conflict`;
//! - a lost or refused connection (SQLSTATE class 08, 57P01..57P03, I/O) is a 503
//!   `database_unavailable`.
//!
//! Every 503 carries `Retry-After` (seconds).

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
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

impl ApiError {
    /// Seconds a client should wait before retrying: set on every 503.
    pub fn retry_after(&self) -> Option<u64> {
        let seconds = match self.code {
            "database_unavailable" => 5,
            _ => 1,
        };
        (self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(seconds)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after();
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
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
            ModelError::Db(e) => e.into(),
        }
    }
}

impl From<crate::settings::SettingsError> for ApiError {
    fn from(e: crate::settings::SettingsError) -> Self {
        use crate::settings::SettingsError as E;
        match e {
            E::InvalidRequest(_) | E::Fixed { .. } | E::Invalid(_) | E::InvalidPolicy(_) => {
                ApiError::bad_request(e.to_string())
            }
            E::Model(m) => m.into(),
            E::Db(d) => d.into(),
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

/// What a database error means for the client (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// SQLSTATE class 22: a value the database refuses.
    DataException,
    /// 40001 or 40P01: the transaction may succeed when run again.
    Transient,
    /// No free connection within the acquire timeout.
    PoolTimedOut,
    /// 57014: cancelled by `statement_timeout`.
    StatementTimeout,
    /// The database is unreachable, restarting or shutting down.
    Unavailable,
    /// Anything else: a bug or an operator's problem, answered 500.
    Internal,
}

impl DbFailure {
    pub fn of(e: &sqlx::Error) -> DbFailure {
        match e {
            sqlx::Error::PoolTimedOut => DbFailure::PoolTimedOut,
            sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                DbFailure::Unavailable
            }
            sqlx::Error::Database(d) => {
                let code = d.code().unwrap_or_default();
                match code.as_ref() {
                    c if c.starts_with("22") => DbFailure::DataException,
                    "40001" | "40P01" => DbFailure::Transient,
                    "57014" => DbFailure::StatementTimeout,
                    "57P01" | "57P02" | "57P03" => DbFailure::Unavailable,
                    c if c.starts_with("08") => DbFailure::Unavailable,
                    _ => DbFailure::Internal,
                }
            }
            _ => DbFailure::Internal,
        }
    }
}

/// The database's own words for a data exception: its message, the column when it names one,
/// and the SQLSTATE.
pub fn data_exception_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default();
            let column = d
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|pg| pg.column())
                .map(|c| format!("{c}: "))
                .unwrap_or_default();
            format!(
                "{column}a value in the request was refused by the database: {} (SQLSTATE {code})",
                d.message()
            )
        }
        other => other.to_string(),
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match DbFailure::of(&e) {
            DbFailure::DataException => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_value",
                data_exception_message(&e),
            ),
            DbFailure::PoolTimedOut => {
                tracing::warn!("no free database connection within the pool's acquire timeout");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_busy",
                    "no database connection within the service's acquire timeout: every \
                     connection is busy, or the database cannot be reached (a restart, an \
                     outage); nothing was changed; retry after the time in Retry-After",
                )
            }
            DbFailure::StatementTimeout => {
                tracing::warn!(error = %e, "statement cancelled by statement_timeout");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "statement_timeout",
                    "a database statement took longer than the service's statement_timeout and \
                     was cancelled (nothing was changed); retry after the time in Retry-After, \
                     or send smaller batches",
                )
            }
            DbFailure::Transient => {
                tracing::warn!(error = %e, "serialization failure or deadlock persisted through retries");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_conflict",
                    "the request kept conflicting with concurrent work (serialization failure \
                     or deadlock) and nothing was changed; retry after the time in Retry-After",
                )
            }
            DbFailure::Unavailable => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "the database is unreachable; retry after the time in Retry-After",
                )
            }
            DbFailure::Internal => ApiError::internal(e),
        }
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
