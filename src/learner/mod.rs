//! The online learner: linear and logistic models trained one example at a time (prequentially:
//! predict, measure the loss, then update), with SGD, AdaGrad, RMSprop, Adam or FTRL-Proximal
//! per parameter, optional online feature standardization, and no I/O.
//!
//! A model is a set of named parameters: the intercept [`INTERCEPT`] and one weight per feature
//! name. Each parameter carries its whole state in a [`ParamState`] (value, optimizer
//! accumulators, counts, standardization statistics), so a caller can persist parameters one by
//! one and resume bit for bit. Features are sparse: a feature absent from an example contributes
//! nothing and its parameter is not touched.
//!
//! ## Determinism
//! For the same config, starting state and examples (in the same order), the results are
//! bit-identical however the `params` map was filled: each parameter is updated from its own
//! state only, and sums over features run in feature-name order.

mod config;
pub mod drift;
mod error;
mod example;
mod optimizer;

use std::collections::HashMap;

pub use config::{
    GuardConfig, LearnerConfig, LrSchedule, ModelKind, OptimizerKind, ParseEnumError,
    AUTO_LOSS_HALF_LIFE, AUTO_RATE_FACTORS,
};
pub use error::ConfigError;
pub use example::{validate_label, Example, ExampleError};
pub use optimizer::{contribution, slot, standardized_value, GRAD_MAX, TERM_MAX, VALUE_MAX};

use optimizer::sat;
use serde::{Deserialize, Serialize};

/// Name of the intercept (bias) parameter; reserved, no feature may use it.
pub const INTERCEPT: &str = "__intercept__";

/// Probabilities are clamped to `[P_MIN, 1 - P_MIN]` in the log loss.
pub const P_MIN: f64 = 1e-15;

/// Everything stored per parameter: its value plus optimizer and standardization state. Kept in
/// PostgreSQL column by column (current_value, opt_m, opt_v, update_count, feature_mean,
/// feature_m2) so a restart continues exactly where it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ParamState {
    /// The parameter's value (a feature weight or the intercept).
    pub value: f64,
    /// First accumulator: Adam first moment; FTRL `z`. Unused (0) by SGD, AdaGrad, RMSprop.
    pub m: f64,
    /// Second accumulator: Adam second moment; AdaGrad sum of g^2; RMSprop mean of g^2; FTRL `n`.
    pub v: f64,
    /// Number of examples that touched this parameter (Adam's per-parameter bias correction;
    /// the standardization count). Incremented whether or not standardization is on.
    pub count: i64,
    /// Running mean of the raw feature value (standardization, Welford). Stays 0 when
    /// standardization is off, and for the intercept.
    pub mean: f64,
    /// Running sum of squared deviations of the raw feature value (Welford). Stays 0 when
    /// standardization is off, and for the intercept.
    pub m2: f64,
}

/// The outcome of one prequential step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// The prediction made with the state before the update.
    pub prediction: f64,
    /// The loss of that prediction (see [`loss`]).
    pub loss: f64,
    /// The base learning rate used by the update.
    pub learning_rate: f64,
}

/// An online linear or logistic model: its settings and its parameters.
#[derive(Debug, Clone)]
pub struct Learner {
    pub kind: ModelKind,
    pub config: LearnerConfig,
    /// The parameters by name; a missing key is a parameter in its initial state
    /// (`ParamState::default()`: value 0, no history).
    pub params: HashMap<String, ParamState>,
    /// Model-level count of examples learned (drives the `invscaling` schedule); persisted by
    /// the caller.
    pub examples_seen: i64,
    /// Drift detectors and the learning-rate multiplier; persisted by the caller with
    /// `examples_seen` (see [`ModelState`]).
    pub drift: drift::DriftState,
    /// Drifts detected since the caller last took them ([`Learner::take_drift_events`]).
    pub drift_events: Vec<drift::DriftEvent>,
    /// Set when a `reset` adaptation reset the parameters held in `params`: a caller holding
    /// only some of the model's parameters must reset the others too ([`reset_state`]).
    pub reset_happened: bool,
    /// The `auto` race's ranking (unused by the other optimizers); persisted with `drift`.
    pub race: RaceState,
}

/// The model-level learner state besides the parameters, persisted with the model.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelState {
    pub drift: drift::DriftState,
    /// Absent from the state of models stored before the `auto` optimizer: all zero, which
    /// makes the base rate the leader.
    pub race: RaceState,
}

/// The ranking of the [`OptimizerKind::Auto`] race: each candidate's prequential loss (measured
/// before it learned the example, by [`race_loss`]), exponentially decayed with a half-life of
/// [`AUTO_LOSS_HALF_LIFE`] examples. The leader, which the model predicts with, is the candidate
/// with the lowest; ties go to the lower index, so a new model starts with the base rate.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RaceState {
    pub losses: [f64; 3],
}

