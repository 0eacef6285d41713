//! The OpenAPI 3 document of the HTTP API, generated from the handlers' `#[utoipa::path]`
//! annotations: every area's `router()` returns a `utoipa_axum::router::OpenApiRouter` whose
//! routes are registered with `routes!(handler, ...)`, which adds the route to the server and its
//! operation to the document in one step, so the two cannot drift. `GET /openapi.json` serves it.
//!
//! Shapes that live outside `http` (the stored [`crate::models::Model`], its settings, the
//! feedback answer) are described here by doc-only mirror types; a test compares their
//! properties with what the API actually serializes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::learner::LearnerConfig;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "olps",
        description = "Online-learning parameter store backed by PostgreSQL: models, feedback, \
                       predictions from one consistent model version, versions and rollback. \
                       Errors are always `{\"error\": {\"code\": ..., \"message\": ...}}`."
    ),
    components(schemas(ErrorBody, ErrorDetail, LearnerConfigDoc)),
    tags(
        (name = "models", description = "Create, list and show models"),
        (name = "feedback", description = "Labels (and features) to learn from"),
        (name = "serving", description = "Predictions from the in-memory model"),
        (name = "challengers", description = "Shadow models: challengers that learn a model's \
                                              feedback, compared on it, and promoted"),
        (name = "operations", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Machine-readable: `invalid_request`, `invalid_body`, `invalid_feedback`,
    /// `invalid_value` (a value the database refuses), `not_found`, `conflict`,
    /// `payload_too_large`, `method_not_allowed`; with status 503 and `Retry-After`: `timeout`,
    /// `statement_timeout`, `database_busy`, `database_conflict`, `database_unavailable`; and
    /// `internal`.
    code: String,
    /// What went wrong and what to do about it.
    message: String,
}

/// The model family.
#[derive(ToSchema)]
#[schema(as = ModelKind)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum ModelKindDoc {
    Linear,
    Logistic,
}

/// Learner settings. Its schema is generated from the defaults the library serializes, so it
/// always lists exactly the fields the API accepts and shows (with their default values).
pub struct LearnerConfigDoc;

impl utoipa::PartialSchema for LearnerConfigDoc {
    fn schema() -> RefOr<Schema> {
        let defaults = serde_json::to_value(LearnerConfig::default()).expect("settings serialize");
        let mut object = ObjectBuilder::new().description(Some(
            "Learner settings: every field is optional on input (its default applies) and \
             unknown fields are rejected. See LearnerConfig in the library for each field.",
        ));
        for (name, value) in defaults.as_object().into_iter().flatten() {
            let kind = match value {
                serde_json::Value::Bool(_) => Type::Boolean,
                serde_json::Value::Number(_) => Type::Number,
                serde_json::Value::String(_) => Type::String,
                serde_json::Value::Array(_) => Type::Array,
                _ => Type::Object,
            };
            object = object.property(
                name,
                ObjectBuilder::new()
                    .schema_type(kind)
                    .default(Some(value.clone())),
            );
        }
        object.into()
    }
}

impl ToSchema for LearnerConfigDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("LearnerConfig")
    }
}

/// Automatic snapshots: after every `every_versions` versions and/or every `every_minutes`
/// minutes (counted from the newest snapshot), keeping the newest `keep` automatic ones. Null
/// turns a part off; PUT replaces the whole policy.
#[derive(ToSchema)]
#[schema(as = SnapshotPolicy)]
#[allow(dead_code)]
pub struct SnapshotPolicyDoc {
    every_versions: Option<i32>,
    every_minutes: Option<i32>,
    keep: Option<i32>,
}

/// A model as stored.
#[derive(ToSchema)]
#[schema(as = Model)]
#[allow(dead_code)]
pub struct ModelDoc {
    #[schema(value_type = String, format = Uuid)]
    model_id: uuid::Uuid,
    name: String,
    kind: ModelKindDoc,
    settings: LearnerConfigDoc,
    /// The current version: 0 before any learning, +1 per applied batch or rollback.
    version: i64,
    examples_seen: i64,
    /// active or quarantined.
    status: String,
    status_reason: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    created_at: String,
    #[schema(value_type = String, format = DateTime)]
    updated_at: String,
}

