//! Feedback ingest: validation of client events and their insert into `feedback_events`, one
//! statement per batch. The row trigger enqueues each event in `feedback_queue`.
//!
//! Idempotence: an event may carry its own `id` (a UUID). The insert skips events whose
//! `(model_id, id)` is already stored (`ON CONFLICT DO NOTHING`; the enqueue trigger is an AFTER
//! INSERT row trigger, so it fires only for rows actually inserted), so a client that retries a
//! request after a timeout stores each event once; the answer counts new and already stored
//! events. The first event stored under an id wins: a later one with the same id is not stored,
//! whatever it holds. One request may not repeat an id (refused, naming both indexes). The rules and
//! limits are those of [`crate::validation`] (README.md, "Limits"), which the worker applies to
//! plain-SQL rows too.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::learner::ModelKind;
use crate::validation::{self, Invalid, Problem};
pub use crate::validation::{
    MAX_ENTITY_ID_LEN, MAX_FEATURES, MAX_FEATURE_NAME_LEN, MAX_FEEDBACK_TYPE_LEN,
};

/// Events per request.
pub const MAX_BATCH: usize = 10_000;

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

impl From<Invalid> for InvalidFeedback {
    fn from(e: Invalid) -> Self {
        InvalidFeedback {
            field: e.field,
            message: e.problem.to_string(),
        }
    }
}

/// One validated event, ready to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackEvent {
    /// The client's id for the event (its idempotency key); None: the insert gives it one.
    pub id: Option<Uuid>,
    pub entity_id: String,
    pub feedback_type: String,
    pub feedback_value: f64,
    pub confidence: f64,
    /// The stored metadata: the client's metadata object plus `features`.
    pub metadata: Value,
    pub timestamp: Option<DateTime<Utc>>,
    /// The prediction the label is for (its id from the predict answer): without features, the
    /// worker trains on the features logged with it.
    pub prediction_id: Option<Uuid>,
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
            let events = events
                .iter()
                .enumerate()
                .map(|(i, e)| parse_event(e, kind, &format!("events[{i}].")))
                .collect::<Result<Vec<_>, _>>()?;
            refuse_repeated_ids(&events)?;
            Ok(events)
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
    const KNOWN: [&str; 9] = [
        "id",
        "prediction_id",
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
    let id = match event.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Uuid::parse_str(s).map_err(|_| {
            invalid(
                field("id"),
                format!(
                    "must be a UUID like 0b5f8a52-7c1e-4d3a-9f6e-2a1b3c4d5e6f (the event's own \
                     id, so that a retry stores it once), got {}",
                    Value::String(s.clone())
                ),
            )
        })?),
        Some(other) => {
            return Err(Invalid::new(
                field("id"),
                Problem::WrongType {
                    expected: "a UUID string",
                    got: other.to_string(),
                },
            )
            .into())
        }
    };
    let prediction_id = match event.get("prediction_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Uuid::parse_str(s).map_err(|_| {
            invalid(
                field("prediction_id"),
                format!(
                    "must be the UUID a prediction returned (prediction_id), got {}",
                    Value::String(s.clone())
                ),
            )
        })?),
        Some(other) => {
            return Err(Invalid::new(
                field("prediction_id"),
                Problem::WrongType {
                    expected: "a UUID string",
                    got: other.to_string(),
                },
            )
            .into())
        }
    };
    let entity_id = checked_string(event, "entity_id", validation::check_entity_id, &field)?;
    let feedback_type = checked_string(
        event,
        "feedback_type",
        validation::check_feedback_type,
        &field,
    )?;

    let feedback_value = match event.get("feedback_value") {
        None | Some(Value::Null) => {
            return Err(invalid(field("feedback_value"), "is required (the label)"))
        }
        Some(v) => v.as_f64().ok_or_else(|| {
            Invalid::new(
                field("feedback_value"),
                Problem::WrongType {
                    expected: "a finite number",
                    got: v.to_string(),
                },
            )
        })?,
    };
    validation::check_label(kind.into(), feedback_value)
        .map_err(|p| Invalid::new(field("feedback_value"), p))?;

    let confidence = match event.get("confidence") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_f64().ok_or_else(|| {
            Invalid::new(
                field("confidence"),
                Problem::Confidence { got: v.to_string() },
            )
        })?),
    };
    let confidence = validation::confidence_weight(confidence)
        .map_err(|p| Invalid::new(field("confidence"), p))?;

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
    // The rest of the metadata is stored as given: it must be storable as jsonb (no NUL).
    for (key, value) in metadata.iter().filter(|(k, _)| *k != "features") {
        let path = validation::feature_field(&field("metadata"), key);
        if key.contains('\0') {
            return Err(Invalid::new(path, Problem::Nul).into());
        }
        validation::check_storable_json(value, &path)?;
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
        id,
        entity_id,
        feedback_type,
        feedback_value,
        confidence,
        metadata: Value::Object(metadata),
        timestamp,
        prediction_id,
    })
}