/// Each loss enters the race clamped to this, so the decayed sums stay finite.
const RACE_LOSS_MAX: f64 = 1e100;

impl RaceState {
    /// The index of the candidate with the lowest decayed loss (the first of equals).
    pub fn leader(&self) -> usize {
        let mut best = 0;
        for k in 1..self.losses.len() {
            if self.losses[k] < self.losses[best] {
                best = k;
            }
        }
        best
    }

    /// Adds one example's loss of each candidate.
    fn observe(&mut self, losses: [f64; 3]) {
        let keep = (-1.0 / AUTO_LOSS_HALF_LIFE).exp2();
        for (decayed, l) in self.losses.iter_mut().zip(losses) {
            let l = if l.is_nan() {
                RACE_LOSS_MAX
            } else {
                l.clamp(0.0, RACE_LOSS_MAX)
            };
            *decayed = keep * *decayed + (1.0 - keep) * l;
        }
    }

    /// Every loss finite and >= 0 (a bad stored value reads as 0), so its JSON reads back.
    pub fn sanitized(&self) -> RaceState {
        RaceState {
            losses: self
                .losses
                .map(|l| if l.is_finite() && l > 0.0 { l } else { 0.0 }),
        }
    }
}

/// Resets one parameter's optimizer accumulators (the `reset` drift adaptation), keeping its
/// value: AdaGrad/RMSprop `v`, Adam `m` and `v`; FTRL `n`, with `z` recomputed so that the
/// weight stays what it was. SGD has nothing to reset.
pub fn reset_state(config: &LearnerConfig, state: &mut ParamState, is_intercept: bool) {
    match config.optimizer {
        // The race's `m` and `v` are weights: nothing to reset either.
        OptimizerKind::Sgd | OptimizerKind::Auto => {}
        OptimizerKind::Adagrad | OptimizerKind::Rmsprop => state.v = 0.0,
        OptimizerKind::Adam => {
            state.m = 0.0;
            state.v = 0.0;
        }
        OptimizerKind::Ftrl => {
            let (l1, l2) = if is_intercept {
                (0.0, 0.0)
            } else {
                (config.l1, config.l2)
            };
            let w = state.value;
            state.v = 0.0;
            state.m = if w == 0.0 {
                0.0
            } else {
                -w * (config.ftrl_beta / config.learning_rate + l2) - w.signum() * l1
            };
        }
    }
}

/// The logistic function, computed without overflow for any margin.
#[inline]
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// The loss of one prediction: squared error `(p - y)^2` for linear (saturated at `f64::MAX`),
/// log loss `-(y ln p + (1 - y) ln(1 - p))` with `p` clamped to `[1e-15, 1 - 1e-15]` for
/// logistic.
pub fn loss(kind: ModelKind, prediction: f64, label: f64) -> f64 {
    match kind {
        ModelKind::Linear => {
            let d = prediction - label;
            sat(d * d, f64::MAX)
        }
        ModelKind::Logistic => {
            let p = if prediction.is_nan() {
                0.5
            } else {
                prediction.clamp(P_MIN, 1.0 - P_MIN)
            };
            sat(-(label * p.ln() + (1.0 - label) * (1.0 - p).ln()), f64::MAX)
        }
    }
}

/// What the `auto` race ranks its candidates by: the absolute error for linear models, the log
/// loss for logistic ones. Not the squared error: two candidates' squared errors differ by
/// `(p1 - p2)(p1 + p2 - 2y)`, so one wild label would decide the race for hundreds of examples
/// (measured: a label 20 standard deviations off left the best candidate behind for 500 rows);
/// absolute errors (and log losses, through the margins) differ by at most the candidates'
/// own disagreement, whatever the label.
pub fn race_loss(kind: ModelKind, prediction: f64, label: f64) -> f64 {
    match kind {
        ModelKind::Linear => sat(prediction - label, f64::MAX).abs(),
        ModelKind::Logistic => loss(kind, prediction, label),
    }
}

/// Whether a feature slice is in the canonical order: strictly sorted by name (a slice with a
/// repeated name takes the slow path, which also orders equal names by value).
#[inline]
fn is_sorted_by_name(features: &[(String, f64)]) -> bool {
    features.windows(2).all(|w| w[0].0 < w[1].0)
}

