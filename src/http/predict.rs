//! POST /v1/models/{m}/predict: one instance or a batch, answered from the service's in-memory
//! copy of the model (one version per request, named in the answer). Every prediction gets an
//! id (`prediction_id`); with an `entity_id` the prediction is logged with it for delayed labels,
//! off the request path. `version` or `snapshot` pins the version ([`crate::serving::cache`]).

use std::collections::HashMap;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::Json;
use bytes::Bytes;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::openapi::ErrorBody;
use super::{parse_json, ApiError, AppState};
use crate::serving::{LogRecord, ServedModel, Serving};
use crate::validation::{self, Invalid, RawFeatures};

/// Instances per batch request.
pub const MAX_INSTANCES: usize = 10_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(predict))
}

/// Features of one instance: name -> number, sorted by name once checked. The rules are those of
/// [`crate::validation`] (as for feedback): names non-empty, at most 200 characters, without NUL,
/// not `__intercept__`, given once; finite numbers; at most 1,000 features.
#[derive(Debug, Clone, Default)]
pub struct Features(pub Vec<(String, f64)>);

impl Features {
    /// Applies the rules to features as read; `path` names the field in errors.
    pub fn check(raw: RawFeatures, path: &str) -> Result<Features, ApiError> {
        validation::check_features(raw, path)
            .map(Features)
            .map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

/// The request body as parsed: one instance (`features`) or a batch (`instances`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictBody {
    features: Option<RawFeatures>,
    entity_id: Option<String>,
    #[serde(default)]
    explain: bool,
    instances: Option<Vec<InstanceBody>>,
    version: Option<i64>,
    snapshot: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceBody {
    features: RawFeatures,
    entity_id: Option<String>,
}

/// One instance to predict.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PredictOne {
    /// Feature name -> number. Features the model has never seen count as zero.
    #[schema(value_type = HashMap<String, f64>)]
    features: Features,
    /// When given, the features, prediction and version are logged so that a later feedback
    /// event for this entity can omit the features (delayed labels). 1..=256 characters.
    entity_id: Option<String>,
    /// Also return the number of unknown features and each feature's contribution.
    explain: Option<bool>,
    /// Predict with this committed version instead of the newest (from memory when recent,
    /// otherwise reconstructed from the database; 404 when it does not exist yet).
    version: Option<i64>,
    /// Predict with the version of this snapshot (its UUID or label; 404 when unknown).
    snapshot: Option<String>,
}

/// One instance of a batch.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Instance {
    #[schema(value_type = HashMap<String, f64>)]
    features: Features,
    entity_id: Option<String>,
}

/// A batch of 1..=10,000 instances, all answered from one model version.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PredictBatch {
    instances: Vec<Instance>,
    explain: Option<bool>,
    /// As for one instance: the whole batch at this version.
    version: Option<i64>,
    /// As for one instance: the whole batch at this snapshot's version.
    snapshot: Option<String>,
}

/// The request: one instance or a batch.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum PredictRequest {
    One(PredictOne),
    Batch(PredictBatch),
}

/// What `explain` adds to one prediction.
#[derive(Debug, Serialize, ToSchema)]
pub struct Explanation {
    /// Features of the request the model has no weight for (they counted as zero).
    pub unknown_features: usize,
    /// Each feature's contribution `w * x'` to the margin, plus the intercept
    /// (`__intercept__`); they sum to the margin.
    pub contributions: HashMap<String, f64>,
}

/// The answer to one instance.
#[derive(Debug, Serialize, ToSchema)]
pub struct Prediction {
    /// The margin for a linear model, the probability for a logistic one.
    pub prediction: f64,
    /// The model version the prediction was made with.
    pub version: i64,
    /// The prediction's id: a feedback event may name it (`prediction_id`) to train on exactly
    /// the features logged with it (logged when the request gave an `entity_id`).
    pub prediction_id: Uuid,
    /// With `explain`: features of the request the model has no weight for (they counted as
    /// zero).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_features: Option<usize>,
    /// With `explain`: each feature's contribution `w * x'` to the margin, plus the intercept
    /// (`__intercept__`); they sum to the margin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contributions: Option<HashMap<String, f64>>,
}

/// The answer to a batch: predictions in request order, all from `version`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchPrediction {
    pub predictions: Vec<f64>,
    pub version: i64,
    /// Each prediction's id, in request order (see [`Prediction::prediction_id`]).
    pub prediction_ids: Vec<Uuid>,
    /// With `explain`: one entry per instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanations: Option<Vec<Explanation>>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PredictResponse {
    One(Prediction),
    Batch(BatchPrediction),
}

fn check_entity(entity_id: &Option<String>, field: &str) -> Result<(), ApiError> {
    match entity_id {
        Some(e) => validation::check_entity_id(e)
            .map_err(|problem| ApiError::bad_request(Invalid::new(field, problem).to_string())),
        None => Ok(()),
    }
}

fn explain(served: &ServedModel, features: &[(String, f64)]) -> Explanation {
    let learner = &served.learner;
    Explanation {
        unknown_features: features
            .iter()
            .filter(|(name, _)| !learner.params.contains_key(name))
            .count(),
        contributions: learner.contributions(features).into_iter().collect(),
    }
}

