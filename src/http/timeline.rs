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
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{ErrorBody, SnapshotPolicyDoc};
use super::{parse_json, retry, ApiError, AppState};
use crate::models;
use crate::timeline::error::TimelineError;
use crate::timeline::history::{self, HistoryFilter};
use crate::timeline::reconstruct::{self, At, ParametersAt};
use crate::timeline::rollback::{self, RollbackOutcome, RollbackTarget};
use crate::timeline::snapshots::{self, Lock, Snapshot, SnapshotPolicy};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_snapshots, create_snapshot))
        .routes(routes!(show_snapshot, delete_snapshot))
        .routes(routes!(show_policy, set_policy))
        .routes(routes!(rollback))
        .routes(routes!(parameters))
        .routes(routes!(updates))
}

// ---- Documented shapes (mirrors of the library types, which stay free of utoipa) -------------

/// A snapshot: a model's parameters and optimizer state at one version.
#[derive(ToSchema)]
#[schema(as = Snapshot)]
#[allow(dead_code)]
pub struct SnapshotDoc {
    snapshot_id: uuid::Uuid,
    model_id: uuid::Uuid,
    model_version: i64,
    label: Option<String>,
    /// `manual` or `auto`.
    kind: String,
    parameter_count: i64,
    examples_seen: i64,
    #[schema(value_type = String, format = DateTime)]
    created_at: String,
}

/// `GET /v1/models/{model}/snapshots`: oldest version first.
#[derive(ToSchema)]
#[schema(as = SnapshotList)]
#[allow(dead_code)]
pub struct SnapshotListDoc {
    model_id: uuid::Uuid,
    snapshots: Vec<SnapshotDoc>,
}

/// `POST /v1/models/{model}/snapshots` (an empty body is fine too).
#[derive(ToSchema)]
#[schema(as = CreateSnapshot)]
#[allow(dead_code)]
pub struct CreateSnapshotDoc {
    /// Unique per model, 1..=200 characters, not a UUID.
    label: Option<String>,
}

/// `DELETE /v1/models/{model}/snapshots/{snapshot}`.
#[derive(ToSchema)]
#[schema(as = DeletedSnapshot)]
#[allow(dead_code)]
pub struct DeletedSnapshotDoc {
    deleted: SnapshotDoc,
}

/// `POST /v1/models/{model}/rollback`: exactly one of the two.
#[derive(ToSchema)]
#[schema(as = RollbackRequest)]
#[allow(dead_code)]
pub struct RollbackRequestDoc {
    /// A version, 0..=current (earlier, or later than a previous rollback's target).
    to_version: Option<i64>,
    /// A snapshot's UUID or label.
    snapshot: Option<String>,
}

/// What a rollback did: it is itself a new version.
#[derive(ToSchema)]
#[schema(as = RollbackOutcome)]
#[allow(dead_code)]
pub struct RollbackOutcomeDoc {
    model_id: uuid::Uuid,
    /// The new version.
    version: i64,
    previous_version: i64,
    rolled_back_to: i64,
    snapshot_id: Option<uuid::Uuid>,
    /// Parameters whose state changed (one history row each).
    parameters_changed: i64,
    /// Of those, the ones that did not exist at the target, set to their initial state.
    parameters_zeroed: i64,
    examples_seen: i64,
    /// `incremental-indexed`, `incremental-hashed` or `full`.
    plan: String,
}

/// One parameter at a version.
#[derive(ToSchema)]
#[schema(as = ParameterAt)]
#[allow(dead_code)]
pub struct ParameterAtDoc {
    parameter_id: String,
    value: f64,
    opt_m: f64,
    opt_v: f64,
    update_count: i64,
    feature_mean: f64,
    feature_m2: f64,
    last_changed_version: i64,
}

/// `GET /v1/models/{model}/parameters`: every parameter at one version.
#[derive(ToSchema)]
#[schema(as = ParametersAt)]
#[allow(dead_code)]
pub struct ParametersAtDoc {
    model_id: uuid::Uuid,
    version: i64,
    parameters: Vec<ParameterAtDoc>,
}

/// One history row.
#[derive(ToSchema)]
#[schema(as = ParameterUpdate)]
#[allow(dead_code)]
pub struct UpdateRowDoc {
    model_version: i64,
    parameter_id: String,
    old_value: Option<f64>,
    new_value: f64,
    /// `gradient`, `rollback`, ...
    update_type: String,
    learning_rate: Option<f64>,
    source: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    timestamp: String,
    opt_m: f64,
    opt_v: f64,
    update_count: i64,
    feature_mean: f64,
    feature_m2: f64,
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
}

/// `GET /v1/models/{model}/updates`: newest first.
#[derive(ToSchema)]
#[schema(as = ParameterUpdates)]
#[allow(dead_code)]
pub struct UpdatesDoc {
    model_id: uuid::Uuid,
    updates: Vec<UpdateRowDoc>,
}