impl Learner {
    /// A learner with no parameters yet (every weight and the intercept start at 0). The config
    /// is used as given: validate it first ([`LearnerConfig::validate`]).
    pub fn new(kind: ModelKind, config: LearnerConfig) -> Learner {
        Learner {
            kind,
            config,
            params: HashMap::new(),
            examples_seen: 0,
            drift: drift::DriftState::default(),
            drift_events: Vec::new(),
            reset_happened: false,
            race: RaceState::default(),
        }
    }

    /// The candidate the model predicts with: the `auto` race's leader, else slot 0 (`value`).
    pub fn leader(&self) -> usize {
        match self.config.optimizer {
            OptimizerKind::Auto => self.race.leader(),
            _ => 0,
        }
    }

    /// The state of one parameter (the default state when it has none yet).
    pub fn param(&self, name: &str) -> ParamState {
        self.params.get(name).copied().unwrap_or_default()
    }

    /// The intercept's value (of the candidate the model predicts with).
    pub fn intercept(&self) -> f64 {
        self.intercept_of(self.leader())
    }

    fn intercept_of(&self, k: usize) -> f64 {
        self.params.get(INTERCEPT).map_or(0.0, |s| slot(s, k))
    }

    /// The input `x'` a feature with raw value `x` enters the model with (standardized when
    /// configured, from the feature's current statistics).
    pub fn feature_input(&self, name: &str, x: f64) -> f64 {
        match self.params.get(name) {
            Some(s) => optimizer::input_value(&self.config, x, s),
            None => optimizer::input_value(&self.config, x, &ParamState::default()),
        }
    }

    /// The contribution `w * x'` of one feature with candidate `k`'s weight (0 for an unknown
    /// feature).
    #[inline]
    fn term(&self, name: &str, x: f64, k: usize) -> f64 {
        if name == INTERCEPT {
            return 0.0;
        }
        match self.params.get(name) {
            Some(s) => contribution(slot(s, k), optimizer::input_value(&self.config, x, s)),
            None => 0.0,
        }
    }

    /// Raw model output before the link: intercept + sum_i w_i * x_i' (x' standardized when
    /// configured). Unknown features count as weight 0; a feature named [`INTERCEPT`] is
    /// ignored. The sum runs in feature-name order whatever the order of `features`, so the
    /// result is bit-identical to the learner's own; it allocates only when `features` is not
    /// already sorted by name (an [`Example`]'s features are).
    pub fn margin(&self, features: &[(String, f64)]) -> f64 {
        self.margin_of(features, self.leader())
    }

    /// [`Learner::margin`] with candidate `k`'s weights.
    fn margin_of(&self, features: &[(String, f64)], k: usize) -> f64 {
        let mut sum = sat(self.intercept_of(k), VALUE_MAX);
        if is_sorted_by_name(features) {
            for (name, x) in features {
                sum += self.term(name, *x, k);
            }
        } else {
            let mut sorted: Vec<&(String, f64)> = features.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            for (name, x) in sorted {
                sum += self.term(name, *x, k);
            }
        }
        sat(sum, TERM_MAX)
    }

    /// The link applied to a margin.
    #[inline]
    fn link(&self, margin: f64) -> f64 {
        match self.kind {
            ModelKind::Linear => margin,
            ModelKind::Logistic => sigmoid(margin),
        }
    }

    /// Prediction: the margin for linear, sigmoid(margin) for logistic (numerically stable).
    /// Unknown features count as 0 weight. Never NaN or infinite.
    pub fn predict(&self, features: &[(String, f64)]) -> f64 {
        self.link(self.margin(features))
    }

    /// Per-feature contributions w_i * x_i' (for explain), in the given order, plus the
    /// intercept as the last entry (named [`INTERCEPT`]). Their sum in feature-name order is
    /// the margin.
    pub fn contributions(&self, features: &[(String, f64)]) -> Vec<(String, f64)> {
        let mut out = Vec::with_capacity(features.len() + 1);
        let k = self.leader();
        for (name, x) in features {
            if name != INTERCEPT {
                out.push((name.clone(), self.term(name, *x, k)));
            }
        }
        out.push((INTERCEPT.to_string(), sat(self.intercept(), VALUE_MAX)));
        out
    }

    /// The base learning rate the next step will use: `learning_rate / (examples_seen + 1)^power_t`
    /// for SGD with the `invscaling` schedule, `learning_rate` otherwise.
    pub fn current_learning_rate(&self) -> f64 {
        let c = &self.config;
        match (c.optimizer, c.lr_schedule) {
            (OptimizerKind::Sgd, LrSchedule::Invscaling) => {
                let t = self.examples_seen.max(0) as f64;
                c.learning_rate / (t + 1.0).powf(c.power_t)
            }
            _ => c.learning_rate,
        }
    }

