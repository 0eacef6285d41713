//! Learner settings: the kind of model, the optimizer, its learning-rate schedule, and the
//! validated [`LearnerConfig`] stored as JSON in the `models` table.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// Error of the `FromStr` implementations of [`ModelKind`], [`OptimizerKind`] and [`LrSchedule`].
/// Its message names the rejected value and lists the valid ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {got:?}; valid values: {valid}")]
pub struct ParseEnumError {
    /// What was being parsed, e.g. "model kind".
    pub what: &'static str,
    /// The rejected input.
    pub got: String,
    /// The valid values, comma separated.
    pub valid: &'static str,
}

/// Implements `as_str`, `Display` and a case-insensitive `FromStr` (surrounding spaces ignored)
/// for a unit-only enum whose serde names are the lowercase variant names.
macro_rules! string_enum {
    ($ty:ident, $what:literal, $($variant:ident => $name:literal),+ $(,)?) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The lowercase name, as used in JSON, SQL and on the command line.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = ParseEnumError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let t = s.trim();
                $(
                    if t.eq_ignore_ascii_case($name) {
                        return Ok($ty::$variant);
                    }
                )+
                Err(ParseEnumError {
                    what: $what,
                    got: s.to_string(),
                    valid: concat!($($name, ", "),+).trim_end_matches(", "),
                })
            }
        }
    };
}

/// The model family: what the margin is turned into and which loss is minimized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Linear regression: prediction = margin, loss = squared error.
    Linear,
    /// Logistic regression: prediction = sigmoid(margin), loss = log loss, labels in [0, 1].
    Logistic,
}

string_enum!(ModelKind, "model kind", Linear => "linear", Logistic => "logistic");

/// The per-parameter update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Plain stochastic gradient descent, `w -= eta_t * g` (the only optimizer the
    /// [`LrSchedule`] applies to).
    Sgd,
    /// AdaGrad (Duchi et al. 2011): `v += g^2; w -= lr * g / (sqrt(v) + eps)`.
    Adagrad,
    /// RMSprop: `v = rho*v + (1-rho)*g^2; w -= lr * g / (sqrt(v) + eps)`.
    Rmsprop,
    /// Adam (Kingma & Ba 2015) with per-parameter ("lazy") bias correction.
    Adam,
    /// FTRL-Proximal (McMahan et al. 2013), per coordinate, with L1 and L2.
    Ftrl,
    /// A race of SGD at three rates, `learning_rate` times [`AUTO_RATE_FACTORS`]: each candidate
    /// keeps its own weights (in the three value slots of every parameter: `value`, `m`, `v`),
    /// all three learn every example (with `safe_step` and `intercept_boost` like SGD), and the
    /// model predicts with the candidate whose exponentially decayed prequential loss (absolute
    /// error for linear models, log loss for logistic ones; half-life [`AUTO_LOSS_HALF_LIFE`]
    /// examples) is lowest. No single rate suits every stream (small ones
    /// win on wide, noisy streams, large ones after a drift); the race picks per stream, and
    /// again after a drift. The learning-rate schedule does not apply.
    Auto,
}

/// The rates of the [`OptimizerKind::Auto`] race, as multiples of `learning_rate`, in the order
/// of the slots holding each candidate's weights: `value`, `m`, `v`. The first is the base rate,
/// so a parameter's `value` is always SGD's weight at `learning_rate`.
pub const AUTO_RATE_FACTORS: [f64; 3] = [1.0, 0.1, 5.0];

/// Half-life, in examples, of the decayed prequential loss the `auto` race ranks its candidates
/// by: long enough that noise does not flip the leader every few rows, short enough that a
/// drift lets a faster candidate take over within a few hundred.
pub const AUTO_LOSS_HALF_LIFE: f64 = 100.0;

string_enum!(
    OptimizerKind,
    "optimizer",
    Sgd => "sgd",
    Adagrad => "adagrad",
    Rmsprop => "rmsprop",
    Adam => "adam",
    Ftrl => "ftrl",
    Auto => "auto",
);

