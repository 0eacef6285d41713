//! Refuses a URL carrying a NUL character (`%00`) in its path or query with a 400 before any
//! handler runs: PostgreSQL text cannot hold NUL, so no model name, snapshot label or parameter
//! can contain one, and passing it on would only make the database fail. (Bodies are checked
//! field by field where they are read; see [`crate::validation`].)

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// The middleware: 400 `invalid_request` naming the path or the query parameter.
pub async fn refuse_nul(request: Request, next: Next) -> Response {
    if let Some(problem) = nul_in(request.uri()) {
        return ApiError::bad_request(problem).into_response();
    }
    next.run(request).await
}

/// What in the URI holds a NUL, if anything.
pub fn nul_in(uri: &axum::http::Uri) -> Option<String> {
    const NUL: &str = "must not contain NUL (%00): PostgreSQL text cannot store it";
    if uri.path().contains("%00") {
        return Some(format!("path: {NUL}"));
    }
    let query = uri.query()?;
    if !query.contains("%00") {
        return None;
    }
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if name.contains('\0') {
            return Some(format!("query parameter name {name:?}: {NUL}"));
        }
        if value.contains('\0') {
            return Some(format!("query parameter '{name}': {NUL}"));
        }
    }
    // A "%00" that decodes to something else cannot happen, but refuse it the same way.
    Some(format!("query: {NUL}"))
}