/// The model to predict with: the newest version, or the one `version` or `snapshot` pins.
async fn served(
    serving: &Serving,
    model: &str,
    version: Option<i64>,
    snapshot: Option<&str>,
) -> Result<std::sync::Arc<ServedModel>, ApiError> {
    match (version, snapshot) {
        (None, None) => Ok(serving.cache.get(model).await?),
        (Some(v), None) => Ok(serving.cache.get_version(model, v).await?),
        (None, Some(s)) => Ok(serving.cache.get_snapshot(model, s).await?),
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "give either version or snapshot, not both",
        )),
    }
}

/// Predicts with the model's in-memory copy at one version.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/predict",
    tag = "serving",
    params(("model" = String, Path, description = "The model's UUID or name")),
    request_body(content = PredictRequest, description = "One instance, or a batch of up to 10,000"),
    responses(
        (status = 200, description = "The prediction(s) and the version they came from", body = PredictResponse),
        (status = 400, description = "Invalid request body", body = ErrorBody),
        (status = 404, description = "No such model, or no such version or snapshot", body = ErrorBody),
        (status = 410, description = "The pinned version's history was pruned", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 503, description = "The request took too long", body = ErrorBody),
    )
)]
async fn predict(
    State(state): State<AppState>,
    Path(model): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PredictResponse>, ApiError> {
    let body: PredictBody = parse_json(body)?;
    let serving = &state.serving;
    let pin = (body.version, body.snapshot.as_deref());
    match (body.features, body.instances) {
        (Some(features), None) => {
            let features = Features::check(features, "features")?;
            check_entity(&body.entity_id, "entity_id")?;
            let served = served(serving, &model, pin.0, pin.1).await?;
            let prediction = served.learner.predict(&features.0);
            let explanation = body.explain.then(|| explain(&served, &features.0));
            served.predictions.inc();
            let prediction_id = Uuid::new_v4();
            if let Some(entity_id) = body.entity_id {
                serving.log.offer(LogRecord {
                    model_id: served.model_id,
                    entity_id,
                    features: features.0,
                    prediction,
                    version: served.version,
                    prediction_id,
                    predicted_at: Utc::now(),
                });
            }
            let (unknown_features, contributions) = match explanation {
                Some(e) => (Some(e.unknown_features), Some(e.contributions)),
                None => (None, None),
            };
            Ok(Json(PredictResponse::One(Prediction {
                prediction,
                version: served.version,
                prediction_id,
                unknown_features,
                contributions,
            })))
        }
        (None, Some(instances)) => {
            if body.entity_id.is_some() {
                return Err(ApiError::bad_request(
                    "entity_id: give it per instance in a batch (instances[i].entity_id)",
                ));
            }
            if instances.is_empty() {
                return Err(ApiError::bad_request(
                    "instances: must hold at least one instance",
                ));
            }
            if instances.len() > MAX_INSTANCES {
                return Err(ApiError::bad_request(format!(
                    "instances: at most {MAX_INSTANCES} instances per request, got {}; split \
                     the batch",
                    instances.len()
                )));
            }
            let instances = instances
                .into_iter()
                .enumerate()
                .map(|(i, instance)| {
                    let features =
                        Features::check(instance.features, &format!("instances[{i}].features"))?;
                    check_entity(&instance.entity_id, &format!("instances[{i}].entity_id"))?;
                    Ok(Instance {
                        features,
                        entity_id: instance.entity_id,
                    })
                })
                .collect::<Result<Vec<Instance>, ApiError>>()?;
            let served = served(serving, &model, pin.0, pin.1).await?;
            let mut predictions = Vec::with_capacity(instances.len());
            let mut prediction_ids = Vec::with_capacity(instances.len());
            let predicted_at = Utc::now();
            // One random id for the batch, told apart per instance in its low (node) bits, which
            // leaves a valid v4 UUID: one call to the system's random source per request.
            let base = Uuid::new_v4().as_u128();
            let mut explanations = body.explain.then(|| Vec::with_capacity(instances.len()));
            for (i, instance) in instances.into_iter().enumerate() {
                let p = served.learner.predict(&instance.features.0);
                let prediction_id = Uuid::from_u128(base ^ i as u128);
                predictions.push(p);
                prediction_ids.push(prediction_id);
                if let Some(list) = explanations.as_mut() {
                    list.push(explain(&served, &instance.features.0));
                }
                if let Some(entity_id) = instance.entity_id {
                    serving.log.offer(LogRecord {
                        model_id: served.model_id,
                        entity_id,
                        features: instance.features.0,
                        prediction: p,
                        version: served.version,
                        prediction_id,
                        predicted_at,
                    });
                }
            }
            served.predictions.inc_by(predictions.len() as u64);
            Ok(Json(PredictResponse::Batch(BatchPrediction {
                predictions,
                version: served.version,
                prediction_ids,
                explanations,
            })))
        }
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "give either features (one instance) or instances (a batch), not both",
        )),
        (None, None) => Err(ApiError::bad_request(
            "features: required: give {\"features\": {...}} for one instance or \
             {\"instances\": [{\"features\": {...}}, ...]} for a batch",
        )),
    }
}