/// Learning-rate schedule. It applies to [`OptimizerKind::Sgd`] only: the adaptive optimizers
/// (AdaGrad, RMSprop, Adam, FTRL) bring their own per-parameter step sizes and always use
/// `learning_rate` as their base rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// `eta_t = learning_rate`.
    Constant,
    /// `eta_t = learning_rate / (t + 1)^power_t`, where `t` is the number of examples the model
    /// has learned so far ([`crate::learner::Learner::examples_seen`]). Decaying rates converge on
    /// stationary data but adapt ever more slowly after a drift.
    Invscaling,
}

string_enum!(LrSchedule, "learning-rate schedule", Constant => "constant", Invscaling => "invscaling");

/// Learner settings of one model, stored as JSON in the models table. Every field has a serde
/// default (the value in [`LearnerConfig::default`]), so `{}` deserializes to the defaults, and
/// unknown fields are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LearnerConfig {
    /// The per-parameter update rule.
    pub optimizer: OptimizerKind,
    /// Base step size: `eta0` for SGD, `alpha` for AdaGrad, RMSprop, Adam and FTRL. Must be > 0.
    pub learning_rate: f64,
    /// Learning-rate schedule; SGD only (see [`LrSchedule`]).
    pub lr_schedule: LrSchedule,
    /// Exponent of the `invscaling` schedule. Must be >= 0.
    pub power_t: f64,
    /// Adam: decay of the first moment, in [0, 1).
    pub beta1: f64,
    /// Adam: decay of the second moment, in [0, 1).
    pub beta2: f64,
    /// RMSprop: decay of the mean of squared gradients, in [0, 1).
    pub rho: f64,
    /// AdaGrad, RMSprop, Adam: added to the denominator `sqrt(v)`. Must be > 0.
    pub epsilon: f64,
    /// FTRL: the `beta` of the per-coordinate rate `alpha / (beta + sqrt(n))`. Must be >= 0.
    pub ftrl_beta: f64,
    /// L1 strength. FTRL only (it is what makes FTRL weights exactly zero); ignored by the other
    /// optimizers. Never applied to the intercept. Must be >= 0.
    pub l1: f64,
    /// L2 strength, all optimizers; never applied to the intercept. SGD, AdaGrad, RMSprop and
    /// Adam add `l2 * w` to the gradient; FTRL uses it as the `lambda2` of its closed form.
    /// Must be >= 0.
    pub l2: f64,
    /// 0 = off; otherwise each parameter's gradient is clipped to `[-c, c]`. Must be >= 0.
    pub clip_gradient: f64,
    /// Online feature standardization: each feature value is replaced by
    /// `(x - mean) / std` from running statistics of that feature (see
    /// [`crate::learner::standardized_value`] for the exact rule and its warm-up).
    pub standardize: bool,
    /// With `standardize`: a standardized value is clipped to `[-c, c]` (0 = off). A feature's
    /// first few values give a poor estimate of its spread, and a value then many "standard
    /// deviations" away would swing a prediction by orders of magnitude; so would a rare
    /// outlier later. Must be >= 0.
    pub standardize_clip: f64,
    /// Linear models: the intercept follows the running mean of the label (it starts at the
    /// first label and moves with the mean), so a target far from zero costs no warm-up; the
    /// weights and the SGD step on the intercept learn what the mean leaves. Ignored by logistic
    /// models.
    pub center_target: bool,
    /// SGD and `auto`: the "safe" normalized step. The step is bounded so that one example cannot move the
    /// prediction past its label: the effective rates satisfy
    /// `rate_intercept + rate * sum(x'^2) <= 1` (linear) or `<= 4` (logistic, whose loss curves
    /// at most 1/4), by scaling both down when needed. With many features this is NLMS (Ross,
    /// Mineiro & Langford 2013 normalize the same way); it makes SGD stable however many dense
    /// features an example has.
    pub safe_step: bool,
    /// Every optimizer but FTRL: the intercept's learning rate is `learning_rate * (1 +
    /// (intercept_boost - 1) * 0.5^(t / intercept_boost_half_life))`, `t` being the examples the
    /// intercept has seen: a new model finds its level fast, then the intercept settles to the
    /// weights' rate. 1 = off (the default since the `auto` race; it was 10 before).
    /// Must be in [1, 1000].
    pub intercept_boost: f64,
    /// Examples for the intercept boost's excess over 1 to halve. Must be > 0.
    pub intercept_boost_half_life: f64,
    /// Concept-drift detection over the prequential loss, and what to do on drift.
    pub drift: super::drift::DriftConfig,
    /// The guard against bad learning (applied by the worker, not the learner).
    pub guard: GuardConfig,
}