impl From<TimelineError> for ApiError {
    fn from(e: TimelineError) -> Self {
        match e {
            TimelineError::Model(m) => m.into(),
            TimelineError::SnapshotNotFound(_) => ApiError::not_found(e.to_string()),
            TimelineError::VersionNotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "version_not_found", e.to_string())
            }
            TimelineError::DuplicateLabel(_) => ApiError::conflict(e.to_string()),
            TimelineError::SnapshotInUse { .. } => {
                ApiError::new(StatusCode::CONFLICT, "snapshot_in_use", e.to_string())
            }
            TimelineError::Unreachable { .. } => {
                ApiError::new(StatusCode::GONE, "version_unreachable", e.to_string())
            }
            TimelineError::InvalidArgument(_) => ApiError::bad_request(e.to_string()),
            TimelineError::Db(e) => e.into(),
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

/// Snapshots the model's current version (parameters and optimizer state, copied inside
/// PostgreSQL).
#[utoipa::path(
    post,
    path = "/v1/models/{model}/snapshots",
    tag = "versions",
    params(("model" = String, Path, description = "The model's UUID or name")),
    request_body = CreateSnapshotDoc,
    responses(
        (status = 201, description = "Created", body = SnapshotDoc),
        (status = 400, description = "Bad label or body", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 409, description = "The label is taken", body = ErrorBody),
    )
)]
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
    let (pool, label) = (&state.pool, request.label.as_deref());
    let snapshot = retry::transient("create snapshot", || async move {
        let mut tx = pool.begin().await?;
        let snapshot = snapshots::create(&mut tx, model_id, label).await?;
        tx.commit().await?;
        Ok::<_, TimelineError>(snapshot)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(snapshot)))
}

/// The model's snapshots, oldest version first.
#[utoipa::path(
    get,
    path = "/v1/models/{model}/snapshots",
    tag = "versions",
    params(("model" = String, Path, description = "The model's UUID or name")),
    responses(
        (status = 200, description = "The snapshots", body = SnapshotListDoc),
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
async fn list_snapshots(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let model_id = models::resolve_id(&state.pool, &model).await?;
    let list = snapshots::list(&mut *state.pool.acquire().await?, model_id).await?;
    Ok(Json(json!({"model_id": model_id, "snapshots": list})))
}

/// One snapshot, by UUID or label.
#[utoipa::path(
    get,
    path = "/v1/models/{model}/snapshots/{snapshot}",
    tag = "versions",
    params(("model" = String, Path, description = "The model's UUID or name"), ("snapshot" = String, Path, description = "The snapshot's UUID or label")),
    responses(
        (status = 200, description = "The snapshot", body = SnapshotDoc),
        (status = 404, description = "No such model or snapshot", body = ErrorBody),
    )
)]
async fn show_snapshot(
    State(state): State<AppState>,
    Path((model, snapshot)): Path<(String, String)>,
) -> Result<Json<Snapshot>, ApiError> {
    let model_id = models::resolve_id(&state.pool, &model).await?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(
        snapshots::find(&mut conn, model_id, &snapshot, Lock::None).await?,
    ))
}

