//! Turning a claimed feedback row into a training example, or into the reason it cannot be one.
//!
//! A plain-SQL row gets the checks an HTTP event gets, in the same order and with the same
//! limits ([`crate::validation`]: `entity_id`, `feedback_type`, `feedback_value`, `confidence`,
//! then the features), so SQL and HTTP accept and refuse the same events. A row that fails is
//! dead-lettered with a reason that names the field and the limit.

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
        (None, None) => {
            return Err(format!(
                "no features: the event has no metadata.features and no prediction was logged \
                 for entity '{}'",
                row.entity_id
            ))
        }
    };
    // Cannot fail after the checks above (the same rules); kept as the last word.
    Example::new(features, row.label, weight).map_err(|e| e.to_string())
}