/// The guard against bad learning: when the prequential loss over the last `window` examples
/// exceeds `(1 + threshold)` times the best loss at one of the model's `snapshots` most recent
/// snapshots (and by at least `min_increase`), the worker rolls the model back to that snapshot
/// and quarantines it (`olps model resume` lets it learn again; its feedback waits, kept).
///
/// Off by default: the loss alone cannot tell a poisoned feed from a genuine drift, which also
/// raises it; turn it on for models whose labels can be attacked or broken, with a threshold
/// above the drifts you expect to adapt to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    pub enabled: bool,
    pub window: i64,
    pub threshold: f64,
    pub min_increase: f64,
    pub snapshots: i64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            enabled: false,
            window: 500,
            threshold: 1.0,
            min_increase: 0.05,
            snapshots: 5,
        }
    }
}

impl GuardConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad =
            |field: &'static str, message: String| Err(ConfigError::Invalid { field, message });
        if !(10..=10_000_000).contains(&self.window) {
            return bad(
                "guard.window",
                format!(
                    "must be between 10 and 10000000 examples, got {}",
                    self.window
                ),
            );
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return bad(
                "guard.threshold",
                format!("must be a finite number > 0, got {}", self.threshold),
            );
        }
        if !(self.min_increase.is_finite() && self.min_increase >= 0.0) {
            return bad(
                "guard.min_increase",
                format!("must be a finite number >= 0, got {}", self.min_increase),
            );
        }
        if !(1..=100).contains(&self.snapshots) {
            return bad(
                "guard.snapshots",
                format!("must be between 1 and 100, got {}", self.snapshots),
            );
        }
        Ok(())
    }
}

impl LearnerConfig {
    /// The default base rate of each optimizer (the rate a model gets when its settings name an
    /// optimizer but no `learning_rate`). The adaptive optimizers divide by the root of their
    /// summed squared gradients, so on standardized inputs their steps shrink like `1/sqrt(t)`
    /// and need a base rate an order of magnitude above SGD's (measured on the learning suite,
    /// docs/BENCHMARKS.md).
    pub fn default_learning_rate(optimizer: OptimizerKind) -> f64 {
        match optimizer {
            OptimizerKind::Sgd => DEFAULT_SGD_RATE,
            OptimizerKind::Adagrad => 0.3,
            OptimizerKind::Rmsprop => 0.03,
            OptimizerKind::Adam => 0.03,
            OptimizerKind::Ftrl => 1.0,
            OptimizerKind::Auto => DEFAULT_SGD_RATE,
        }
    }

    /// The defaults before the learning suite (issue 17): plain SGD at 0.02 without target
    /// centring, safe step or intercept boost. A stored model's settings without the newer fields
    /// read as these ([`LearnerConfig::from_stored`]), so existing models keep their behaviour.
    pub fn legacy() -> LearnerConfig {
        LearnerConfig {
            optimizer: OptimizerKind::Sgd,
            learning_rate: 0.02,
            standardize_clip: 0.0,
            center_target: false,
            safe_step: false,
            intercept_boost: 1.0,
            intercept_boost_half_life: 100.0,
            ..LearnerConfig::default()
        }
    }
}

/// SGD's default base rate.
const DEFAULT_SGD_RATE: f64 = 0.02;

