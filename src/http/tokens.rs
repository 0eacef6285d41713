//! /v1/tokens: create (the secret is in the answer, once), list and revoke API tokens. Needs an
//! admin token for every model (see `access::ROUTES`).

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::ErrorBody;
use super::{parse_json, ApiError, AppState};
use crate::auth::tokens::{self, CreatedToken, NewToken, TokenError};
use crate::auth::{Principal, Scopes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::NotFound(_) => ApiError::not_found(e.to_string()),
            TokenError::DuplicateName(_) => ApiError::conflict(e.to_string()),
            TokenError::Invalid(_) | TokenError::Scope(_) => ApiError::bad_request(e.to_string()),
            TokenError::Model(m) => m.into(),
            TokenError::Db(db) => ApiError::internal(db),
        }
    }
}

/// An API token as listed: never its secret.
#[derive(ToSchema)]
#[schema(as = Token)]
#[allow(dead_code)]
pub struct TokenDoc {
    token_id: uuid::Uuid,
    name: String,
    /// The start of the secret, to recognise it.
    hint: String,
    /// predict, feedback, read, write, admin (admin includes every scope).
    scopes: Vec<String>,
    /// Null: every model.
    models: Option<Vec<uuid::Uuid>>,
    /// active, expired or revoked.
    status: String,
    #[schema(value_type = String, format = DateTime)]
    created_at: String,
    created_by: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    revoked_at: Option<String>,
    revoked_by: Option<String>,
    /// When a service last checked the token against the database (at most once per token-cache
    /// period, 10 s by default, per service).
    #[schema(value_type = Option<String>, format = DateTime)]
    last_used_at: Option<String>,
}

/// A created token, with its secret (shown only here).
#[derive(ToSchema)]
#[schema(as = CreatedToken)]
#[allow(dead_code)]
pub struct CreatedTokenDoc {
    token_id: uuid::Uuid,
    name: String,
    hint: String,
    scopes: Vec<String>,
    models: Option<Vec<uuid::Uuid>>,
    status: String,
    #[schema(value_type = String, format = DateTime)]
    created_at: String,
    created_by: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    revoked_at: Option<String>,
    revoked_by: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    last_used_at: Option<String>,
    /// `olps_` + 64 hex digits: send it as `Authorization: Bearer <secret>`. Only this answer
    /// shows it; olps stores its SHA-256.
    secret: String,
}

/// `POST /v1/tokens`.
#[derive(ToSchema)]
#[schema(as = CreateToken)]
#[allow(dead_code)]
pub struct CreateTokenDoc {
    /// 1..=200 characters, unique among the tokens in force, not a UUID.
    name: String,
    /// One or more of predict, feedback, read, write, admin.
    scopes: Vec<String>,
    /// Models (UUID or name) the token is limited to; omitted or empty: every model.
    models: Option<Vec<String>>,
    /// e.g. 90d, 12h, 30m, 2w; omitted: never expires.
    expires_in: Option<String>,
}

/// `GET /v1/tokens`.
#[derive(ToSchema)]
#[schema(as = TokenList)]
#[allow(dead_code)]
pub struct TokenListDoc {
    tokens: Vec<TokenDoc>,
}

/// `DELETE /v1/tokens/{token}`.
#[derive(ToSchema)]
#[schema(as = RevokedToken)]
#[allow(dead_code)]
pub struct RevokedTokenDoc {
    revoked: TokenDoc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    scopes: Vec<String>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    expires_in: Option<String>,
}

/// Creates a token. The answer holds its secret; no later answer does.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "access",
    request_body = CreateTokenDoc,
    responses(
        (status = 201, description = "Created; `secret` is shown only here", body = CreatedTokenDoc),
        (status = 400, description = "A bad name, scope, model list or duration", body = ErrorBody),
        (status = 404, description = "A model of `models` does not exist", body = ErrorBody),
        (status = 409, description = "A token of that name is in force", body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    principal: Option<Extension<Arc<Principal>>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let request: CreateToken = parse_json(body)?;
    let scopes = Scopes::parse(&request.scopes).map_err(TokenError::from)?;
    let expires_in = request
        .expires_in
        .as_deref()
        .map(tokens::parse_duration)
        .transpose()
        .map_err(|m| ApiError::bad_request(format!("expires_in: {m}")))?;
    let creator = principal.map_or_else(Principal::no_auth, |Extension(p)| (*p).clone());
    let new = NewToken {
        name: request.name,
        scopes,
        models: request.models.unwrap_or_default(),
        expires_in,
    };
    let created = tokens::create(&state.pool, &new, &creator).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// The tokens in force (and, with `include_revoked=true`, the revoked ones), newest first.
#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "access",
    params(("include_revoked" = Option<bool>, Query, description = "Also list revoked tokens")),
    responses(
        (status = 200, description = "The tokens (never their secrets)", body = TokenListDoc),
        (status = 400, description = "A bad query parameter", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut include_revoked = false;
    for (name, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match (name.as_ref(), value.as_ref()) {
            ("include_revoked", "true") => include_revoked = true,
            ("include_revoked", "false") => include_revoked = false,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter '{name}={value}'; this route accepts \
                     include_revoked=true|false"
                )))
            }
        }
    }
    let list = tokens::list(&state.pool, include_revoked).await?;
    Ok(Json(json!({ "tokens": list })))
}

/// Revokes a token (by UUID, or by the name of a token in force): it stops working at once on
/// this service and within the token-cache period (10 s by default) on every other.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{token}",
    tag = "access",
    params(("token" = String, Path, description = "The token's UUID or name")),
    responses(
        (status = 200, description = "Revoked (or was already)", body = RevokedTokenDoc),
        (status = 404, description = "No such token", body = ErrorBody),
    )
)]
async fn revoke(
    State(state): State<AppState>,
    principal: Option<Extension<Arc<Principal>>>,
    Path(token): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let by = principal.map_or_else(Principal::no_auth, |Extension(p)| (*p).clone());
    let revoked = tokens::revoke(&state.pool, &token, &by).await?;
    state.access.verifier.forget_token(revoked.token_id);
    Ok(Json(json!({ "revoked": revoked })))
}
