//! Validated training examples. The rules (and their limits) are those of
//! [`crate::validation`], shared with every path that takes features and labels in; this module
//! only puts their failures in the learner's own error type.

use super::{ModelKind, INTERCEPT};
use crate::validation::{self, display_name, LabelRule, Problem};

// The learner's intercept is the name the validation rules reserve.
const _: () = assert!(same_str(INTERCEPT, validation::RESERVED_FEATURE_NAME));

const fn same_str(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl From<ModelKind> for LabelRule {
    fn from(kind: ModelKind) -> LabelRule {
        match kind {
            ModelKind::Linear => LabelRule::Finite,
            ModelKind::Logistic => LabelRule::Probability,
        }
    }
}

/// Why an example (or a label) was rejected. The messages name the feature and say what to fix.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ExampleError {
    #[error("feature #{index} has an empty name; every feature needs a non-empty name")]
    EmptyFeatureName { index: usize },
    #[error("feature name {name:?} is reserved for the model's intercept; rename the feature")]
    ReservedFeatureName { name: String },
    #[error("feature {:?}: {problem}", display_name(.name))]
    InvalidFeatureName { name: String, problem: Problem },
    #[error("{count} features; at most {max} features per example", max = validation::MAX_FEATURES)]
    TooManyFeatures { count: usize },
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
    /// Builds an example, applying the rules of [`crate::validation`]: at most
    /// [`validation::MAX_FEATURES`] features; names non-empty, at most
    /// [`validation::MAX_FEATURE_NAME_LEN`] characters, without NUL, distinct and not
    /// [`INTERCEPT`]; feature values and the label finite; the weight finite and > 0
    /// ([`validation::check_weight`]: wider than a confidence's (0, 1]). A feature with value 0
    /// is kept: it is present (it touches its parameter and its standardization statistics),
    /// unlike an absent feature.
    ///
    /// The label is not checked against a model kind here; use [`validate_label`].
    pub fn new(
        mut features: Vec<(String, f64)>,
        label: f64,
        weight: f64,
    ) -> Result<Example, ExampleError> {
        validation::check_feature_count(features.len()).map_err(|_| {
            ExampleError::TooManyFeatures {
                count: features.len(),
            }
        })?;
        for (index, (name, value)) in features.iter().enumerate() {
            if let Err(problem) = validation::check_feature_name(name) {
                return Err(match problem {
                    Problem::EmptyFeatureName => ExampleError::EmptyFeatureName { index },
                    Problem::ReservedFeatureName => {
                        ExampleError::ReservedFeatureName { name: name.clone() }
                    }
                    problem => ExampleError::InvalidFeatureName {
                        name: name.clone(),
                        problem,
                    },
                });
            }
            if validation::check_feature_value(*value).is_err() {
                return Err(ExampleError::NonFiniteFeature {
                    name: name.clone(),
                    value: *value,
                });
            }
        }
        if validation::check_label(LabelRule::Finite, label).is_err() {
            return Err(ExampleError::NonFiniteLabel { value: label });
        }
        if validation::check_weight(weight).is_err() {
            return Err(ExampleError::InvalidWeight { value: weight });
        }
        validation::sort_features(&mut features)
            .map_err(|name| ExampleError::DuplicateFeature { name })?;
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

/// Checks a label for a model kind ([`validation::check_label`]): finite for linear, finite and
/// in [0, 1] for logistic.
pub fn validate_label(kind: ModelKind, label: f64) -> Result<(), ExampleError> {
    validation::check_label(kind.into(), label).map_err(|problem| match problem {
        Problem::LabelOutOfRange { .. } => ExampleError::LabelOutOfRange { kind, value: label },
        _ => ExampleError::NonFiniteLabel { value: label },
    })
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
    fn limits_of_the_validation_module() {
        let max = validation::MAX_FEATURE_NAME_LEN;
        assert!(Example::new(f(&[(&"n".repeat(max), 1.0)]), 1.0, 1.0).is_ok());
        let err = Example::new(f(&[(&"n".repeat(max + 1), 1.0)]), 1.0, 1.0).unwrap_err();
        assert!(matches!(
            err,
            ExampleError::InvalidFeatureName {
                problem: Problem::FeatureNameTooLong { .. },
                ..
            }
        ));
        assert!(err.to_string().contains("200"), "{err}");
        assert!(matches!(
            Example::new(f(&[("a\0b", 1.0)]), 1.0, 1.0),
            Err(ExampleError::InvalidFeatureName {
                problem: Problem::FeatureNameNul,
                ..
            })
        ));
        let many = |n: usize| (0..n).map(|i| (format!("f{i}"), 1.0)).collect::<Vec<_>>();
        assert!(Example::new(many(validation::MAX_FEATURES), 1.0, 1.0).is_ok());
        let err = Example::new(many(validation::MAX_FEATURES + 1), 1.0, 1.0).unwrap_err();
        assert_eq!(err, ExampleError::TooManyFeatures { count: 1001 });
        assert!(err.to_string().contains("at most 1000"), "{err}");
        // A sample weight may exceed a confidence's 1.
        assert!(Example::new(vec![], 1.0, 1e300).is_ok());
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
