//! Feedback ingest: validation of client events and their insert into `feedback_events`, one
//! statement per batch. The row trigger enqueues each event in `feedback_queue`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::learner::ModelKind;

pub const MAX_BATCH: usize = 10_000;
pub const MAX_ENTITY_ID_LEN: usize = 256;
pub const MAX_FEEDBACK_TYPE_LEN: usize = 64;
pub const MAX_FEATURES: usize = 1_000;
pub const MAX_FEATURE_NAME_LEN: usize = 200;

/// A validation failure: the field path (e.g. `events[3].features.amount`) and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidFeedback {
    pub field: String,
    pub message: String,
}

fn invalid(field: String, message: impl Into<String>) -> InvalidFeedback {
    InvalidFeedback {
        field,
        message: message.into(),
    }
}

/// One validated event, ready to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackEvent {
    pub entity_id: String,
    pub feedback_type: String,
    pub feedback_value: f64,
    pub confidence: f64,
    /// The stored metadata: the client's metadata object plus `features`.
    pub metadata: Value,
    pub timestamp: Option<DateTime<Utc>>,
}

/// Validates a request body: one event object, or `{"events": [...]}` with 1..=10,000 events.
/// Field paths in errors name the event's index in a batch.
pub fn parse_request(body: &Value, kind: ModelKind) -> Result<Vec<FeedbackEvent>, InvalidFeedback> {
    let Some(object) = body.as_object() else {
        return Err(invalid(
            "body".into(),
            "must be a JSON object: one event, or {\"events\": [...]}",
        ));
    };
    match object.get("events") {
        Some(Value::Array(events)) => {
            if let Some(extra) = object.keys().find(|k| *k != "events") {
                return Err(invalid(
                    extra.clone(),
                    "unexpected next to \"events\" in a batch",
                ));
            }
            if events.is_empty() {
                return Err(invalid("events".into(), "must hold at least one event"));
            }
            if events.len() > MAX_BATCH {
                return Err(invalid(
                    "events".into(),
                    format!(
                        "at most {MAX_BATCH} events per request, got {}",
                        events.len()
                    ),
                ));
            }
            events
                .iter()
                .enumerate()
                .map(|(i, e)| parse_event(e, kind, &format!("events[{i}].")))
                .collect()
        }
        Some(_) => Err(invalid("events".into(), "must be an array of events")),
        None => Ok(vec![parse_event(body, kind, "")?]),
    }
}

/// Validates one event object. `prefix` is prepended to field names in errors.
pub fn parse_event(
    value: &Value,
    kind: ModelKind,
    prefix: &str,
) -> Result<FeedbackEvent, InvalidFeedback> {
    let field = |name: &str| format!("{prefix}{name}");
    let Some(event) = value.as_object() else {
        let name = prefix.trim_end_matches('.');
        return Err(invalid(
            if name.is_empty() {
                "body".into()
            } else {
                name.to_string()
            },
            "must be a JSON object",
        ));
    };
    const KNOWN: [&str; 7] = [
        "entity_id",
        "feedback_type",
        "feedback_value",
        "confidence",
        "features",
        "metadata",
        "timestamp",
    ];
    if let Some(unknown) = event.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(invalid(
            field(unknown),
            format!("unknown field; expected one of {}", KNOWN.join(", ")),
        ));
    }
    let entity_id = bounded_string(event, "entity_id", MAX_ENTITY_ID_LEN, &field)?;
    let feedback_type = bounded_string(event, "feedback_type", MAX_FEEDBACK_TYPE_LEN, &field)?;

    let feedback_value = match event.get("feedback_value") {
        None | Some(Value::Null) => {
            return Err(invalid(field("feedback_value"), "is required (the label)"))
        }
        Some(v) => finite_number(v).ok_or_else(|| {
            invalid(
                field("feedback_value"),
                format!("must be a finite number, got {v}"),
            )
        })?,
    };
    if kind == ModelKind::Logistic && !(0.0..=1.0).contains(&feedback_value) {
        return Err(invalid(
            field("feedback_value"),
            format!("must be within [0, 1] for a logistic model, got {feedback_value}"),
        ));
    }

    let confidence = match event.get("confidence") {
        None | Some(Value::Null) => 1.0,
        Some(v) => match finite_number(v) {
            Some(c) if c > 0.0 && c <= 1.0 => c,
            _ => {
                return Err(invalid(
                    field("confidence"),
                    format!("must be a number in (0, 1], got {v}"),
                ))
            }
        },
    };

    let mut metadata = match event.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(invalid(field("metadata"), "must be a JSON object")),
    };
    let features = match (event.get("features"), metadata.get("features")) {
        (Some(f), None) => Some(f.clone()),
        (None, Some(f)) => Some(f.clone()),
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(invalid(
                field("features"),
                "given twice: both as \"features\" and as \"metadata.features\"",
            ))
        }
    };
    if let Some(features) = features {
        validate_features(&features, &field("features"))?;
        metadata.insert("features".into(), features);
    }

    let timestamp = match event.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            DateTime::parse_from_rfc3339(s)
                .map_err(|e| {
                    invalid(
                        field("timestamp"),
                        format!("must be an RFC 3339 time like 2026-01-31T12:00:00Z: {e}"),
                    )
                })?
                .with_timezone(&Utc),
        ),
        Some(_) => return Err(invalid(field("timestamp"), "must be an RFC 3339 string")),
    };

    Ok(FeedbackEvent {
        entity_id,
        feedback_type,
        feedback_value,
        confidence,
        metadata: Value::Object(metadata),
        timestamp,
    })
}

