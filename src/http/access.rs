//! Who may call which route: `Authorization: Bearer <token>` on every /v1 route, checked by one
//! middleware against one table ([`ROUTES`]), and the audit record of every state-changing
//! request.
//!
//! - no token, or a bad, expired or revoked one: 401 `unauthorized` (with `WWW-Authenticate`);
//! - a token without the route's scope, or limited to some models on a route that needs every
//!   model (creating models, tokens, protected /metrics): 403 `forbidden`;
//! - a token limited to some models, on a model outside them: 404 `not_found`, the same answer as
//!   for a model that does not exist (such a token cannot tell them apart), and `GET /v1/models`
//!   lists only its models.
//!
//! Verified tokens are cached for [`crate::auth::cache::DEFAULT_TTL`] (configurable), so a
//! request costs no database round trip; a revocation takes effect within that time (at once on
//! the service that revoked it). `olps serve --no-auth` (loopback listeners only) lets every
//! request through as the `no-auth` caller, still audited.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sqlx::PgPool;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{OpenApi, RefOr, ResponseBuilder};

use super::{ApiError, AppState};
use crate::auth::cache::{Verifier, DEFAULT_TTL};
use crate::auth::{audit, Principal, Scope};
use crate::models::ModelError;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: anyone may call it.
    Open,
    /// A token with this scope (for a route with `{model}`, one that may use that model).
    Scope(Scope),
    /// A token with this scope that is not limited to some models.
    AllModels(Scope),
    /// Open, unless `--protect-metrics`: then `read` for every model.
    Metrics,
    /// Open, unless `--protect-openapi`: then `read`.
    OpenApi,
}

/// One route: method, path template (as registered), what it needs, and the audit action of a
/// state-changing route.
#[derive(Debug, Clone, Copy)]
pub struct RouteAccess {
    pub method: &'static str,
    pub path: &'static str,
    pub need: Need,
    pub audit: Option<&'static str>,
}

const fn route(
    method: &'static str,
    path: &'static str,
    need: Need,
    audit: Option<&'static str>,
) -> RouteAccess {
    RouteAccess {
        method,
        path,
        need,
        audit,
    }
}

use Need::{AllModels, Metrics, Open, OpenApi as Doc};
use Scope::{Admin, Feedback, Predict, Read, Write};

/// Every route and what it needs: THE table (README, "Running olps securely", shows it). A route
/// missing here needs an admin token for every model (and a test fails on it).
pub const ROUTES: &[RouteAccess] = &[
    route("GET", "/healthz", Open, None),
    route("GET", "/metrics", Metrics, None),
    route("GET", "/openapi.json", Doc, None),
    route("GET", "/v1/models", Need::Scope(Read), None),
    route("POST", "/v1/models", AllModels(Write), Some("model.create")),
    route("GET", "/v1/models/{model}", Need::Scope(Read), None),
    route(
        "PATCH",
        "/v1/models/{model}",
        Need::Scope(Write),
        Some("model.update"),
    ),
    route(
        "POST",
        "/v1/models/{model}/feedback",
        Need::Scope(Feedback),
        None,
    ),
    route(
        "POST",
        "/v1/models/{model}/predict",
        Need::Scope(Predict),
        None,
    ),
    route(
        "GET",
        "/v1/models/{model}/parameters",
        Need::Scope(Read),
        None,
    ),
    route("GET", "/v1/models/{model}/updates", Need::Scope(Read), None),
    route("GET", "/v1/models/{model}/metrics", Need::Scope(Read), None),
    route(
        "GET",
        "/v1/models/{model}/snapshots",
        Need::Scope(Read),
        None,
    ),
    route(
        "POST",
        "/v1/models/{model}/snapshots",
        Need::Scope(Write),
        Some("snapshot.create"),
    ),
    route(
        "GET",
        "/v1/models/{model}/snapshots/{snapshot}",
        Need::Scope(Read),
        None,
    ),
    route(
        "DELETE",
        "/v1/models/{model}/snapshots/{snapshot}",
        Need::Scope(Admin),
        Some("snapshot.delete"),
    ),
    route(
        "GET",
        "/v1/models/{model}/snapshot-policy",
        Need::Scope(Read),
        None,
    ),
    route(
        "PUT",
        "/v1/models/{model}/snapshot-policy",
        Need::Scope(Write),
        Some("snapshot-policy.set"),
    ),
    route(
        "POST",
        "/v1/models/{model}/rollback",
        Need::Scope(Admin),
        Some("rollback"),
    ),
    route(
        "GET",
        "/v1/models/{model}/challengers",
        Need::Scope(Read),
        None,
    ),
    route(
        "POST",
        "/v1/models/{model}/challengers",
        Need::Scope(Write),
        Some("challenger.add"),
    ),
    route(
        "DELETE",
        "/v1/models/{model}/challengers/{challenger}",
        Need::Scope(Write),
        Some("challenger.remove"),
    ),
    route(
        "POST",
        "/v1/models/{model}/challengers/{challenger}/promote",
        Need::Scope(Admin),
        Some("challenger.promote"),
    ),
    route(
        "POST",
        "/v1/models/{model}/resume",
        Need::Scope(Admin),
        Some("model.resume"),
    ),
    route("GET", "/v1/tokens", AllModels(Admin), None),
    route("POST", "/v1/tokens", AllModels(Admin), Some("token.create")),
    route(
        "DELETE",
        "/v1/tokens/{token}",
        AllModels(Admin),
        Some("token.revoke"),
    ),
];