    /// The learning rate the next step uses: the scheduled rate times the drift multiplier.
    pub fn effective_learning_rate(&self) -> f64 {
        self.current_learning_rate() * self.drift.lr_multiplier
    }

    /// The model-level state to persist next to `examples_seen`: every number in it finite
    /// ([`drift::DriftState::sanitized`]), so its JSON always reads back.
    pub fn model_state(&self) -> ModelState {
        ModelState {
            drift: self.drift.sanitized(),
            race: self.race.sanitized(),
        }
    }

    pub fn restore_model_state(&mut self, state: ModelState) {
        self.drift = state.drift;
        self.race = state.race;
    }

    /// Drifts detected since the last call.
    pub fn take_drift_events(&mut self) -> Vec<drift::DriftEvent> {
        std::mem::take(&mut self.drift_events)
    }

    /// Names of the parameters an example touches (the intercept, then its features in name
    /// order), for callers that load state lazily.
    pub fn touched_parameters(example: &Example) -> impl Iterator<Item = &str> {
        std::iter::once(INTERCEPT).chain(example.features().iter().map(|(n, _)| n.as_str()))
    }

    /// Prequential step: predict with the current state, compute the loss of that prediction
    /// (squared error (p-y)^2 for linear, log loss with p clamped to [1e-15, 1-1e-15] for
    /// logistic), THEN update every touched parameter (the intercept and each feature of the
    /// example) one example at a time, then update standardization stats, then
    /// examples_seen += 1. Returns the loss measured before the update and the effective base
    /// learning rate used.
    ///
    /// The gradient w.r.t. the margin is `weight * (p - y)` for both kinds (the linear objective
    /// being `0.5 * (p - y)^2`). See [`Learner::try_learn`] for the checks; an example that fails
    /// them (possible only by setting its public `label` or `weight` to a value
    /// [`Example::new`] rejects, or a logistic label outside [0, 1]) is not learned: the state
    /// is left unchanged and the returned loss is NaN. Callers handling untrusted labels should
    /// use [`validate_label`] or `try_learn`.
    pub fn learn(&mut self, example: &Example) -> Step {
        match self.try_learn(example) {
            Ok(step) => step,
            Err(_) => Step {
                prediction: self.predict(example.features()),
                loss: f64::NAN,
                learning_rate: self.effective_learning_rate(),
            },
        }
    }

    /// [`Learner::learn`], first checking the example's label for the model kind
    /// ([`validate_label`]) and its weight (finite, > 0); on error nothing changes.
    pub fn try_learn(&mut self, example: &Example) -> Result<Step, ExampleError> {
        validate_label(self.kind, example.label)?;
        if !(example.weight.is_finite() && example.weight > 0.0) {
            return Err(ExampleError::InvalidWeight {
                value: example.weight,
            });
        }
        let features = example.features();
        let leader = self.leader();
        let prediction = self.predict(features);
        let step_loss = loss(self.kind, prediction, example.label);
        // Drift is judged on the loss before learning; an adaptation applies from this example.
        if let Some(event) = self
            .drift
            .observe(step_loss, self.examples_seen, &self.config.drift)
        {
            match event.adaptation {
                drift::Adaptation::None => {}
                // FTRL's per-coordinate rates are derived from its own sums, which assume a
                // fixed alpha: a varying rate would corrupt z, so FTRL records the drift only
                // (use `reset` to restart its rates).
                drift::Adaptation::Boost if self.config.optimizer != OptimizerKind::Ftrl => {
                    self.drift.lr_multiplier = self.config.drift.boost_factor;
                }
                drift::Adaptation::Boost => {}
                drift::Adaptation::Reset => {
                    for (name, state) in self.params.iter_mut() {
                        reset_state(&self.config, state, name == INTERCEPT);
                    }
                    self.reset_happened = true;
                }
            }
            self.drift_events.push(drift::DriftEvent {
                lr_multiplier: self.drift.lr_multiplier,
                ..event
            });
        }
        let lr = self.effective_learning_rate();
        let mut step_rate = lr;
        if self.config.optimizer == OptimizerKind::Auto {
            self.learn_race(example, lr);
            step_rate = lr * AUTO_RATE_FACTORS[leader];
        } else {
            let residual = sat(example.weight * (prediction - example.label), GRAD_MAX);
            let (lr_intercept, lr_weights) = self.step_rates(lr, features, example.weight);
            self.update(INTERCEPT, None, residual, lr_intercept);
            for (name, x) in features {
                self.update(name, Some(*x), residual, lr_weights);
            }
        }
        if self.config.center_target && self.kind == ModelKind::Linear {
            self.follow_target_mean(example.label);
        }
        self.examples_seen = self.examples_seen.saturating_add(1);
        self.drift.decay(&self.config.drift);
        Ok(Step {
            prediction,
            loss: step_loss,
            learning_rate: step_rate,
        })
    }

