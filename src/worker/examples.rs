//! Turning a claimed feedback row into a training example, or into the reason it cannot be one.
//!
//! A plain-SQL row gets the checks an HTTP event gets, in the same order and with the same
//! limits ([`crate::validation`]: `entity_id`, `feedback_type`, `feedback_value`, `confidence`,
//! then the features), so SQL and HTTP accept and refuse the same events. A row that fails is
//! dead-lettered with a reason that names the field and the limit.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::learner::{Example, ModelKind};
use crate::validation::{self, Invalid, Problem};

use super::queue::ClaimedRow;

/// Features from JSON text (`jsonb` as PostgreSQL prints it) under the rules of
/// [`crate::validation`]; `origin` names the field in the error.
pub fn features_from_json(text: &str, origin: &str) -> Result<Vec<(String, f64)>, String> {
    validation::features_from_json_text(text, origin).map_err(|e| e.to_string())
}

/// The example a row teaches, or why it cannot be learned (the dead-letter reason).
pub fn example_from_row(row: &ClaimedRow, kind: ModelKind) -> Result<Example, String> {
    fn at(field: &'static str) -> impl Fn(Problem) -> String {
        move |problem| Invalid::new(field, problem).to_string()
    }
    validation::check_entity_id(&row.entity_id).map_err(at("entity_id"))?;
    validation::check_feedback_type(&row.feedback_type).map_err(at("feedback_type"))?;
    validation::check_label(kind.into(), row.label).map_err(at("feedback_value"))?;
    let weight = validation::confidence_weight(row.confidence).map_err(at("confidence"))?;
    let features = match (&row.features, &row.logged_features) {
        (Some(f), _) => features_from_json(f, "metadata.features")?,
        (None, Some(logged)) => features_from_json(logged, "prediction_log.features")?,
        (None, None) if row.prediction_id.is_some() => {
            return Err(format!(
                "prediction_id: prediction {} was not logged for this model within the label wait \
                 deadline, and the event has no metadata.features",
                row.prediction_id.unwrap_or_default()
            ))
        }
        (None, None) => {
            return Err(format!(
                "no features: the event has no metadata.features and no prediction was logged \
                 for entity '{}'",
                row.entity_id
            ))
        }
    };
    if let (Some(id), Some(logged)) = (row.prediction_id, &row.logged_entity) {
        if row.features.is_none() && *logged != row.entity_id {
            return Err(format!(
                "prediction_id: prediction {id} was made for entity '{logged}', not for the \
                 event's entity '{}'",
                row.entity_id
            ));
        }
    }
    // Cannot fail after the checks above (the same rules); kept as the last word.
    Example::new(features, row.label, weight).map_err(|e| e.to_string())
}

/// What the worker does with a claimed row.
#[derive(Debug)]
pub enum Outcome {
    Learn(Example),
    /// The row names a prediction that is not logged (yet) and is younger than the label wait:
    /// set it aside until the prediction is logged ([`super::queue::wait_for_prediction`]).
    Wait,
    /// Dead-letter it with this reason.
    Dead(String),
}

/// [`example_from_row`], except that a label naming a prediction that is not logged yet waits
/// (until `label_wait` after it was queued) instead of being dead-lettered at once. A label
/// without a prediction id whose entity has no logged prediction is dead-lettered at once, as
/// before: nothing tells that a prediction is still to come.
pub fn outcome(
    row: &ClaimedRow,
    kind: ModelKind,
    label_wait: Duration,
    now: DateTime<Utc>,
) -> Outcome {
    let waiting_for_log =
        row.prediction_id.is_some() && row.features.is_none() && row.logged_features.is_none();
    if waiting_for_log {
        let waited = (now - row.created_at).to_std().unwrap_or_default();
        if waited < label_wait {
            return Outcome::Wait;
        }
    }
    match example_from_row(row, kind) {
        Ok(example) => Outcome::Learn(example),
        Err(reason) => Outcome::Dead(reason),
    }
}