/// One request may not give two events the same id: the second would silently not be stored.
fn refuse_repeated_ids(events: &[FeedbackEvent]) -> Result<(), InvalidFeedback> {
    let mut seen = std::collections::HashMap::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        if let Some(id) = event.id {
            if let Some(first) = seen.insert(id, i) {
                return Err(invalid(
                    format!("events[{i}].id"),
                    format!(
                        "repeats events[{first}].id ({id}): an id names one event; give each \
                         event its own id"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn checked_string(
    event: &Map<String, Value>,
    name: &str,
    check: fn(&str) -> Result<(), Problem>,
    field: &dyn Fn(&str) -> String,
) -> Result<String, InvalidFeedback> {
    match event.get(name) {
        Some(Value::String(s)) => match check(s) {
            Ok(()) => Ok(s.clone()),
            Err(problem) => Err(Invalid::new(field(name), problem).into()),
        },
        None | Some(Value::Null) => Err(Invalid::new(field(name), Problem::Missing).into()),
        Some(other) => Err(Invalid::new(
            field(name),
            Problem::WrongType {
                expected: "a string",
                got: other.to_string(),
            },
        )
        .into()),
    }
}

/// Features: an object of name -> finite number under the rules of [`crate::validation`]
/// ([`validation::check_features`]); `path` names the field in errors.
pub fn validate_features(features: &Value, path: &str) -> Result<(), InvalidFeedback> {
    validation::features_from_json(features, path)?;
    Ok(())
}

/// The answer to a feedback request.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    /// Events of the request, all stored now (`new` + `already_stored`).
    pub accepted: usize,
    /// Their ids, in request order.
    pub ids: Vec<Uuid>,
    /// Events stored by this request (queued for the worker).
    pub new: usize,
    /// Events whose id was already stored for the model (an earlier try of the same request):
    /// not stored again.
    pub already_stored: usize,
}

/// What [`insert`] stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Every event's id, in input order (the client's, or a new random one).
    pub ids: Vec<Uuid>,
    /// Events inserted by this statement; the others' ids were already stored for the model.
    pub new: usize,
}

impl From<Stored> for Accepted {
    fn from(stored: Stored) -> Accepted {
        Accepted {
            accepted: stored.ids.len(),
            already_stored: stored.ids.len() - stored.new,
            new: stored.new,
            ids: stored.ids,
        }
    }
}

/// Inserts validated events with one statement (the trigger enqueues them in order), skipping
/// those whose id is already stored for the model. Callers choose the transaction. Ids must not
/// repeat within `events` (a repeat is skipped like a stored one).
pub async fn insert(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    events: &[FeedbackEvent],
) -> Result<Stored, sqlx::Error> {
    let ids: Vec<Uuid> = events
        .iter()
        .map(|e| e.id.unwrap_or_else(Uuid::new_v4))
        .collect();
    let mut entity = Vec::with_capacity(events.len());
    let mut kind = Vec::with_capacity(events.len());
    let mut value = Vec::with_capacity(events.len());
    let mut confidence = Vec::with_capacity(events.len());
    let mut metadata = Vec::with_capacity(events.len());
    let mut timestamp = Vec::with_capacity(events.len());
    let mut prediction = Vec::with_capacity(events.len());
    for e in events {
        entity.push(e.entity_id.as_str());
        kind.push(e.feedback_type.as_str());
        value.push(e.feedback_value);
        confidence.push(e.confidence);
        metadata.push(e.metadata.to_string());
        timestamp.push(e.timestamp);
        prediction.push(e.prediction_id);
    }
    // The statement wakes the workers itself (`wake`, delivered at commit): on Citus the
    // enqueue trigger runs on a worker node, whose NOTIFY would never reach the coordinator. On one
    // server the trigger's identical notification in the same transaction is folded into this one.
    let inserted = sqlx::query(
        "WITH wake AS MATERIALIZED (SELECT pg_notify('olps_feedback', ''))
         INSERT INTO feedback_events
             (model_id, id, entity_id, feedback_type, feedback_value, confidence, metadata,
              timestamp, prediction_id)
         SELECT $1, u.id, u.entity_id, u.feedback_type, u.feedback_value, u.confidence,
                u.metadata::jsonb, coalesce(u.ts, now()), u.prediction_id
         FROM unnest($8::uuid[], $2::text[], $3::text[], $4::float8[], $5::float8[], $6::text[],
                     $7::timestamptz[], $9::uuid[]) WITH ORDINALITY
              AS u(id, entity_id, feedback_type, feedback_value, confidence, metadata, ts,
                   prediction_id, ord),
              wake
         ORDER BY u.ord
         ON CONFLICT (model_id, id) DO NOTHING",
    )
    .bind(model_id)
    .bind(&entity)
    .bind(&kind)
    .bind(&value)
    .bind(&confidence)
    .bind(&metadata)
    .bind(&timestamp)
    .bind(&ids)
    .bind(&prediction)
    .execute(db)
    .await?;
    Ok(Stored {
        ids,
        new: inserted.rows_affected() as usize,
    })
}