/// `GET /v1/models`.
#[derive(ToSchema)]
#[schema(as = ModelList)]
#[allow(dead_code)]
pub struct ModelListDoc {
    models: Vec<ModelDoc>,
}

/// `GET /v1/models/{m}`: the model, its snapshot policy and its settings history.
#[derive(ToSchema)]
#[schema(as = ModelDetail)]
#[allow(dead_code)]
pub struct ModelDetailDoc {
    #[schema(value_type = String, format = Uuid)]
    model_id: uuid::Uuid,
    name: String,
    kind: ModelKindDoc,
    settings: LearnerConfigDoc,
    version: i64,
    examples_seen: i64,
    status: String,
    status_reason: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    created_at: String,
    #[schema(value_type = String, format = DateTime)]
    updated_at: String,
    snapshot_policy: SnapshotPolicyDoc,
    /// Every change of the settings or snapshot policy, oldest first.
    settings_changes: Vec<SettingsChangeDoc>,
}

/// One recorded change of a model's settings (`model_settings_changes`).
#[derive(ToSchema)]
#[schema(as = SettingsChange)]
#[allow(dead_code)]
pub struct SettingsChangeDoc {
    change_id: i64,
    /// The first version learned with the new settings (the model's version at the change + 1).
    model_version: i64,
    /// e.g. `learning_rate`, `drift.detector`, `snapshot_policy.keep`.
    changed_fields: Vec<String>,
    old_settings: LearnerConfigDoc,
    new_settings: LearnerConfigDoc,
    old_snapshot_policy: SnapshotPolicyDoc,
    new_snapshot_policy: SnapshotPolicyDoc,
    /// `token:NAME`, `cli` or `no-auth`.
    changed_by: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    changed_at: String,
}

/// `PATCH /v1/models/{m}`: the fields to change. `settings` may hold `learning_rate`,
/// `lr_schedule`, `power_t`, `l1`, `l2`, `clip_gradient`, `drift` and `guard` (these two field by
/// field); any other setting is refused with its name. `snapshot_policy` fields replace the
/// stored ones (`null` turns that part off).
#[derive(ToSchema)]
#[schema(as = UpdateModel)]
#[allow(dead_code)]
pub struct UpdateModelDoc {
    #[schema(value_type = Option<Object>)]
    settings: Option<serde_json::Value>,
    snapshot_policy: Option<SnapshotPolicyDoc>,
}

/// The answer of `PATCH /v1/models/{m}`.
#[derive(ToSchema)]
#[schema(as = Updated)]
#[allow(dead_code)]
pub struct UpdatedDoc {
    model: ModelDoc,
    snapshot_policy: SnapshotPolicyDoc,
    /// The change recorded; null when every value given was already in force.
    change: Option<SettingsChangeDoc>,
}

/// `POST /v1/models`.
#[derive(ToSchema)]
#[schema(as = CreateModel)]
#[allow(dead_code)]
pub struct CreateModelDoc {
    /// 1..=200 characters, unique, not a UUID.
    name: String,
    kind: ModelKindDoc,
    settings: Option<LearnerConfigDoc>,
}