impl Default for LearnerConfig {
    /// The defaults are chosen to work on unscaled real data without tuning, including after an
    /// abrupt concept drift: a race of SGD at constant rates 0.02, 0.002 and 0.1 on standardized
    /// features, predicting with the one whose recent prequential loss is lowest.
    ///
    /// * `optimizer: auto` ([`OptimizerKind::Auto`], issue 17): no single constant rate suits
    ///   every stream (measured on the learning suite: 0.002 wins on 60 correlated noisy
    ///   features, 0.1 where a concept flips every 1,000 rows, 0.02 in between), so the three
    ///   learn side by side and the model predicts with the leader. Each candidate is plain SGD
    ///   (what follows holds for each); their weights live in each parameter's `value`, `m` and
    ///   `v`, so the race costs no storage. Suite, draws 0–2: 55 of 66 stream goals met, against
    ///   46 for SGD at 0.02 alone.
    /// * `standardize: true` makes the learner independent of the feature scales: a feature in
    ///   the thousands and one in the thousandths get the same effective step, and the weights
    ///   are per standard deviation, so one learning rate suits every model.
    /// * `learning_rate: 0.02` (the race's base rate), `lr_schedule: constant`. On standardized
    ///   inputs SGD shrinks the error by a factor of about `1 - 0.02` per example in every
    ///   direction, *whatever the scale of the label*: it re-learns a drift in a few hundred
    ///   examples, and forgets a wild label at the same rate. The adaptive optimizers move each
    ///   weight by about `learning_rate` per example whatever the error, so a target around
    ///   5000 takes ~250,000 examples to reach at 0.02 (measured: Adam, RMSprop and FTRL all
    ///   fail a scaled copy of the reference stream that SGD learns exactly as well); and Adam's
    ///   slowly decaying second moment (beta2 = 0.999) freezes the weights an outlier has moved
    ///   for thousands of examples, while AdaGrad's and FTRL's ever-growing sums freeze their
    ///   rate after a drift. A decaying schedule would also stop following drifts.
    /// * `safe_step: true`: plain SGD is stable only while `learning_rate * (1 + sum of the
    ///   squared standardized feature values of an example) < 2` (about 100 dense features at
    ///   0.02; past it the old default diverged, measured on the learning suite's 60-feature
    ///   stream: MAE 1e98). The safe step scales an update down when it would carry the
    ///   prediction past the label, so no example, however wide, makes SGD diverge.
    /// * `center_target: true` (linear): the intercept starts at the first label and follows
    ///   the label's running mean, so a target at 40 or 5000 costs no warm-up (the old default
    ///   climbed from 0 at 2% a step). `intercept_boost: 1` (off): a faster intercept cost
    ///   logistic models accuracy on the suite (up to 0.004 per stream with boost 10) and
    ///   moved no regression stream's MAE by more than 4%; the race's fast candidate already
    ///   finds a level quickly.
    /// * Each optimizer has its own default rate ([`LearnerConfig::default_learning_rate`]):
    ///   AdaGrad 0.3, FTRL 1, Adam and RMSprop 0.03; at SGD's 0.02 AdaGrad and FTRL barely
    ///   moved from a running mean.
    /// * Measured on the learning suite (`olps bench learn --python …`, docs/BENCHMARKS.md).
    /// * Measured (`tests/it/learner.rs`): on the reference drift stream, MSE 0.011 before the
    ///   drift and 0.011 over the last 500 rows (noise floor 0.01); prequential accuracy 98.4%
    ///   (99.2% on the second half) on an unscaled separable logistic stream.
    /// * The settings the default optimizer does not use have their usual values: Adam
    ///   `beta1 = 0.9, beta2 = 0.999`, `epsilon = 1e-8`, RMSprop `rho = 0.9`, FTRL
    ///   `ftrl_beta = 1`, invscaling `power_t = 0.25` (scikit-learn's value).
    /// * No regularization or clipping (`l1 = l2 = clip_gradient = 0`): nothing to tune away.
    fn default() -> Self {
        LearnerConfig {
            optimizer: OptimizerKind::Auto,
            learning_rate: DEFAULT_SGD_RATE,
            lr_schedule: LrSchedule::Constant,
            power_t: 0.25,
            beta1: 0.9,
            beta2: 0.999,
            rho: 0.9,
            epsilon: 1e-8,
            ftrl_beta: 1.0,
            l1: 0.0,
            l2: 0.0,
            clip_gradient: 0.0,
            standardize: true,
            standardize_clip: 10.0,
            center_target: true,
            safe_step: true,
            intercept_boost: 1.0,
            intercept_boost_half_life: 100.0,
            drift: super::drift::DriftConfig::default(),
            guard: GuardConfig::default(),
        }
    }
}

fn invalid(field: &'static str, requirement: &str, got: f64) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: format!("must be a finite number {requirement}, got {got}"),
    }
}