/// What a route not in [`ROUTES`] needs: fail closed.
const UNLISTED: Need = AllModels(Admin);

/// The entry of a route, if listed.
pub fn lookup(method: &str, path: &str) -> Option<&'static RouteAccess> {
    ROUTES
        .iter()
        .find(|r| r.method.eq_ignore_ascii_case(method) && r.path == path)
}

/// How the service checks callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessConfig {
    /// False: `--no-auth` (every request is the `no-auth` caller).
    pub require_tokens: bool,
    /// How long a verified token is believed without asking the database again (0: ask every
    /// time).
    pub token_cache: Duration,
    pub protect_metrics: bool,
    pub protect_openapi: bool,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            require_tokens: true,
            token_cache: DEFAULT_TTL,
            protect_metrics: false,
            protect_openapi: false,
        }
    }
}

impl AccessConfig {
    /// `--no-auth`: for local use on loopback only (the caller checks the listener).
    pub fn no_auth() -> AccessConfig {
        AccessConfig {
            require_tokens: false,
            ..AccessConfig::default()
        }
    }
}

/// The access state of one service.
pub struct Access {
    pub config: AccessConfig,
    pub verifier: Verifier,
    pool: PgPool,
}

impl Access {
    pub fn new(pool: PgPool, config: AccessConfig) -> Access {
        Access {
            verifier: Verifier::new(pool.clone(), config.token_cache),
            config,
            pool,
        }
    }
}

/// `--no-auth` is for local use: refused unless the listener is on loopback.
pub fn check_listener(
    listener: &tokio::net::TcpListener,
    config: &AccessConfig,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    if !config.require_tokens && !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "--no-auth serves every request without a token, so it is only allowed on a \
                 loopback address (127.0.0.1, ::1), not on {addr}; create a token with `olps \
                 token create` and drop --no-auth"
            ),
        ));
    }
    Ok(())
}

fn unauthorized(message: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"olps\""),
    );
    response
}

fn forbidden(message: String) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response()
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "cannot verify a token: database unreachable");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
        "the database is unreachable, so the token cannot be verified; retry shortly",
    )
    .into_response()
}

/// The bearer secret of a request: `Ok(None)` without an Authorization header.
fn bearer(request: &Request) -> Result<Option<&str>, &'static str> {
    let Some(value) = request.headers().get(AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not valid text")?;
    let (scheme, secret) = value
        .trim()
        .split_once(' ')
        .ok_or("the Authorization header must be 'Bearer <token>'")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("the Authorization header must be 'Bearer <token>'");
    }
    Ok(Some(secret.trim()))
}