/// One feedback event.
#[derive(ToSchema)]
#[schema(as = FeedbackEvent)]
#[allow(dead_code)]
pub struct FeedbackEventDoc {
    /// The event's own id (its idempotency key): an event whose id is already stored for the
    /// model is not stored again, so a request that timed out can be retried as is. Default: a
    /// new random id. Ids must not repeat within one request.
    #[schema(value_type = Option<String>, format = Uuid)]
    id: Option<uuid::Uuid>,
    entity_id: String,
    /// explicit (priority 1.0), implicit (0.5), anything else (0.3).
    feedback_type: String,
    /// The label: the target for linear, a value in [0, 1] for logistic.
    feedback_value: f64,
    /// The example's weight, in (0, 1]; default 1.
    confidence: Option<f64>,
    /// Feature name -> number. Without features, the worker trains on the features logged with
    /// the prediction named by `prediction_id`, or else on those of the latest prediction for
    /// the same entity (delayed labels).
    features: Option<HashMap<String, f64>>,
    /// The `prediction_id` a predict answer returned: without features, the event trains on
    /// exactly the features logged with that prediction (made with this `entity_id`). A label
    /// that arrives before its prediction is logged waits for it up to the worker's label wait
    /// (default 10 minutes), then is dead-lettered with the reason.
    #[schema(value_type = Option<String>, format = Uuid)]
    prediction_id: Option<uuid::Uuid>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
    /// RFC 3339; default now.
    #[schema(value_type = Option<String>, format = DateTime)]
    timestamp: Option<String>,
}

/// 1..=10,000 events, stored together or not at all.
#[derive(ToSchema)]
#[schema(as = FeedbackBatch)]
#[allow(dead_code)]
pub struct FeedbackBatchDoc {
    events: Vec<FeedbackEventDoc>,
}

/// One event, or a batch.
#[derive(ToSchema)]
#[schema(as = FeedbackRequest)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum FeedbackRequestDoc {
    One(FeedbackEventDoc),
    Batch(FeedbackBatchDoc),
}

/// The request's events, all stored now: `new` by this request, `already_stored` by an earlier
/// try (same ids).
#[derive(ToSchema)]
#[schema(as = Accepted)]
#[allow(dead_code)]
pub struct AcceptedDoc {
    /// Events in the request (`new` + `already_stored`).
    accepted: usize,
    /// Their ids, in request order.
    #[schema(value_type = Vec<String>)]
    ids: Vec<uuid::Uuid>,
    /// Events stored (and queued for learning) by this request.
    new: usize,
    /// Events whose id was already stored for the model: not stored again.
    already_stored: usize,
}

/// `GET /healthz`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Health {
    /// "ok".
    status: String,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(openapi_json))
        .routes(routes!(metrics))
}

/// The whole API's document (built once).
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = super::api().into_openapi();
        add_common_responses(&mut doc);
        doc
    })
}

/// Answers every operation may give, whatever its own annotation lists: 400 for a URL holding a
/// NUL (`%00`) or a value the database refuses, and (except for this document) 503 when the
/// database is busy, unavailable or too slow, or the request timed out, with `Retry-After`.
fn add_common_responses(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = || {
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build()
    };
    let bad = ResponseBuilder::new()
        .description(
            "A bad request: the URL holds a NUL (%00), or a value the database refuses \
             (`invalid_value`); the message names the part",
        )
        .content("application/json", error())
        .build();
    let unavailable = ResponseBuilder::new()
        .description(
            "Try again later (see Retry-After): `database_busy` (no free connection), \
             `statement_timeout`, `database_conflict` (a serialization failure or deadlock that \
             persisted through retries), `database_unavailable`, or `timeout` (the request took \
             too long)",
        )
        .content("application/json", error())
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer))
                .description(Some("Seconds to wait before retrying"))
                .build(),
        )
        .build();
    for (path, item) in doc.paths.paths.iter_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
        {
            let responses = &mut operation.responses.responses;
            responses
                .entry("400".into())
                .or_insert_with(|| bad.clone().into());
            if path != "/openapi.json" {
                responses
                    .entry("503".into())
                    .or_insert_with(|| unavailable.clone().into());
            }
        }
    }
}

fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        document()
            .to_pretty_json()
            .expect("OpenAPI document serializes")
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json", body = Object))
)]
async fn openapi_json() -> Response {
    ([(CONTENT_TYPE, "application/json")], document_json()).into_response()
}

/// Prometheus metrics (text format): requests and latency per route, predictions, feedback,
/// queue depth and age, model versions, worker batches, dead letters, prequential loss, and the
/// prediction log.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String))
)]
async fn metrics(State(state): State<AppState>) -> Response {
    crate::metrics::response(&state.pool).await
}