/// Deletes a snapshot and its parameters.
#[utoipa::path(
    delete,
    path = "/v1/models/{model}/snapshots/{snapshot}",
    tag = "versions",
    params(("model" = String, Path, description = "The model's UUID or name"), ("snapshot" = String, Path, description = "The snapshot's UUID or label")),
    responses(
        (status = 200, description = "Deleted", body = DeletedSnapshotDoc),
        (status = 404, description = "No such model or snapshot", body = ErrorBody),
        (status = 409, description = "The retained history starts at this snapshot (after a \
                                     prune)", body = ErrorBody),
    )
)]
async fn delete_snapshot(
    State(state): State<AppState>,
    Path((model, snapshot)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let model_id = models::resolve_id(&state.pool, &model).await?;
    let (pool, snapshot) = (&state.pool, snapshot.as_str());
    let deleted = retry::transient("delete snapshot", || async move {
        let mut tx = pool.begin().await?;
        let deleted = snapshots::delete(&mut tx, model_id, snapshot).await?;
        tx.commit().await?;
        Ok::<_, TimelineError>(deleted)
    })
    .await?;
    Ok(Json(json!({"deleted": deleted})))
}

/// The model's automatic snapshot policy.
#[utoipa::path(
    get,
    path = "/v1/models/{model}/snapshot-policy",
    tag = "versions",
    params(("model" = String, Path, description = "The model's UUID or name")),
    responses(
        (status = 200, description = "The policy", body = SnapshotPolicyDoc),
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
async fn show_policy(
    State(state): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<SnapshotPolicy>, ApiError> {
    let model_id = models::resolve_id(&state.pool, &model).await?;
    Ok(Json(snapshots::policy(&state.pool, model_id).await?))
}

/// Replaces the model's automatic snapshot policy.
#[utoipa::path(
    put,
    path = "/v1/models/{model}/snapshot-policy",
    tag = "versions",
    params(("model" = String, Path, description = "The model's UUID or name")),
    request_body = SnapshotPolicyDoc,
    responses(
        (status = 200, description = "The new policy", body = SnapshotPolicyDoc),
        (status = 400, description = "A value below 1, or a bad body", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
async fn set_policy(
    State(state): State<AppState>,
    Path(model): Path<String>,
    principal: Option<axum::Extension<std::sync::Arc<crate::auth::Principal>>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SnapshotPolicy>, ApiError> {
    let policy: SnapshotPolicy = parse_json(body)?;
    policy.validate()?;
    let model_id = models::resolve_id(&state.pool, &model).await?;
    // Recorded in the model's settings history like a PATCH of its snapshot_policy.
    let changed_by = crate::auth::changed_by(principal.as_ref().map(|p| p.0.as_ref()));
    let (pool, policy, changed_by) = (&state.pool, &policy, changed_by.as_str());
    Ok(Json(
        retry::transient("set snapshot policy", || async move {
            let mut tx = pool.begin().await?;
            let set =
                crate::settings::set_snapshot_policy(&mut tx, model_id, policy, changed_by).await?;
            tx.commit().await?;
            Ok::<_, crate::settings::SettingsError>(set)
        })
        .await?,
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

/// Makes the parameters, optimizer state and example count those of an earlier (or later)
/// version, as a new version with one `rollback` history row per changed parameter. Parameters
/// that did not exist then are set to their initial state. Waits for a worker batch in progress.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/rollback",
    tag = "versions",
    params(("model" = String, Path, description = "The model's UUID or name")),
    request_body = RollbackRequestDoc,
    responses(
        (status = 200, description = "Rolled back: the new version", body = RollbackOutcomeDoc),
        (status = 400, description = "Not exactly one of to_version and snapshot, or a bad \
                                     body", body = ErrorBody),
        (status = 404, description = "No such model, version or snapshot", body = ErrorBody),
        (status = 410, description = "The version's history was pruned", body = ErrorBody),
    )
)]
async fn rollback(
    State(state): State<AppState>,
    principal: Option<axum::Extension<std::sync::Arc<crate::auth::Principal>>>,
    Path(model): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RollbackOutcome>, ApiError> {
    let request: RollbackRequest = parse_json(body)?;
    let target = match (request.to_version, request.snapshot) {
        (Some(v), None) => RollbackTarget::Version(v),
        (None, Some(s)) if s.contains('\0') => {
            return Err(ApiError::bad_request(
                crate::validation::Invalid::new("snapshot", crate::validation::Problem::Nul)
                    .to_string(),
            ))
        }
        (None, Some(s)) => RollbackTarget::Snapshot(s),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of \"to_version\" (a version number) or \"snapshot\" (a \
                 snapshot's UUID or label)",
            ))
        }
    };
    let model_id = models::resolve_id(&state.pool, &model).await?;
    // The version's `source` names who rolled back (the token).
    let source = principal.map_or_else(
        || crate::auth::Principal::no_auth().rollback_source(),
        |axum::Extension(p)| p.rollback_source(),
    );
    let (pool, target, source) = (&state.pool, &target, &source);
    let outcome = retry::transient("rollback", || async move {
        let mut tx = pool.begin().await?;
        let outcome = rollback::rollback_by(&mut tx, model_id, target, source).await?;
        tx.commit().await?;
        Ok::<_, TimelineError>(outcome)
    })
    .await?;
    Ok(Json(outcome))
}

/// Every parameter (value and optimizer state) at the current version, at `version`, or at the
/// version current at time `at`, from one consistent state: the nearest snapshot plus history.
#[utoipa::path(
    get,
    path = "/v1/models/{model}/parameters",
    tag = "versions",
    params(
        ("model" = String, Path, description = "The model's UUID or name"),
        ("version" = Option<i64>, Query, description = "A version, 0..=current"),
        ("at" = Option<String>, Query, description = "A time (RFC 3339): the version current then"),
    ),
    responses(
        (status = 200, description = "The parameters", body = ParametersAtDoc),
        (status = 400, description = "A bad query parameter (named in the message)", body = ErrorBody),
        (status = 404, description = "No such model, or a version beyond the current one", body = ErrorBody),
        (status = 410, description = "The version's history was pruned", body = ErrorBody),
    )
)]
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
    let mut tx = state.pool.begin().await?;
    let read = reconstruct::parameters_at(&mut tx, model_id, at).await?;
    tx.commit().await?;
    Ok(Json(read))
}

/// The model's update history, newest first (by version, then parameter).
#[utoipa::path(
    get,
    path = "/v1/models/{model}/updates",
    tag = "versions",
    params(
        ("model" = String, Path, description = "The model's UUID or name"),
        ("parameter" = Option<String>, Query, description = "Only this parameter"),
        ("since" = Option<String>, Query, description = "Rows at or after this time (RFC 3339)"),
        ("until" = Option<String>, Query, description = "Rows before this time (RFC 3339)"),
        ("limit" = Option<i64>, Query, description = "At most this many rows (1..=100000, default 1000)"),
    ),
    responses(
        (status = 200, description = "The rows", body = UpdatesDoc),
        (status = 400, description = "A bad query parameter (named in the message)", body = ErrorBody),
        (status = 404, description = "No such model", body = ErrorBody),
    )
)]
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
    let rows = history::updates(&mut *state.pool.acquire().await?, model_id, &filter).await?;
    Ok(Json(json!({"model_id": model_id, "updates": rows})))
}
