//! Errors of learner settings, shared by the settings and the drift detectors' own checks.

/// A rejected [`LearnerConfig`] field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `field` is the JSON name of the offending field; `message` says what it must be and what
    /// it was.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// Settings JSON that does not parse: `path` is where (e.g. `optimizer`, `drift.detector`).
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}
