//! Versions over HTTP: snapshots (and the automatic snapshot policy), rollback, point-in-time
//! parameter reads and the update history.
//!
//! - `POST|GET /v1/models/{m}/snapshots`, `GET|DELETE /v1/models/{m}/snapshots/{uuid-or-label}`
//! - `GET|PUT /v1/models/{m}/snapshot-policy`
//! - `POST /v1/models/{m}/rollback` with `{"to_version": V}` or `{"snapshot": "uuid-or-label"}`
//! - `GET /v1/models/{m}/parameters[?version=V | ?at=TIME]`
//! - `GET /v1/models/{m}/updates[?parameter=P&since=T&until=T&limit=N]`

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_json, ApiError, AppState};
use crate::history::{self, At, HistoryError, HistoryFilter, ParametersAt};
use crate::models;
use crate::rollback::{self, RollbackOutcome, RollbackTarget};
use crate::snapshots::{self, Snapshot, SnapshotPolicy};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/models/{model}/snapshots",
            get(list_snapshots).post(create_snapshot),
        )
        .route(
            "/v1/models/{model}/snapshots/{snapshot}",
            get(show_snapshot).delete(delete_snapshot),
        )
        .route(
            "/v1/models/{model}/snapshot-policy",
            get(show_policy).put(set_policy),
        )
        .route("/v1/models/{model}/rollback", post(rollback))
        .route("/v1/models/{model}/parameters", get(parameters))
        .route("/v1/models/{model}/updates", get(updates))
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::Model(m) => m.into(),
            HistoryError::SnapshotNotFound(_) => ApiError::not_found(e.to_string()),
            HistoryError::VersionNotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "version_not_found", e.to_string())
            }
            HistoryError::DuplicateLabel(_) => ApiError::conflict(e.to_string()),
            HistoryError::SnapshotInUse { .. } => {
                ApiError::new(StatusCode::CONFLICT, "snapshot_in_use", e.to_string())
            }
            HistoryError::Unreachable { .. } => {
                ApiError::new(StatusCode::GONE, "version_unreachable", e.to_string())
            }
            HistoryError::InvalidArgument(_) => ApiError::bad_request(e.to_string()),
            HistoryError::Db(_) => ApiError::internal(e),
        }
    }
}

/// The query string as (name, value) pairs, refusing names outside `allowed` and repeats.
fn query_pairs(raw: Option<String>, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if !allowed.contains(&name.as_ref()) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter '{name}'; this route accepts {}",
                allowed.join(", ")
            )));
        }
        if pairs.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::bad_request(format!(
                "query parameter '{name}' is given twice"
            )));
        }
        pairs.push((name.into_owned(), value.into_owned()));
    }
    Ok(pairs)
}

fn get_param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn int_param(pairs: &[(String, String)], name: &str) -> Result<Option<i64>, ApiError> {
    get_param(pairs, name)
        .map(|v| {
            v.trim().parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("{name}: must be an integer, got '{v}'"))
            })
        })
        .transpose()
}

fn time_param(
    pairs: &[(String, String)],
    name: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    get_param(pairs, name)
        .map(|v| history::parse_time(v).map_err(|m| ApiError::bad_request(format!("{name}: {m}"))))
        .transpose()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateSnapshot {
    #[serde(default)]
    label: Option<String>,
}

async fn create_snapshot(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Snapshot>), ApiError> {
    let request: CreateSnapshot = match &body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => CreateSnapshot::default(),
        _ => parse_json(body)?,
    };
    let model_id = models::resolve_id(&state.pool, &model).await?;
    let snapshot = snapshots::create(&state.pool, model_id, request.label.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(snapshot)))
}

async fn list_snapshots(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let model_id = models::resolve_id(&state.pool, &model).await?;
    let list = snapshots::list(&state.pool, model_id).await?;
    Ok(Json(json!({"model_id": model_id, "snapshots": list})))
}

async fn show_snapshot(
    State(state): State<AppState>,
    Path((model, snapshot)): Path<(String, String)>,
) -> Result<Json<Snapshot>, ApiError> {
    let model_id = models::resolve_id(&state.pool, &model).await?;
    Ok(Json(
        snapshots::find(&state.pool, model_id, &snapshot).await?,
    ))
}

async fn delete_snapshot(
    State(state): State<AppState>,
    Path((model, snapshot)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let model_id = models::resolve_id(&state.pool, &model).await?;
    let deleted = snapshots::delete(&state.pool, model_id, &snapshot).await?;
    Ok(Json(json!({"deleted": deleted})))
}

async fn show_policy(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<SnapshotPolicy>, ApiError> {
    let model_id = models::resolve_id(&state.pool, &model).await?;
    Ok(Json(snapshots::policy(&state.pool, model_id).await?))
}

async fn set_policy(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SnapshotPolicy>, ApiError> {
    let policy: SnapshotPolicy = parse_json(body)?;
    let model_id = models::resolve_id(&state.pool, &model).await?;
    Ok(Json(
        snapshots::set_policy(&state.pool, model_id, &policy).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    #[serde(default)]
    to_version: Option<i64>,
    #[serde(default)]
    snapshot: Option<String>,
}

async fn rollback(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RollbackOutcome>, ApiError> {
    let request: RollbackRequest = parse_json(body)?;
    let target = match (request.to_version, request.snapshot) {
        (Some(v), None) => RollbackTarget::Version(v),
        (None, Some(s)) => RollbackTarget::Snapshot(s),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of \"to_version\" (a version number) or \"snapshot\" (a \
                 snapshot's UUID or label)",
            ))
        }
    };
    let model_id = models::resolve_id(&state.pool, &model).await?;
    Ok(Json(
        rollback::rollback(&state.pool, model_id, &target).await?,
    ))
}

async fn parameters(
    State(state): State<AppState>,
    Path(model): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ParametersAt>, ApiError> {
    let pairs = query_pairs(raw, &["version", "at"])?;
    let at = match (int_param(&pairs, "version")?, time_param(&pairs, "at")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give either version or at, not both"))
        }
        (Some(v), None) => At::Version(v),
        (None, Some(t)) => At::Time(t),
        (None, None) => At::Current,
    };
    let model_id = models::resolve_id(&state.pool, &model).await?;
    Ok(Json(
        history::parameters_at(&state.pool, model_id, at).await?,
    ))
}

async fn updates(
    State(state): State<AppState>,
    Path(model): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let pairs = query_pairs(raw, &["parameter", "since", "until", "limit"])?;
    let filter = HistoryFilter {
        parameter: get_param(&pairs, "parameter").map(str::to_string),
        since: time_param(&pairs, "since")?,
        until: time_param(&pairs, "until")?,
        limit: int_param(&pairs, "limit")?,
    };
    filter.validate()?;
    let model_id = models::resolve_id(&state.pool, &model).await?;
    let rows = history::updates(&state.pool, model_id, &filter).await?;
    Ok(Json(json!({"model_id": model_id, "updates": rows})))
}