    /// The `auto` race's update: every candidate predicts with its own weights, learns the
    /// example at its own rate (`lr` times its factor, with the safe step and intercept boost
    /// of SGD) from its own residual, and its loss enters the ranking.
    fn learn_race(&mut self, example: &Example, lr: f64) {
        let features = example.features();
        let predictions = [0, 1, 2].map(|k| self.link(self.margin_of(features, k)));
        let residuals = predictions.map(|p| sat(example.weight * (p - example.label), GRAD_MAX));
        let rates = AUTO_RATE_FACTORS.map(|f| self.step_rates(lr * f, features, example.weight));
        let (intercept_rates, weight_rates) = (rates.map(|r| r.0), rates.map(|r| r.1));
        self.update_race(INTERCEPT, None, residuals, intercept_rates);
        for (name, x) in features {
            self.update_race(name, Some(*x), residuals, weight_rates);
        }
        self.race
            .observe(predictions.map(|p| race_loss(self.kind, p, example.label)));
    }

    fn update_race(&mut self, name: &str, x: Option<f64>, residuals: [f64; 3], lrs: [f64; 3]) {
        let state = self.params.entry(name.to_owned()).or_default();
        optimizer::step_param_race(&self.config, lrs, state, x, residuals);
    }

    /// The rates of this step for the intercept and for the weights, from the base rate `lr`:
    /// the intercept boost (every optimizer but FTRL, whose closed form assumes a fixed rate per
    /// coordinate), then, for SGD with `safe_step`, both scaled down so that the step cannot
    /// carry the prediction past the label (see [`LearnerConfig::safe_step`]).
    fn step_rates(&self, lr: f64, features: &[(String, f64)], weight: f64) -> (f64, f64) {
        let c = &self.config;
        let mut lr_intercept = lr;
        if c.intercept_boost > 1.0 && c.optimizer != OptimizerKind::Ftrl {
            let t = self.param(INTERCEPT).count.max(0) as f64;
            let decay = (-t / c.intercept_boost_half_life).exp2();
            lr_intercept = lr * (1.0 + (c.intercept_boost - 1.0) * decay);
        }
        let sgd = matches!(c.optimizer, OptimizerKind::Sgd | OptimizerKind::Auto);
        if !(c.safe_step && sgd) {
            return (lr_intercept, lr);
        }
        // A feature named like the intercept is ignored by the margin, and so here.
        let norm2: f64 = features
            .iter()
            .filter(|(name, _)| name != INTERCEPT)
            .map(|(name, x)| {
                let x_prime = self.feature_input(name, *x);
                sat(x_prime * x_prime, f64::MAX)
            })
            .sum();
        // How far one unit of residual moves the margin; the margin's slope is at most 1
        // (linear) or 1/4 (logistic), so the step stays below the label's distance.
        let reach = sat((lr_intercept + lr * norm2) * weight, f64::MAX);
        let bound = match self.kind {
            ModelKind::Linear => 1.0,
            ModelKind::Logistic => 4.0,
        };
        if reach > bound {
            let scale = bound / reach;
            (lr_intercept * scale, lr * scale)
        } else {
            (lr_intercept, lr)
        }
    }

    /// `center_target`: the intercept's `mean`/`m2` (unused by the intercept otherwise) hold the
    /// running mean and squared deviations of the label; the intercept starts at the first label
    /// and then moves with the mean, on top of its own SGD step. Called after the update, when the
    /// intercept's count includes this example.
    fn follow_target_mean(&mut self, label: f64) {
        let state = self
            .params
            .get_mut(INTERCEPT)
            .expect("the intercept is updated by every example");
        let t = state.count.max(1);
        let old_mean = if t == 1 { 0.0 } else { state.mean };
        optimizer::welford(state, label, t);
        // The `auto` race's candidates all follow the mean; the others have one weight.
        let candidates = if self.config.optimizer == OptimizerKind::Auto {
            3
        } else {
            1
        };
        let moved = sat(state.mean - old_mean, f64::MAX);
        for k in 0..candidates {
            let value = optimizer::slot_mut(state, k);
            if t == 1 {
                // The first label is the best guess of the level there is.
                *value = sat(label, VALUE_MAX);
            } else {
                *value = sat(*value + moved, VALUE_MAX);
            }
        }
    }

