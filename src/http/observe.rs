//! Per-request observation: metrics by matched route template, one structured log event per
//! request, a `Server-Timing` header with the server's own time, and the per-request timeout's
//! answer in our JSON error shape.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::header::{HeaderValue, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::metrics;

/// The status the timeout layer answers with (then rewritten to our error shape).
pub const TIMEOUT_STATUS: StatusCode = StatusCode::SERVICE_UNAVAILABLE;

/// Default per-request timeout: requests taking longer are answered 503 `timeout` (and their
/// work cancelled).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Records metrics and a log event for every request, and adds `Server-Timing: app;dur=<ms>`.
pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = metrics::method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let mut response = next.run(request).await;
    let elapsed = started.elapsed();
    let route = route.as_deref().unwrap_or("unmatched");
    let status = response.status();
    let m = metrics::global();
    m.http_requests
        .with_label_values(&[method, route, status.as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[method, route])
        .observe(elapsed.as_secs_f64());
    let micros = elapsed.as_micros() as u64;
    if let Ok(value) = HeaderValue::from_str(&format!("app;dur={:.3}", micros as f64 / 1000.0)) {
        response.headers_mut().insert("server-timing", value);
    }
    // Successes at debug (OLPS_LOG=olps::request=debug shows them), client errors at info,
    // server errors at warn.
    if status.is_server_error() {
        tracing::warn!(target: "olps::request", method, route, status = status.as_u16(), micros, "request");
    } else if status.is_client_error() {
        tracing::info!(target: "olps::request", method, route, status = status.as_u16(), micros, "request");
    } else {
        tracing::debug!(target: "olps::request", method, route, status = status.as_u16(), micros, "request");
    }
    response
}

/// Turns the timeout layer's empty answer into our error shape. Our own handlers always answer
/// with a JSON body, so an empty-bodied [`TIMEOUT_STATUS`] comes from the timeout layer.
pub async fn timeout_as_json(response: Response, timeout: Duration) -> Response {
    if response.status() == TIMEOUT_STATUS && !response.headers().contains_key(CONTENT_TYPE) {
        return ApiError::new(
            TIMEOUT_STATUS,
            "timeout",
            format!(
                "the request took longer than {timeout:?} and was cancelled; retry, or send \
                 smaller batches"
            ),
        )
        .into_response();
    }
    response
}
