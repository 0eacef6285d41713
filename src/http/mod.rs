//! The HTTP API (JSON under /v1): one router per area, merged here.

pub mod access;
mod challengers;
mod error;
mod feedback;
mod models;
mod monitor;
mod nul;
mod observe;
pub mod openapi;
mod pool;
pub mod predict;
pub mod retry;
mod timeline;
mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::{Json, Router};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::serving::{Serving, ServingConfig};

pub use error::ApiError;
pub use pool::{service_pool, ServicePool, DEFAULT_STATEMENT_TIMEOUT};

/// Request bodies above this are refused with 413 (a 10,000-event batch with a few features each
/// is a few MiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// The in-memory models, their refresh tasks and the prediction log (started here, on the
    /// current Tokio runtime; [`serve`] flushes the log on shutdown).
    pub serving: Arc<Serving>,
    /// Requests running longer are cancelled and answered 503 `timeout`.
    pub request_timeout: Duration,
    /// Who may call which route (bearer tokens, or `--no-auth`), see [`access`].
    pub access: Arc<access::Access>,
}

impl AppState {
    pub fn new(pool: PgPool) -> AppState {
        AppState::with_serving(pool, ServingConfig::default())
    }

    pub fn with_serving(pool: PgPool, config: ServingConfig) -> AppState {
        AppState {
            serving: Serving::start(pool.clone(), config),
            access: Arc::new(access::Access::new(
                pool.clone(),
                access::AccessConfig::default(),
            )),
            pool,
            request_timeout: observe::REQUEST_TIMEOUT,
        }
    }

    /// The same state with other access settings (tokens are required by default).
    pub fn with_access(mut self, config: access::AccessConfig) -> AppState {
        self.access = Arc::new(access::Access::new(self.pool.clone(), config));
        self
    }
}

/// Every documented route. Each area's `router()` returns an `OpenApiRouter<AppState>` and
/// registers its handlers with `.routes(routes!(handler, ...))` (handlers annotated with
/// `#[utoipa::path(...)]`), which serves the route and adds it to the OpenAPI document in one
/// step; merge the area here.
pub fn api() -> OpenApiRouter<AppState> {
    let mut api = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .merge(models::router())
        .merge(feedback::router())
        .merge(predict::router())
        .merge(timeline::router())
        .merge(monitor::router())
        .merge(challengers::router())
        .merge(openapi::router())
        .merge(tokens::router());
    // The bearer scheme, and 401/403 on every operation that needs a token.
    access::document(api.get_openapi_mut());
    api
}

pub fn router(state: AppState) -> Router {
    let timeout = state.request_timeout;
    let (documented, _) = api().split_for_parts();
    documented
        // Bearer tokens on every route that needs one (access::ROUTES); after routing, so the
        // route's template and parameters are known and unknown paths stay 404.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::guard,
        ))
        // Plain axum routers: served but NOT in the OpenAPI document until converted to
        // `OpenApiRouter` + `routes!` and merged into `api()` (tests/it/serving.rs fails on them).
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(nul::refuse_nul))
        .layer(TimeoutLayer::with_status_code(
            observe::TIMEOUT_STATUS,
            timeout,
        ))
        .layer(axum::middleware::map_response(move |r| {
            observe::timeout_as_json(r, timeout)
        }))
        .layer(axum::middleware::from_fn(observe::observe))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves until `shutdown` is cancelled, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    access::check_listener(&listener, &state.access.config)?;
    let serving = state.serving.clone();
    let app = router(state);
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await;
    // Every request is answered: stop refreshing and write out the buffered prediction log.
    serving.shutdown().await;
    served
}

/// Liveness and database reachability.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The service and its database are up", body = openapi::Health),
        (status = 503, description = "The database is unreachable", body = openapi::ErrorBody),
    )
)]
async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    sqlx::query("SELECT 1")
        .execute(&state.pool)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "health check: database unreachable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is unreachable",
            )
        })?;
    Ok(Json(json!({"status": "ok"})))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; the API lives under /v1 (see README)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

/// Reads a JSON body into `T`, answering our error shape (with the serde message) on failure.
pub(crate) fn parse_json<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| error::body_rejection(r.status(), r.body_text()))?;
    let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("request body is not valid JSON: {inner}"))
        } else {
            ApiError::bad_request(format!("{path}: {inner}"))
        }
    })
}