fn bounded_string(
    event: &Map<String, Value>,
    name: &str,
    max: usize,
    field: &dyn Fn(&str) -> String,
) -> Result<String, InvalidFeedback> {
    match event.get(name) {
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(invalid(field(name), "must not be empty"))
        }
        Some(Value::String(s)) if s.chars().count() > max => Err(invalid(
            field(name),
            format!(
                "must be at most {max} characters, got {}",
                s.chars().count()
            ),
        )),
        Some(Value::String(s)) if s.contains('\0') => {
            Err(invalid(field(name), "must not contain NUL characters"))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(invalid(field(name), "is required")),
        Some(other) => Err(invalid(
            field(name),
            format!("must be a string, got {other}"),
        )),
    }
}

fn finite_number(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

/// Features: an object of name -> finite number, at most MAX_FEATURES names of at most
/// MAX_FEATURE_NAME_LEN characters, none empty and none the reserved intercept name.
pub fn validate_features(features: &Value, path: &str) -> Result<(), InvalidFeedback> {
    let Some(map) = features.as_object() else {
        return Err(invalid(
            path.to_string(),
            "must be an object of feature name -> number",
        ));
    };
    if map.len() > MAX_FEATURES {
        return Err(invalid(
            path.to_string(),
            format!(
                "at most {MAX_FEATURES} features per event, got {}",
                map.len()
            ),
        ));
    }
    for (name, value) in map {
        if name.is_empty() {
            return Err(invalid(path.to_string(), "feature names must not be empty"));
        }
        if name.chars().count() > MAX_FEATURE_NAME_LEN {
            return Err(invalid(
                format!("{path}.{name}"),
                format!("feature names must be at most {MAX_FEATURE_NAME_LEN} characters"),
            ));
        }
        if name == crate::learner::INTERCEPT || name.contains('\0') {
            return Err(invalid(
                format!("{path}.{name}"),
                "is a reserved or invalid feature name",
            ));
        }
        if finite_number(value).is_none() {
            return Err(invalid(
                format!("{path}.{name}"),
                format!("must be a finite number, got {value}"),
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub accepted: usize,
    pub ids: Vec<Uuid>,
}

/// Inserts validated events with one statement (the trigger enqueues them in order) and returns
/// their ids in input order. Callers choose the transaction.
pub async fn insert(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    events: &[FeedbackEvent],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut entity = Vec::with_capacity(events.len());
    let mut kind = Vec::with_capacity(events.len());
    let mut value = Vec::with_capacity(events.len());
    let mut confidence = Vec::with_capacity(events.len());
    let mut metadata = Vec::with_capacity(events.len());
    let mut timestamp = Vec::with_capacity(events.len());
    for e in events {
        entity.push(e.entity_id.as_str());
        kind.push(e.feedback_type.as_str());
        value.push(e.feedback_value);
        confidence.push(e.confidence);
        metadata.push(e.metadata.to_string());
        timestamp.push(e.timestamp);
    }
    sqlx::query_scalar(
        "INSERT INTO feedback_events
             (model_id, entity_id, feedback_type, feedback_value, confidence, metadata, timestamp)
         SELECT $1, u.entity_id, u.feedback_type, u.feedback_value, u.confidence, u.metadata::jsonb,
                coalesce(u.ts, now())
         FROM unnest($2::text[], $3::text[], $4::float8[], $5::float8[], $6::text[],
                     $7::timestamptz[]) WITH ORDINALITY
              AS u(entity_id, feedback_type, feedback_value, confidence, metadata, ts, ord)
         ORDER BY u.ord
         RETURNING id",
    )
    .bind(model_id)
    .bind(&entity)
    .bind(&kind)
    .bind(&value)
    .bind(&confidence)
    .bind(&metadata)
    .bind(&timestamp)
    .fetch_all(db)
    .await
}
