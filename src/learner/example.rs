//! Validated training examples.

use super::{ModelKind, INTERCEPT};

/// Why an example (or a label) was rejected. The messages name the feature and say what to fix.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ExampleError {
    #[error("feature #{index} has an empty name; every feature needs a non-empty name")]
    EmptyFeatureName { index: usize },
    #[error("feature name {name:?} is reserved for the model's intercept; rename the feature")]
    ReservedFeatureName { name: String },
    #[error("feature {name:?} is given more than once; give each feature once")]
    DuplicateFeature { name: String },
    #[error("feature {name:?} has value {value}; feature values must be finite numbers")]
    NonFiniteFeature { name: String, value: f64 },
    #[error("label is {value}; the label must be a finite number")]
    NonFiniteLabel { value: f64 },
    #[error("label is {value}; a logistic model needs a label between 0 and 1")]
    LabelOutOfRange { kind: ModelKind, value: f64 },
    #[error("weight (confidence) is {value}; it must be a finite number > 0")]
    InvalidWeight { value: f64 },
}

/// One training example. Features are sorted by name on construction (duplicates rejected) so the
/// arithmetic never depends on the order a caller or a JSON map produced them in.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    features: Vec<(String, f64)>,
    /// The target: any finite number for a linear model, a value in [0, 1] for a logistic one
    /// (see [`validate_label`]).
    pub label: f64,
    /// Sample weight (the feedback's confidence): the gradient is multiplied by it. Finite, > 0.
    pub weight: f64,
}

impl Example {
    /// Builds an example, checking that feature names are non-empty, distinct and not
    /// [`INTERCEPT`], that feature values and the label are finite, and that the weight is finite
    /// and > 0. A feature with value 0 is kept: it is present (it touches its parameter and its
    /// standardization statistics), unlike an absent feature.
    ///
    /// The label is not checked against a model kind here; use [`validate_label`].
    pub fn new(
        mut features: Vec<(String, f64)>,
        label: f64,
        weight: f64,
    ) -> Result<Example, ExampleError> {
        for (index, (name, value)) in features.iter().enumerate() {
            if name.is_empty() {
                return Err(ExampleError::EmptyFeatureName { index });
            }
            if name == INTERCEPT {
                return Err(ExampleError::ReservedFeatureName { name: name.clone() });
            }
            if !value.is_finite() {
                return Err(ExampleError::NonFiniteFeature {
                    name: name.clone(),
                    value: *value,
                });
            }
        }
        if !label.is_finite() {
            return Err(ExampleError::NonFiniteLabel { value: label });
        }
        if !(weight.is_finite() && weight > 0.0) {
            return Err(ExampleError::InvalidWeight { value: weight });
        }
        features.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = features.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(ExampleError::DuplicateFeature {
                name: w[0].0.clone(),
            });
        }
        Ok(Example {
            features,
            label,
            weight,
        })
    }

    /// The features, sorted by name.
    pub fn features(&self) -> &[(String, f64)] {
        &self.features
    }

    /// Consumes the example, returning its features (sorted by name).
    pub fn into_features(self) -> Vec<(String, f64)> {
        self.features
    }
}

/// Checks a label for a model kind: finite for linear, finite and in [0, 1] for logistic.
pub fn validate_label(kind: ModelKind, label: f64) -> Result<(), ExampleError> {
    if !label.is_finite() {
        return Err(ExampleError::NonFiniteLabel { value: label });
    }
    if kind == ModelKind::Logistic && !(0.0..=1.0).contains(&label) {
        return Err(ExampleError::LabelOutOfRange { kind, value: label });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    }

    #[test]
    fn sorts_and_validates() {
        let e = Example::new(f(&[("b", 2.0), ("a", 1.0), ("c", 0.0)]), 1.0, 0.5).unwrap();
        assert_eq!(
            e.features(),
            f(&[("a", 1.0), ("b", 2.0), ("c", 0.0)]).as_slice()
        );
        assert_eq!(
            Example::new(f(&[("a", 1.0), ("b", 1.0), ("a", 2.0)]), 1.0, 1.0),
            Err(ExampleError::DuplicateFeature { name: "a".into() })
        );
        let err = Example::new(f(&[("amount", f64::NAN)]), 1.0, 1.0).unwrap_err();
        assert!(err.to_string().contains("\"amount\""), "{err}");
        assert!(matches!(
            Example::new(f(&[("", 1.0)]), 1.0, 1.0),
            Err(ExampleError::EmptyFeatureName { index: 0 })
        ));
        assert!(matches!(
            Example::new(f(&[(INTERCEPT, 1.0)]), 1.0, 1.0),
            Err(ExampleError::ReservedFeatureName { .. })
        ));
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                Example::new(vec![], 1.0, w),
                Err(ExampleError::InvalidWeight { .. })
            ));
        }
        assert!(Example::new(vec![], f64::NEG_INFINITY, 1.0).is_err());
    }

    #[test]
    fn labels() {
        assert!(validate_label(ModelKind::Linear, -1e9).is_ok());
        assert!(validate_label(ModelKind::Logistic, 0.0).is_ok());
        assert!(validate_label(ModelKind::Logistic, 0.3).is_ok());
        assert!(validate_label(ModelKind::Logistic, 1.0).is_ok());
        let err = validate_label(ModelKind::Logistic, 2.0).unwrap_err();
        assert!(err.to_string().contains("between 0 and 1"), "{err}");
        assert!(validate_label(ModelKind::Linear, f64::NAN).is_err());
    }
}