/// The middleware: authenticates, authorizes, hands the caller to the handler (as an
/// `Extension<Arc<Principal>>`) and audits state-changing requests.
pub async fn guard(
    State(state): State<AppState>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    mut request: Request,
    next: Next,
) -> Response {
    let access = state.access.clone();
    let method = request.method().as_str().to_string();
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| request.uri().path().to_string());
    let entry = lookup(&method, &template);
    let need = match entry.map(|e| e.need) {
        Some(Need::Metrics) if !access.config.protect_metrics => Open,
        Some(Need::OpenApi) if !access.config.protect_openapi => Open,
        Some(Need::Metrics) => AllModels(Read),
        Some(Need::OpenApi) => Need::Scope(Read),
        Some(need) => need,
        None => {
            tracing::warn!(%method, route = %template, "route missing from the access table: admin only");
            UNLISTED
        }
    };
    if need == Open {
        return next.run(request).await;
    }
    let principal = if access.config.require_tokens {
        let secret =
            match bearer(&request) {
                Ok(Some(secret)) => secret,
                Ok(None) => return unauthorized(
                    "this route needs an API token: send 'Authorization: Bearer <token>' (create \
                     one with `olps token create`)",
                ),
                Err(message) => return unauthorized(message),
            };
        match access.verifier.verify(secret).await {
            Ok(Ok(principal)) => principal,
            Ok(Err(refusal)) => return unauthorized(refusal.message()),
            Err(e) => return unavailable(e),
        }
    } else {
        Arc::new(Principal::no_auth())
    };
    let (scope, every_model) = match need {
        Need::Scope(s) => (s, false),
        AllModels(s) => (s, true),
        _ => unreachable!("open routes returned above"),
    };
    if !principal.scopes.allows(scope) {
        return forbidden(format!(
            "this route needs a token with the '{scope}' scope (admin includes every scope); this \
             token has: {}",
            principal.scopes.names().join(", ")
        ));
    }
    if every_model && !principal.all_models() {
        return forbidden(
            "this route needs a token for every model; this token is limited to some models"
                .to_string(),
        );
    }
    // Path parameters, looked up only when needed (not on the hot path of an unrestricted
    // token on an unaudited route).
    let params = params.ok();
    let param = |name: &str| {
        params
            .as_ref()
            .and_then(|p| p.iter().find(|(k, _)| *k == name))
            .map(|(_, v)| v.to_string())
    };
    let audit_action = entry.and_then(|e| e.audit);
    let model_key = if principal.all_models() && audit_action.is_none() {
        None
    } else {
        param("model")
    };
    if let (Some(key), false) = (&model_key, principal.all_models()) {
        match access.verifier.model_id(key).await {
            Ok(Some(id)) if principal.sees_model(id) => {}
            Ok(_) => return ApiError::from(ModelError::NotFound(key.clone())).into_response(),
            Err(e) => return unavailable(e),
        }
    }
    request.extensions_mut().insert(principal.clone());
    let response = next.run(request).await;
    let Some(action) = audit_action else {
        return response;
    };
    // Audit: after the answer, with its status and (for a success) its body, minus any secret.
    let status = response.status();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 4 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let details: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    let model_id = match details
        .as_ref()
        .and_then(|d| d.get("model_id"))
        .and_then(|v| v.as_str())
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
    {
        Some(id) => Some(id),
        None => match &model_key {
            Some(key) => access.verifier.model_id(key).await.ok().flatten(),
            None => None,
        },
    };
    let target = param("snapshot")
        .or_else(|| param("token"))
        .or(model_key.clone());
    let entry = audit::Entry {
        action: action.to_string(),
        model_id,
        target,
        method: Some(method),
        route: Some(template),
        status: Some(status.as_u16()),
        details,
    };
    if let Err(e) = audit::record(&access.pool, &principal, &entry).await {
        tracing::error!(error = %e, action, "could not record a request in the audit log");
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// Adds the bearer scheme to the OpenAPI document, and the 401 and 403 answers to every
/// operation that needs a token.
pub fn document(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("olps_…")
                .description(Some(
                    "An API token from `olps token create` or POST /v1/tokens; each route needs \
                     one scope (README, \"Running olps securely\").",
                ))
                .build(),
        ),
    );
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                            "ErrorBody",
                        ))))
                        .build(),
                )
                .build(),
        )
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, operation) in [
            ("GET", item.get.as_mut()),
            ("POST", item.post.as_mut()),
            ("PUT", item.put.as_mut()),
            ("DELETE", item.delete.as_mut()),
            ("PATCH", item.patch.as_mut()),
        ] {
            let Some(operation) = operation else { continue };
            let need = lookup(method, path).map_or(UNLISTED, |r| r.need);
            let scope = match need {
                Open | Metrics | Doc => continue,
                Need::Scope(s) | AllModels(s) => s,
            };
            operation.security = Some(vec![SecurityRequirement::new("bearer", [scope.as_str()])]);
            let responses = &mut operation.responses.responses;
            responses
                .entry("401".into())
                .or_insert_with(|| error("No token, or a bad, expired or revoked one"));
            responses.entry("403".into()).or_insert_with(|| {
                error(&format!(
                    "The token lacks the '{scope}' scope{}",
                    if matches!(need, AllModels(_)) {
                        ", or is limited to some models"
                    } else {
                        ""
                    }
                ))
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::cache::Refusal;

    #[test]
    fn the_table_names_each_route_once() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {} twice",
                    a.method,
                    a.path
                );
            }
        }
        assert_eq!(
            lookup("post", "/v1/models/{model}/rollback").unwrap().need,
            Need::Scope(Admin)
        );
    }

    #[test]
    fn refusals_say_what_to_do() {
        assert!(Refusal::Unknown.message().contains("Bearer"));
    }
}
