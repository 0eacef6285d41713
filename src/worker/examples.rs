//! Turning a claimed feedback row into a training example, or into the reason it cannot be one.

use serde_json::Value;

use crate::learner::{validate_label, Example, ModelKind};

use super::queue::ClaimedRow;

/// Features from a JSON object of name -> number.
pub fn features_from_json(value: &Value, origin: &str) -> Result<Vec<(String, f64)>, String> {
    let Some(map) = value.as_object() else {
        return Err(format!(
            "{origin} is not an object of feature name -> number (got {value})"
        ));
    };
    map.iter()
        .map(|(name, v)| match v.as_f64() {
            Some(x) => Ok((name.clone(), x)),
            None => Err(format!(
                "{origin}: feature '{name}' is not a number (got {v})"
            )),
        })
        .collect()
}

/// The example a row teaches, or why it cannot be learned (the dead-letter reason).
pub fn example_from_row(row: &ClaimedRow, kind: ModelKind) -> Result<Example, String> {
    if !row.label.is_finite() {
        return Err(format!(
            "feedback_value is {}, not a finite number",
            row.label
        ));
    }
    validate_label(kind, row.label).map_err(|e| format!("feedback_value: {e}"))?;
    let weight = match row.confidence {
        None => 1.0,
        Some(c) if c.is_finite() && c > 0.0 && c <= 1.0 => c,
        Some(c) => return Err(format!("confidence must be in (0, 1], got {c}")),
    };
    let features = match (&row.features, &row.logged_features) {
        (Some(f), _) => features_from_json(f, "metadata.features")?,
        (None, Some(logged)) => features_from_json(logged, "logged prediction features")?,
        (None, None) => {
            return Err(format!(
                "no features: the event has no metadata.features and no prediction was logged \
                 for entity '{}'",
                row.entity_id
            ))
        }
    };
    Example::new(features, row.label, weight).map_err(|e| e.to_string())
}