fn check(
    field: &'static str,
    value: f64,
    requirement: &str,
    ok: impl Fn(f64) -> bool,
) -> Result<(), ConfigError> {
    if value.is_finite() && ok(value) {
        Ok(())
    } else {
        Err(invalid(field, requirement, value))
    }
}

impl LearnerConfig {
    /// Checks that every numeric field is finite and in range. The error names the first bad
    /// field, e.g. `learning_rate: must be a finite number > 0, got -1`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check("learning_rate", self.learning_rate, "> 0", |x| x > 0.0)?;
        check("power_t", self.power_t, ">= 0", |x| x >= 0.0)?;
        check("beta1", self.beta1, "in [0, 1)", |x| {
            (0.0..1.0).contains(&x)
        })?;
        check("beta2", self.beta2, "in [0, 1)", |x| {
            (0.0..1.0).contains(&x)
        })?;
        check("rho", self.rho, "in [0, 1)", |x| (0.0..1.0).contains(&x))?;
        check("epsilon", self.epsilon, "> 0", |x| x > 0.0)?;
        check("ftrl_beta", self.ftrl_beta, ">= 0", |x| x >= 0.0)?;
        check("l1", self.l1, ">= 0", |x| x >= 0.0)?;
        check("l2", self.l2, ">= 0", |x| x >= 0.0)?;
        check("clip_gradient", self.clip_gradient, ">= 0 (0 = off)", |x| {
            x >= 0.0
        })?;
        check(
            "standardize_clip",
            self.standardize_clip,
            ">= 0 (0 = off)",
            |x| x >= 0.0,
        )?;
        check(
            "intercept_boost",
            self.intercept_boost,
            "in [1, 1000] (1 = off)",
            |x| (1.0..=1000.0).contains(&x),
        )?;
        check(
            "intercept_boost_half_life",
            self.intercept_boost_half_life,
            "> 0",
            |x| x > 0.0,
        )?;
        self.drift.validate()?;
        self.guard.validate()?;
        Ok(())
    }

    /// Parses settings a user gave (HTTP, `--settings`), without validating them: a missing
    /// field takes its default, and a missing `learning_rate` the default rate of the chosen
    /// optimizer ([`LearnerConfig::default_learning_rate`]).
    pub fn from_input(value: &serde_json::Value) -> Result<LearnerConfig, ConfigError> {
        let mut config: LearnerConfig =
            serde_path_to_error::deserialize(value.clone()).map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().to_string();
                if path == "." {
                    ConfigError::Invalid {
                        field: "config",
                        message,
                    }
                } else {
                    ConfigError::Parse { path, message }
                }
            })?;
        if value.get("learning_rate").is_none() {
            config.learning_rate = Self::default_learning_rate(config.optimizer);
        }
        Ok(config)
    }

    /// [`LearnerConfig::from_input`], then [`LearnerConfig::validate`].
    pub fn from_json(value: &serde_json::Value) -> Result<LearnerConfig, ConfigError> {
        let config = Self::from_input(value)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads settings stored in the models table. A field missing there takes its value from
    /// [`LearnerConfig::legacy`], not from the current defaults: settings written before a
    /// field existed keep the behaviour they had (a model's stored JSON holds every field that
    /// existed when it was created). Not validated (the caller decides what a bad row means).
    pub fn from_stored(value: &serde_json::Value) -> Result<LearnerConfig, serde_json::Error> {
        let serde_json::Value::Object(stored) = value else {
            return serde_json::from_value(value.clone());
        };
        let mut merged = match serde_json::to_value(Self::legacy()) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => unreachable!("settings serialize to an object"),
        };
        for (k, v) in stored {
            merged.insert(k.clone(), v.clone());
        }
        serde_json::from_value(serde_json::Value::Object(merged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_and_list_valid_values() {
        for k in ModelKind::ALL {
            assert_eq!(k.as_str().parse::<ModelKind>().unwrap(), *k);
            assert_eq!(k.to_string(), k.as_str());
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        for o in OptimizerKind::ALL {
            assert_eq!(o.as_str().parse::<OptimizerKind>().unwrap(), *o);
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
        for s in LrSchedule::ALL {
            assert_eq!(s.as_str().parse::<LrSchedule>().unwrap(), *s);
        }
        assert_eq!(
            " Adam ".parse::<OptimizerKind>().unwrap(),
            OptimizerKind::Adam
        );
        let err = "svm".parse::<ModelKind>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown model kind \"svm\"; valid values: linear, logistic"
        );
        let err = "lbfgs".parse::<OptimizerKind>().unwrap_err().to_string();
        assert!(
            err.ends_with("sgd, adagrad, rmsprop, adam, ftrl, auto"),
            "{err}"
        );
        let err = "step".parse::<LrSchedule>().unwrap_err().to_string();
        assert!(err.ends_with("constant, invscaling"), "{err}");
    }

    #[test]
    fn default_is_valid_and_empty_json_is_default() {
        LearnerConfig::default().validate().unwrap();
        let c: LearnerConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, LearnerConfig::default());
        let c = LearnerConfig::from_json(&serde_json::json!({"optimizer": "ftrl"})).unwrap();
        assert_eq!(c.optimizer, OptimizerKind::Ftrl);
        let err = LearnerConfig::from_json(&serde_json::json!({"learning_rate": 0})).unwrap_err();
        assert!(err.to_string().starts_with("learning_rate: "), "{err}");
        let err = LearnerConfig::from_json(&serde_json::json!({"lr": 0.1})).unwrap_err();
        assert!(err.to_string().contains("unknown field `lr`"), "{err}");
    }

    #[test]
    fn an_optimizer_without_a_rate_gets_its_own_default_rate() {
        for o in OptimizerKind::ALL {
            let c = LearnerConfig::from_json(&serde_json::json!({ "optimizer": o })).unwrap();
            assert_eq!(c.learning_rate, LearnerConfig::default_learning_rate(*o));
            let c = LearnerConfig::from_json(
                &serde_json::json!({ "optimizer": o, "learning_rate": 0.5 }),
            )
            .unwrap();
            assert_eq!(c.learning_rate, 0.5);
        }
        assert_eq!(
            LearnerConfig::from_json(&serde_json::json!({})).unwrap(),
            LearnerConfig::default()
        );
        assert!(
            LearnerConfig::default_learning_rate(OptimizerKind::Adagrad)
                > LearnerConfig::default_learning_rate(OptimizerKind::Sgd)
        );
    }

    #[test]
    fn stored_settings_without_the_new_fields_keep_the_old_behaviour() {
        // What a model created before the new fields existed has in `models.settings`.
        let mut old = serde_json::to_value(LearnerConfig::legacy()).unwrap();
        let object = old.as_object_mut().unwrap();
        for field in [
            "standardize_clip",
            "center_target",
            "safe_step",
            "intercept_boost",
            "intercept_boost_half_life",
        ] {
            assert!(object.remove(field).is_some(), "{field}");
        }
        let read = LearnerConfig::from_stored(&old).unwrap();
        assert_eq!(read, LearnerConfig::legacy());
        assert_eq!(read.learning_rate, 0.02);
        assert!(!read.center_target && !read.safe_step);
        assert_eq!(read.intercept_boost, 1.0);
        // A stored `{}` (a row inserted by hand) is the old defaults too, not the new ones.
        assert_eq!(
            LearnerConfig::from_stored(&serde_json::json!({})).unwrap(),
            LearnerConfig::legacy()
        );
        // New models store every field, and read back as they were written.
        let new = serde_json::to_value(LearnerConfig::default()).unwrap();
        assert_eq!(
            LearnerConfig::from_stored(&new).unwrap(),
            LearnerConfig::default()
        );
        assert_ne!(LearnerConfig::legacy(), LearnerConfig::default());
        LearnerConfig::legacy().validate().unwrap();
        // Unknown stored fields are still an error (an unreadable model, not a silent default).
        assert!(LearnerConfig::from_stored(&serde_json::json!({"lr": 1})).is_err());
    }

    #[test]
    fn intercept_boost_is_validated() {
        for (field, bad) in [
            ("intercept_boost", 0.5),
            ("intercept_boost", 2000.0),
            ("intercept_boost_half_life", 0.0),
        ] {
            let err = LearnerConfig::from_json(&serde_json::json!({ field: bad })).unwrap_err();
            assert!(err.to_string().starts_with(field), "{err}");
        }
    }
}
