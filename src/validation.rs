//! The one set of rules for what feedback, a prediction request and a training example may hold:
//! the limits below and the checks that apply them. Every path uses these functions — HTTP
//! feedback ingest ([`crate::feedback`]), predict ([`crate::http`]), the worker's decoding of
//! plain-SQL rows ([`crate::worker::examples`]) and the learner's [`crate::learner::Example::new`]
//! — so an input that one path refuses, every path refuses. The limits are written down for users
//! in README.md, section "Limits"; a test below keeps that table equal to these constants.
//!
//! | what | rule |
//! |---|---|
//! | features per example / instance | at most [`MAX_FEATURES`] (1,000) |
//! | feature name | 1..=[`MAX_FEATURE_NAME_LEN`] (200) characters, no NUL, not [`RESERVED_FEATURE_NAME`], each name once |
//! | feature value | a finite number (f64) |
//! | `entity_id` | 1..=[`MAX_ENTITY_ID_LEN`] (256) characters, not only whitespace, no NUL |
//! | `feedback_type` | 1..=[`MAX_FEEDBACK_TYPE_LEN`] (64) characters, not only whitespace, no NUL |
//! | `feedback_value` (label) | finite; within [0, 1] for a logistic model ([`LabelRule`]) |
//! | `confidence` | in (0, 1]; absent (NULL) means 1 |
//! | other JSON strings and keys (`metadata`) | no NUL |
//!
//! Lengths count characters (Unicode scalar values, as PostgreSQL's `length()` does), not bytes.
//! NUL (U+0000) is refused in every name and string because PostgreSQL `text` and `jsonb` cannot
//! store it. The learner's sample weight ([`check_weight`]: finite, > 0) is wider than a
//! confidence: the data paths only ever give it a confidence, the learner accepts any positive
//! weight.
//!
//! Pure: no I/O, and no dependency on other olps modules (the learner depends on this one).
//! Checks return a [`Problem`] (what is wrong, without saying where); callers put it in their
//! own shape, or in an [`Invalid`], which adds the field path (`events[3].features.amount`,
//! `metadata.features.amount`). Messages name the limit.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// Features per example (a feedback event, a predict instance, a training example).
pub const MAX_FEATURES: usize = 1_000;
/// Characters per feature name. The name is a key of the `model_parameters` B-tree, whose entries
/// must stay under about 2.7 kB: 200 characters are at most 800 bytes of UTF-8.
pub const MAX_FEATURE_NAME_LEN: usize = 200;
/// Characters per `entity_id`.
pub const MAX_ENTITY_ID_LEN: usize = 256;
/// Characters per `feedback_type`.
pub const MAX_FEEDBACK_TYPE_LEN: usize = 64;
/// The intercept's parameter name, which no feature may use (equal to
/// [`crate::learner::INTERCEPT`], checked at compile time there).
pub const RESERVED_FEATURE_NAME: &str = "__intercept__";
/// The confidence of an event that gives none (SQL NULL, or omitted over HTTP).
pub const DEFAULT_CONFIDENCE: f64 = 1.0;

/// Which labels a model takes (the learner maps its `ModelKind` to one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelRule {
    /// Any finite number (linear models).
    Finite,
    /// A finite number within [0, 1] (logistic models).
    Probability,
}

/// What is wrong with one value, without saying where it is (see [`Invalid`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("is required")]
    Missing,
    #[error("must be {expected}, got {got}")]
    WrongType { expected: &'static str, got: String },
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters, got {len}")]
    TooLong { max: usize, len: usize },
    #[error("must not contain NUL (\\u0000) characters: PostgreSQL text cannot store them")]
    Nul,
    #[error("feature names must not be empty")]
    EmptyFeatureName,
    #[error("feature names must be at most {max} characters, got {len}")]
    FeatureNameTooLong { max: usize, len: usize },
    #[error(
        "feature names must not contain NUL (\\u0000) characters: PostgreSQL text cannot store them"
    )]
    FeatureNameNul,
    #[error("is reserved for the model's intercept; rename the feature")]
    ReservedFeatureName,
    #[error("is given more than once; give each feature once")]
    DuplicateFeature,
    #[error("at most {max} features per example, got {count}")]
    TooManyFeatures { max: usize, count: usize },
    #[error("is not an object of feature name -> number (got {got})")]
    NotAnObject { got: String },
    #[error("is not a number (got {got}); feature values must be finite numbers")]
    NotANumber { got: String },
    #[error("must be a finite number, got {value}")]
    NotFinite { value: f64 },
    #[error(
        "cannot be read: {error}; numbers must be finite and within the float8 range \
         (magnitude at most about 1.8e308)"
    )]
    Unreadable { error: String },
    #[error("must be between 0 and 1 (within [0, 1]) for a logistic model, got {value}")]
    LabelOutOfRange { value: f64 },
    #[error("must be a number in (0, 1], got {got}")]
    Confidence { got: String },
    #[error("must be a finite number > 0, got {value}")]
    Weight { value: f64 },
}