    fn update(&mut self, name: &str, x: Option<f64>, residual: f64, lr: f64) {
        if !self.params.contains_key(name) {
            self.params.insert(name.to_owned(), ParamState::default());
        }
        let state = self
            .params
            .get_mut(name)
            .expect("parameter inserted just above");
        optimizer::step_param(&self.config, lr, state, x, residual);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    }

    /// Plain SGD (the old defaults: no safe step, no centring, no intercept boost).
    fn sgd(standardize: bool) -> LearnerConfig {
        LearnerConfig {
            optimizer: OptimizerKind::Sgd,
            learning_rate: 0.1,
            standardize,
            ..LearnerConfig::legacy()
        }
    }

    #[test]
    fn new_default_steps_by_hand() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        let cfg = LearnerConfig {
            optimizer: OptimizerKind::Sgd,
            learning_rate: 0.1,
            standardize: false,
            intercept_boost: 10.0,
            ..LearnerConfig::default()
        };
        // Linear, first example: the safe step bounds the reach (1 + 0.1 * 10) * 1 = 2 to 1,
        // so both rates halve; then the intercept jumps to the first label.
        let mut l = Learner::new(ModelKind::Linear, cfg.clone());
        let e = Example::new(f(&[("a", 3.0), ("b", -1.0)]), 50.0, 1.0).unwrap();
        l.learn(&e);
        assert!(
            close(l.param("a").value, 0.05 * 50.0 * 3.0),
            "{}",
            l.param("a").value
        );
        assert!(close(l.param("b").value, -(0.05 * 50.0)));
        let b = l.param(INTERCEPT);
        assert_eq!((b.value, b.mean, b.count), (50.0, 50.0, 1));
        // Second example: the intercept's boosted rate is 0.1 * (1 + 9 * 0.5^(1/100)); the
        // reach stays below 1 for a tiny feature, so the rates are as scheduled; the intercept
        // also moves with the label mean (50 -> 51).
        let e = Example::new(f(&[("a", 0.001)]), 52.0, 1.0).unwrap();
        let p = l.predict(e.features());
        let lr_b = 0.1 * (1.0 + 9.0 * 0.5f64.powf(1.0 / 100.0));
        l.learn(&e);
        let want = 50.0 - lr_b * (p - 52.0) + 1.0;
        assert!(close(l.param(INTERCEPT).value, want));
        assert_eq!(l.param(INTERCEPT).mean, 51.0);
        // Logistic: no centring (the intercept's statistics stay 0), bound 4.
        let mut l = Learner::new(ModelKind::Logistic, cfg);
        let e = Example::new(f(&[("a", 30.0)]), 1.0, 1.0).unwrap();
        l.learn(&e);
        // reach = (1.0 + 0.1 * 900) = 91 > 4: rates scaled by 4/91; residual 0.5 - 1.
        let scale = 4.0 / (1.0 + 0.1 * 900.0);
        assert!(close(l.param(INTERCEPT).value, 1.0 * scale * 0.5));
        assert!(close(l.param("a").value, 0.1 * scale * 0.5 * 30.0));
        assert_eq!(l.param(INTERCEPT).mean, 0.0);
    }

    /// A stream with a concept that flips halfway, features on different scales, some absent.
    fn flipping_stream(kind: ModelKind, n: usize) -> Vec<Example> {
        (0..n)
            .map(|i| {
                let a = ((i * 37 % 101) as f64 - 50.0) / 10.0;
                let b = ((i * 53 % 97) as f64) * 100.0;
                let sign = if i < n / 2 { 1.0 } else { -1.0 };
                let z = sign * (a - (b - 4800.0) / 2000.0) + 0.3 * ((i * 17 % 13) as f64 - 6.0);
                let label = match kind {
                    ModelKind::Linear => 40.0 + z,
                    ModelKind::Logistic => f64::from(u8::from(z > 0.0)),
                };
                let mut features = vec![("a".to_string(), a), ("b".to_string(), b)];
                if i % 3 == 0 {
                    features.push(("c".to_string(), 1.0));
                }
                Example::new(features, label, 1.0 + (i % 2) as f64 * 0.5).unwrap()
            })
            .collect()
    }

    #[test]
    fn auto_candidates_are_sgd_at_their_rates_and_the_leader_predicts() {
        for kind in [ModelKind::Linear, ModelKind::Logistic] {
            let mut cfg = LearnerConfig {
                optimizer: OptimizerKind::Auto,
                l2: 1e-3,
                ..LearnerConfig::default()
            };
            // Without drift boosts (driven by the leader's loss) each candidate is exactly SGD.
            cfg.drift.detector = drift::DetectorKind::None;
            let mut auto = Learner::new(kind, cfg.clone());
            let mut sgd: Vec<Learner> = AUTO_RATE_FACTORS
                .iter()
                .map(|f| {
                    let c = LearnerConfig {
                        optimizer: OptimizerKind::Sgd,
                        learning_rate: cfg.learning_rate * f,
                        ..cfg.clone()
                    };
                    Learner::new(kind, c)
                })
                .collect();
            let keep = 0.5f64.powf(1.0 / AUTO_LOSS_HALF_LIFE);
            let mut losses = [0.0f64; 3];
            let mut leaders = [0usize; 3];
            for e in flipping_stream(kind, 3000) {
                let expected_leader =
                    (0..3).fold(0, |b, k| if losses[k] < losses[b] { k } else { b });
                assert_eq!(auto.leader(), expected_leader);
                leaders[expected_leader] += 1;
                let predictions: Vec<f64> = sgd.iter().map(|l| l.predict(e.features())).collect();
                let step = auto.learn(&e);
                assert_eq!(
                    step.prediction.to_bits(),
                    predictions[expected_leader].to_bits()
                );
                assert_eq!(
                    step.learning_rate,
                    cfg.learning_rate * AUTO_RATE_FACTORS[expected_leader]
                );
                for (k, l) in sgd.iter_mut().enumerate() {
                    let s = l.learn(&e);
                    let race = race_loss(kind, s.prediction, e.label);
                    losses[k] = keep * losses[k] + (1.0 - keep) * race;
                }
                for (name, state) in &auto.params {
                    for (k, l) in sgd.iter().enumerate() {
                        let want = l.param(name);
                        assert_eq!(slot(state, k).to_bits(), want.value.to_bits(), "{name} {k}");
                        assert_eq!(
                            (state.count, state.mean.to_bits(), state.m2.to_bits()),
                            (want.count, want.mean.to_bits(), want.m2.to_bits())
                        );
                    }
                }
                assert_eq!(auto.race.losses, losses);
            }
            // The race did change hands on this stream (it flips halfway).
            assert!(
                leaders.iter().filter(|&&n| n > 0).count() >= 2,
                "{kind}: {leaders:?}"
            );
            // The state round-trips through its JSON (as the worker stores it).
            let json = serde_json::to_value(auto.model_state()).unwrap();
            let back: ModelState = serde_json::from_value(json).unwrap();
            assert_eq!(back.race, auto.race);
        }
    }

    #[test]
    fn race_ranking_is_stable_and_sanitized() {
        let mut r = RaceState::default();
        assert_eq!(r.leader(), 0, "ties go to the base rate");
        r.observe([1.0, 0.5, 2.0]);
        assert_eq!(r.leader(), 1);
        r.observe([f64::NAN, f64::INFINITY, 0.0]);
        assert!(r.losses.iter().all(|l| l.is_finite()));
        let bad = RaceState {
            losses: [f64::NAN, -1.0, f64::INFINITY],
        };
        assert_eq!(bad.sanitized().losses, [0.0; 3]);
        // A stored state from before the race reads as all zero.
        let old: ModelState = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(old.race, RaceState::default());
    }

    #[test]
    fn sigmoid_is_stable() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert!(sigmoid(-745.0) >= 0.0);
        assert!((sigmoid(2.0) + sigmoid(-2.0) - 1.0).abs() < 1e-15);
        assert!(!sigmoid(f64::MAX).is_nan() && !sigmoid(-f64::MAX).is_nan());
    }

    #[test]
    fn losses() {
        assert_eq!(loss(ModelKind::Linear, 3.0, 1.0), 4.0);
        assert_eq!(loss(ModelKind::Linear, f64::MAX, -f64::MAX), f64::MAX);
        assert!((loss(ModelKind::Logistic, 0.5, 1.0) - 2f64.ln()).abs() < 1e-15);
        let worst = loss(ModelKind::Logistic, 0.0, 1.0);
        assert!((worst - -(1e-15f64).ln()).abs() < 1e-9);
        assert!(loss(ModelKind::Logistic, 1.0, 1.0) < 1e-14);
    }

    #[test]
    fn first_sgd_step_by_hand() {
        let mut l = Learner::new(ModelKind::Linear, sgd(false));
        let e = Example::new(f(&[("a", 2.0), ("b", -1.0)]), 3.0, 0.5).unwrap();
        let step = l.learn(&e);
        assert_eq!(step.prediction, 0.0);
        assert_eq!(step.loss, 9.0);
        assert_eq!(step.learning_rate, 0.1);
        // residual = 0.5 * (0 - 3) = -1.5
        let close = |a: f64, b: f64| (a - b).abs() < 1e-15;
        assert!(close(l.param(INTERCEPT).value, 0.15));
        assert!(close(l.param("a").value, 0.3));
        assert!(close(l.param("b").value, -0.15));
        assert_eq!(l.param("a").count, 1);
        assert_eq!(l.examples_seen, 1);
        let names: Vec<&str> = Learner::touched_parameters(&e).collect();
        assert_eq!(names, [INTERCEPT, "a", "b"]);
        let p = l.predict(&f(&[("b", -1.0), ("a", 2.0), ("unknown", 5.0)]));
        assert!(close(p, 0.15 + 0.6 + 0.15));
        let c = l.contributions(&f(&[("b", -1.0), ("a", 2.0)]));
        let names: Vec<&str> = c.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "a", INTERCEPT]);
        for ((_, got), want) in c.iter().zip([0.15, 0.6, 0.15]) {
            assert!(close(*got, want));
        }
        // The contributions sum (in name order) to the margin.
        assert_eq!(
            c[2].1 + c[1].1 + c[0].1,
            l.margin(&f(&[("a", 2.0), ("b", -1.0)]))
        );
    }

    #[test]
    fn invscaling_applies_to_sgd_only() {
        let cfg = LearnerConfig {
            lr_schedule: LrSchedule::Invscaling,
            power_t: 0.5,
            ..sgd(false)
        };
        let mut l = Learner::new(ModelKind::Linear, cfg.clone());
        assert_eq!(l.current_learning_rate(), 0.1);
        l.examples_seen = 3;
        assert_eq!(l.current_learning_rate(), 0.05);
        let e = Example::new(f(&[("a", 1.0)]), 1.0, 1.0).unwrap();
        assert_eq!(l.learn(&e).learning_rate, 0.05);
        let mut adam = Learner::new(
            ModelKind::Linear,
            LearnerConfig {
                optimizer: OptimizerKind::Adam,
                ..cfg
            },
        );
        adam.examples_seen = 3;
        assert_eq!(adam.current_learning_rate(), 0.1);
    }

    #[test]
    fn standardization_uses_stats_before_the_example() {
        let mut l = Learner::new(ModelKind::Linear, sgd(true));
        for (x, y) in [(10.0, 1.0), (20.0, 2.0), (30.0, 3.0)] {
            let before = l.param("x");
            let x_prime = standardized_value(true, x, &before);
            let w = before.value;
            let b = l.intercept();
            let p = b + w * x_prime;
            let step = l.learn(&Example::new(f(&[("x", x)]), y, 1.0).unwrap());
            assert_eq!(step.prediction, p);
            assert_eq!(l.param("x").value, w - 0.1 * (p - y) * x_prime);
        }
        let s = l.param("x");
        assert_eq!((s.count, s.mean, s.m2), (3, 20.0, 200.0));
        // mean 20, std 10: x = 40 enters as 2
        assert_eq!(l.feature_input("x", 40.0), 2.0);
    }

    #[test]
    fn invalid_examples_are_not_learned() {
        let mut l = Learner::new(ModelKind::Logistic, LearnerConfig::default());
        let e = Example::new(f(&[("a", 1.0)]), 2.0, 1.0).unwrap();
        assert!(matches!(
            l.try_learn(&e),
            Err(ExampleError::LabelOutOfRange { .. })
        ));
        let step = l.learn(&e);
        assert!(step.loss.is_nan());
        assert!(l.params.is_empty());
        assert_eq!(l.examples_seen, 0);
        let mut e = Example::new(f(&[("a", 1.0)]), 1.0, 1.0).unwrap();
        e.weight = 0.0;
        assert!(l.try_learn(&e).is_err());
        assert!(l.params.is_empty());
    }

    #[test]
    fn margin_is_order_independent_bitwise() {
        let mut l = Learner::new(ModelKind::Linear, LearnerConfig::default());
        let names = ["k", "b", "z", "a", "m", "q"];
        for i in 0..50 {
            let feats: Vec<(String, f64)> = names
                .iter()
                .enumerate()
                .map(|(j, n)| (n.to_string(), ((i * 7 + j * 13) % 17) as f64 * 0.37 - 2.1))
                .collect();
            l.learn(&Example::new(feats, (i % 5) as f64 * 1.1, 1.0).unwrap());
        }
        let feats = f(&[
            ("k", 0.3),
            ("b", 1e-3),
            ("z", 7.7),
            ("a", -1.25),
            ("m", 3.3),
            ("q", 1e5),
        ]);
        let mut sorted = feats.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut reversed = sorted.clone();
        reversed.reverse();
        let p = l.predict(&sorted);
        assert_eq!(p.to_bits(), l.predict(&feats).to_bits());
        assert_eq!(p.to_bits(), l.predict(&reversed).to_bits());
    }
}