/// A [`Problem`] at a field path: displayed `field: problem`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    pub field: String,
    pub problem: Problem,
}

impl Invalid {
    pub fn new(field: impl Into<String>, problem: Problem) -> Invalid {
        Invalid {
            field: field.into(),
            problem,
        }
    }
}

/// The field path of feature `name` under `path` (`features.amount`); a long name is shortened
/// and control characters are escaped, so that a message stays readable.
pub fn feature_field(path: &str, name: &str) -> String {
    let shown = display_name(name);
    if path.is_empty() {
        shown
    } else {
        format!("{path}.{shown}")
    }
}

/// A name as shown in messages: at most 40 characters (then `…`), control characters escaped.
pub fn display_name(name: &str) -> String {
    const SHOWN: usize = 40;
    let mut out = String::with_capacity(name.len().min(SHOWN * 4 + 3));
    for (i, c) in name.chars().enumerate() {
        if i == SHOWN {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn check_text(value: &str, max: usize) -> Result<(), Problem> {
    if value.trim().is_empty() {
        return Err(Problem::Empty);
    }
    let len = value.chars().count();
    if len > max {
        return Err(Problem::TooLong { max, len });
    }
    if value.contains('\0') {
        return Err(Problem::Nul);
    }
    Ok(())
}

/// `entity_id`: 1..=[`MAX_ENTITY_ID_LEN`] characters, not only whitespace, no NUL.
pub fn check_entity_id(entity_id: &str) -> Result<(), Problem> {
    check_text(entity_id, MAX_ENTITY_ID_LEN)
}

/// `feedback_type`: 1..=[`MAX_FEEDBACK_TYPE_LEN`] characters, not only whitespace, no NUL.
pub fn check_feedback_type(feedback_type: &str) -> Result<(), Problem> {
    check_text(feedback_type, MAX_FEEDBACK_TYPE_LEN)
}

/// A feature name: non-empty, no NUL, at most [`MAX_FEATURE_NAME_LEN`] characters, not
/// [`RESERVED_FEATURE_NAME`].
pub fn check_feature_name(name: &str) -> Result<(), Problem> {
    if name.is_empty() {
        return Err(Problem::EmptyFeatureName);
    }
    if name.contains('\0') {
        return Err(Problem::FeatureNameNul);
    }
    // Only a name longer in bytes than the limit in characters needs counting.
    if name.len() > MAX_FEATURE_NAME_LEN {
        let len = name.chars().count();
        if len > MAX_FEATURE_NAME_LEN {
            return Err(Problem::FeatureNameTooLong {
                max: MAX_FEATURE_NAME_LEN,
                len,
            });
        }
    }
    if name == RESERVED_FEATURE_NAME {
        return Err(Problem::ReservedFeatureName);
    }
    Ok(())
}

/// A feature value: finite.
pub fn check_feature_value(value: f64) -> Result<(), Problem> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Problem::NotFinite { value })
    }
}

/// The number of features: at most [`MAX_FEATURES`].
pub fn check_feature_count(count: usize) -> Result<(), Problem> {
    if count > MAX_FEATURES {
        Err(Problem::TooManyFeatures {
            max: MAX_FEATURES,
            count,
        })
    } else {
        Ok(())
    }
}

/// Sorts features by name and returns the first name given more than once, if any.
pub fn sort_features(features: &mut [(String, f64)]) -> Result<(), String> {
    features.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    match features.windows(2).find(|w| w[0].0 == w[1].0) {
        Some(w) => Err(w[0].0.clone()),
        None => Ok(()),
    }
}

/// A label (`feedback_value`): finite, and within [0, 1] under [`LabelRule::Probability`].
pub fn check_label(rule: LabelRule, label: f64) -> Result<(), Problem> {
    if !label.is_finite() {
        return Err(Problem::NotFinite { value: label });
    }
    if rule == LabelRule::Probability && !(0.0..=1.0).contains(&label) {
        return Err(Problem::LabelOutOfRange { value: label });
    }
    Ok(())
}

/// A confidence: in (0, 1]. NaN and infinities are refused.
pub fn check_confidence(confidence: f64) -> Result<(), Problem> {
    if confidence > 0.0 && confidence <= 1.0 {
        Ok(())
    } else {
        Err(Problem::Confidence {
            got: confidence.to_string(),
        })
    }
}

/// The weight of an event: its confidence, or [`DEFAULT_CONFIDENCE`] when it gives none.
pub fn confidence_weight(confidence: Option<f64>) -> Result<f64, Problem> {
    match confidence {
        None => Ok(DEFAULT_CONFIDENCE),
        Some(c) => check_confidence(c).map(|()| c),
    }
}

/// The learner's sample weight: finite and > 0 (wider than a confidence; see the module doc).
pub fn check_weight(weight: f64) -> Result<(), Problem> {
    if weight.is_finite() && weight > 0.0 {
        Ok(())
    } else {
        Err(Problem::Weight { value: weight })
    }
}

/// A JSON value that PostgreSQL can store as `jsonb`: no NUL in any string or key, at any depth.
/// The error names the path of the first one (`metadata.note`, `metadata.tags[2]`).
pub fn check_storable_json(value: &Value, path: &str) -> Result<(), Invalid> {
    match value {
        Value::String(s) if s.contains('\0') => Err(Invalid::new(path, Problem::Nul)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_storable_json(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            let field = feature_field(path, k);
            if k.contains('\0') {
                return Err(Invalid::new(field, Problem::Nul));
            }
            check_storable_json(v, &field)
        }),
        _ => Ok(()),
    }
}

// ---- Features as JSON: an object of name -> number --------------------------------------------

/// A JSON features object as read, before the rules are applied by [`check_features`]: whatever
/// the JSON holds can be read into it (a value that is not a number, or not an object at all,
/// is remembered to be reported with its name), so the rules apply in one place.
#[derive(Debug, Clone, PartialEq)]
pub enum RawFeatures {
    /// An object: its entries in document order (a repeated key is kept twice). A value that is
    /// not a number is NaN here; the first such entry is described in `not_a_number` (its index
    /// and the JSON it held).
    Object {
        entries: Vec<(String, f64)>,
        not_a_number: Option<(usize, String)>,
    },
    /// Not an object: what it was.
    NotAnObject(String),
}

impl<'de> Deserialize<'de> for RawFeatures {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawFeatures, D::Error> {
        RawFeaturesSeed { current: None }.deserialize(deserializer)
    }
}

/// Reads [`RawFeatures`]; when a value cannot be read (a number beyond f64 such as 1e400), its
/// key is left in `current`, so that the error can name the feature.
struct RawFeaturesSeed<'a> {
    current: Option<&'a RefCell<Option<String>>>,
}

impl<'de> DeserializeSeed<'de> for RawFeaturesSeed<'_> {
    type Value = RawFeatures;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawFeatures, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RawFeaturesSeed<'_> {
    type Value = RawFeatures;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of feature name -> number")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFeatures, A::Error> {
        let mut entries: Vec<(String, f64)> =
            Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        let mut not_a_number = None;
        while let Some(name) = map.next_key::<String>()? {
            let value = match map.next_value::<JsonValueKind>() {
                Ok(JsonValueKind::Number(x)) => x,
                Ok(JsonValueKind::Other(got)) => {
                    if not_a_number.is_none() {
                        not_a_number = Some((entries.len(), got));
                    }
                    f64::NAN
                }
                Err(e) => {
                    if let Some(current) = self.current {
                        *current.borrow_mut() = Some(name);
                    }
                    return Err(e);
                }
            };
            entries.push((name, value));
        }
        Ok(RawFeatures::Object {
            entries,
            not_a_number,
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawFeatures, A::Error> {
        Ok(RawFeatures::NotAnObject(drain_seq(seq)?))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawFeatures, E> {
        Ok(RawFeatures::NotAnObject(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawFeatures, E> {
        Ok(RawFeatures::NotAnObject(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawFeatures, E> {
        Ok(RawFeatures::NotAnObject(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawFeatures, E> {
        Ok(RawFeatures::NotAnObject(v.to_string()))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawFeatures, E> {
        Ok(RawFeatures::NotAnObject(quoted(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<RawFeatures, E> {
        Ok(RawFeatures::NotAnObject("null".into()))
    }
}

/// One feature value as read: a number, or a description of what it was instead.
enum JsonValueKind {
    Number(f64),
    Other(String),
}

impl<'de> Deserialize<'de> for JsonValueKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JsonValueKind, D::Error> {
        struct KindVisitor;
        impl<'de> Visitor<'de> for KindVisitor {
            type Value = JsonValueKind;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            // Integers are converted as serde_json's `Value::as_f64` does.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonValueKind, E> {
                Ok(JsonValueKind::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonValueKind, E> {
                Ok(JsonValueKind::Number(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<JsonValueKind, E> {
                Ok(JsonValueKind::Number(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<JsonValueKind, E> {
                Ok(JsonValueKind::Other(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonValueKind, E> {
                Ok(JsonValueKind::Other(quoted(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<JsonValueKind, E> {
                Ok(JsonValueKind::Other("null".into()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<JsonValueKind, A::Error> {
                Ok(JsonValueKind::Other(drain_seq(seq)?))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonValueKind, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(JsonValueKind::Other("an object".into()))
            }
        }
        deserializer.deserialize_any(KindVisitor)
    }
}

fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<String, A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok("an array".into())
}

/// A string as JSON, shortened like [`display_name`].
fn quoted(s: &str) -> String {
    serde_json::to_string(&display_name(s)).unwrap_or_else(|_| "a string".into())
}

/// Applies every feature rule to features read from JSON under `path` (e.g. `features`,
/// `events[3].features`, `metadata.features`), in this order: an object; at most
/// [`MAX_FEATURES`]; then entry by entry in document order the name
/// ([`check_feature_name`]) and the value (a finite number); then each name once. Returns the
/// features sorted by name.
pub fn check_features(raw: RawFeatures, path: &str) -> Result<Vec<(String, f64)>, Invalid> {
    let (mut entries, not_a_number) = match raw {
        RawFeatures::Object {
            entries,
            not_a_number,
        } => (entries, not_a_number),
        RawFeatures::NotAnObject(got) => {
            return Err(Invalid::new(path, Problem::NotAnObject { got }))
        }
    };
    check_feature_count(entries.len()).map_err(|p| Invalid::new(path, p))?;
    for (index, (name, value)) in entries.iter().enumerate() {
        if let Err(problem) = check_feature_name(name) {
            let field = match problem {
                Problem::EmptyFeatureName => path.to_string(),
                _ => feature_field(path, name),
            };
            return Err(Invalid::new(field, problem));
        }
        let problem = match &not_a_number {
            Some((i, got)) if *i == index => Some(Problem::NotANumber { got: got.clone() }),
            _ => check_feature_value(*value).err(),
        };
        if let Some(problem) = problem {
            return Err(Invalid::new(feature_field(path, name), problem));
        }
    }
    sort_features(&mut entries)
        .map_err(|name| Invalid::new(feature_field(path, &name), Problem::DuplicateFeature))?;
    Ok(entries)
}

/// [`check_features`] over a parsed JSON value (HTTP feedback). A JSON object parsed into a
/// [`Value`] holds each key once (the last of repeated keys), like `jsonb`.
pub fn features_from_json(value: &Value, path: &str) -> Result<Vec<(String, f64)>, Invalid> {
    let raw = RawFeatures::deserialize(value).map_err(|e| {
        Invalid::new(
            path,
            Problem::Unreadable {
                error: e.to_string(),
            },
        )
    })?;
    check_features(raw, path)
}

/// [`check_features`] over JSON text as PostgreSQL prints a `jsonb` value (the worker reads
/// `metadata -> 'features'` as text): `jsonb` takes numbers an f64 cannot hold, such as 1e400,
/// and such a number is reported with its feature's name instead of failing the whole read.
pub fn features_from_json_text(text: &str, path: &str) -> Result<Vec<(String, f64)>, Invalid> {
    let current = RefCell::new(None);
    let seed = RawFeaturesSeed {
        current: Some(&current),
    };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let raw = seed
        .deserialize(&mut deserializer)
        .and_then(|raw| deserializer.end().map(|()| raw))
        .map_err(|e| {
            let field = match current.borrow().as_deref() {
                Some(name) => feature_field(path, name),
                None => path.to_string(),
            };
            Invalid::new(
                field,
                Problem::Unreadable {
                    error: e.to_string(),
                },
            )
        })?;
    check_features(raw, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_fields() {
        assert_eq!(check_entity_id("e-1"), Ok(()));
        assert_eq!(check_entity_id(""), Err(Problem::Empty));
        assert_eq!(check_entity_id(" \t"), Err(Problem::Empty));
        assert_eq!(check_entity_id(&"é".repeat(MAX_ENTITY_ID_LEN)), Ok(()));
        assert_eq!(
            check_entity_id(&"x".repeat(MAX_ENTITY_ID_LEN + 1)),
            Err(Problem::TooLong { max: 256, len: 257 })
        );
        assert_eq!(check_entity_id("a\0b"), Err(Problem::Nul));
        assert_eq!(check_feedback_type(&"t".repeat(64)), Ok(()));
        let err = check_feedback_type(&"t".repeat(65))
            .unwrap_err()
            .to_string();
        assert!(err.contains("64") && err.contains("65"), "{err}");
    }

    #[test]
    fn feature_names() {
        assert_eq!(check_feature_name("country=US"), Ok(()));
        assert_eq!(check_feature_name(" "), Ok(()));
        assert_eq!(check_feature_name(""), Err(Problem::EmptyFeatureName));
        assert_eq!(
            check_feature_name(RESERVED_FEATURE_NAME),
            Err(Problem::ReservedFeatureName)
        );
        assert_eq!(check_feature_name("a\0"), Err(Problem::FeatureNameNul));
        assert_eq!(check_feature_name(&"f".repeat(200)), Ok(()));
        // Characters, not bytes: 200 four-byte characters are fine.
        assert_eq!(check_feature_name(&"🦀".repeat(200)), Ok(()));
        let err = check_feature_name(&"f".repeat(201)).unwrap_err();
        assert_eq!(err, Problem::FeatureNameTooLong { max: 200, len: 201 });
        assert!(err.to_string().contains("200"));
        assert_eq!(feature_field("features", "a\0b"), "features.a\\u{0}b");
        let long = feature_field("f", &"x".repeat(6400));
        assert_eq!(long.chars().count(), 2 + 40 + 1, "{long}");
    }

    #[test]
    fn numbers() {
        assert_eq!(check_label(LabelRule::Finite, -1e300), Ok(()));
        assert_eq!(check_label(LabelRule::Probability, 0.0), Ok(()));
        assert_eq!(check_label(LabelRule::Probability, 1.0), Ok(()));
        let err = check_label(LabelRule::Probability, 1.5)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("between 0 and 1") && err.contains("[0, 1]"),
            "{err}"
        );
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(check_label(LabelRule::Finite, bad).is_err());
            assert!(check_confidence(bad).is_err());
            assert!(check_weight(bad).is_err());
            assert!(check_feature_value(bad).is_err());
        }
        for good in [1.0, 0.5, 1e-300] {
            assert_eq!(check_confidence(good), Ok(()));
        }
        for bad in [0.0, -0.0, -1.0, 1.0000001, 2.0] {
            assert!(check_confidence(bad).is_err(), "{bad}");
        }
        assert_eq!(confidence_weight(None), Ok(1.0));
        assert_eq!(confidence_weight(Some(0.25)), Ok(0.25));
        assert_eq!(check_weight(1e300), Ok(()));
        assert!(check_weight(0.0).is_err());
    }

    #[test]
    fn features_from_values_and_text() {
        let ok = features_from_json(&json!({"b": 2, "a": 1.5}), "features").unwrap();
        assert_eq!(ok, vec![("a".to_string(), 1.5), ("b".to_string(), 2.0)]);
        let cases: Vec<(Value, &str)> = vec![
            (json!([1, 2]), "features: is not an object"),
            (json!({"": 1}), "features: feature names must not be empty"),
            (
                json!({"__intercept__": 1}),
                "features.__intercept__: is reserved",
            ),
            (json!({"a": "x"}), "features.a: is not a number (got \"x\")"),
            (json!({"a": null}), "features.a: is not a number (got null)"),
            (
                json!({"a": [1]}),
                "features.a: is not a number (got an array)",
            ),
            (
                json!({"a": {"b": 1}}),
                "features.a: is not a number (got an object)",
            ),
            (
                json!({"a\u{0}": 1}),
                "features.a\\u{0}: feature names must not contain NUL",
            ),
            (
                json!({"f".repeat(201): 1}),
                "feature names must be at most 200 characters, got 201",
            ),
        ];
        for (value, want) in cases {
            let err = features_from_json(&value, "features")
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(want) || err.contains(want),
                "{value}: {err}"
            );
            let text = features_from_json_text(&value.to_string(), "features")
                .unwrap_err()
                .to_string();
            assert_eq!(err, text, "the same message from a value and from text");
        }
        let many: serde_json::Map<String, Value> = (0..=MAX_FEATURES)
            .map(|i| (format!("f{i}"), json!(1)))
            .collect();
        let err = features_from_json(&Value::Object(many), "features").unwrap_err();
        assert_eq!(
            err.problem,
            Problem::TooManyFeatures {
                max: 1000,
                count: 1001
            }
        );
        // Text from PostgreSQL: a repeated key (JSON text, not jsonb) and numbers beyond f64.
        let err = features_from_json_text(r#"{"a": 1, "b": 2, "a": 3}"#, "m").unwrap_err();
        assert_eq!(err, Invalid::new("m.a", Problem::DuplicateFeature));
        let err = features_from_json_text(r#"{"ok": 1, "big": 1e400}"#, "metadata.features")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("metadata.features.big: cannot be read: number out of range"),
            "{err}"
        );
        let tiny = features_from_json_text(r#"{"tiny": 1e-400}"#, "m").unwrap();
        assert_eq!(tiny, vec![("tiny".to_string(), 0.0)]);
        // Integers convert as serde_json's Value::as_f64 does.
        let big = features_from_json_text(r#"{"n": 18446744073709551615}"#, "m").unwrap();
        assert_eq!(big[0].1, json!(18446744073709551615u64).as_f64().unwrap());
    }

    #[test]
    fn storable_json() {
        assert!(check_storable_json(&json!({"a": ["x", {"b": "y"}]}), "metadata").is_ok());
        let err = check_storable_json(&json!({"a": ["x", {"b": "y\u{0}"}]}), "metadata");
        assert_eq!(err, Err(Invalid::new("metadata.a[1].b", Problem::Nul)));
        let err = check_storable_json(&json!({"k\u{0}": 1}), "metadata").unwrap_err();
        assert_eq!(err.field, "metadata.k\\u{0}");
    }

    /// README.md's "Limits" table says what these constants say.
    #[test]
    fn readme_states_the_limits() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Limits")
            .nth(1)
            .expect("README.md has a section \"## Limits\"");
        for row in [
            format!("| features per event, instance or example | {} |", "1,000"),
            format!("| feature name | 1..={MAX_FEATURE_NAME_LEN} characters"),
            format!("| `entity_id` | 1..={MAX_ENTITY_ID_LEN} characters"),
            format!("| `feedback_type` | 1..={MAX_FEEDBACK_TYPE_LEN} characters"),
            "| `confidence` | (0, 1]".to_string(),
        ] {
            assert!(section.contains(&row), "README.md Limits lacks {row:?}");
        }
        assert_eq!(MAX_FEATURES, 1_000);
    }
}
