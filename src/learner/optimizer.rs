//! Per-parameter arithmetic: feature standardization, gradient, optimizer step, Welford update.
//!
//! Every function here works on one parameter's [`ParamState`] and nothing else, so the result
//! of an example never depends on the order in which parameters are visited or stored.
//!
//! ## Staying finite
//! Inputs are finite (checked by [`super::Example::new`]) but can be as large as `f64::MAX`, and
//! stored state may come from anywhere. Each intermediate that could overflow is saturated:
//! NaN becomes 0 (no move) and infinities become the bound of its kind below. The bounds are far
//! beyond any meaningful value, so they change nothing in normal use.

use super::config::AUTO_RATE_FACTORS;
use super::{LearnerConfig, OptimizerKind, ParamState};

/// Bound of a parameter value (weight or intercept).
pub const VALUE_MAX: f64 = 1e100;
/// Bound of a gradient (so that `g^2` stays finite).
pub const GRAD_MAX: f64 = 1e100;
/// Bound of a first accumulator (Adam first moment, FTRL `z`).
pub const FIRST_MAX: f64 = 1e250;
/// Bound of a second accumulator (`v`, FTRL `n`, Welford `m2`).
pub const SECOND_MAX: f64 = 1e300;
/// Bound of one contribution `w * x'` and of the margin.
pub const TERM_MAX: f64 = 1e250;

/// Relative size below which a standard deviation counts as zero (`std <= 1e-12 * |mean|`).
pub const STD_REL_MIN: f64 = 1e-12;

/// Clamps `x` to `[-bound, bound]`, mapping NaN to 0.
#[inline]
pub fn sat(x: f64, bound: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(-bound, bound)
    }
}

/// Clamps a non-negative accumulator to `[0, bound]`, mapping NaN to 0.
#[inline]
fn sat_pos(x: f64, bound: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, bound)
    }
}

/// The value a feature enters the model with, given the raw value `x` and the feature's
/// statistics *before* the current example (`count`, `mean`, `m2` of `state`).
///
/// * `standardize` off: `x` itself.
/// * After the feature has varied (`count >= 2` and `std = sqrt(m2 / (count - 1))` greater than
///   `1e-12 * |mean|` and than 0): `(x - mean) / std`.
/// * Before that (its first appearance, or every value so far equal): centering would make the
///   value identically 0 and the weight would never learn, which would silence every sparse
///   indicator feature such as `"country=US": 1` (present with value 1 or absent). So the value
///   is only scaled to unit size: `x / |mean|` once a non-zero mean is known, else `x / |x|`
///   (that is the sign of `x`, and 0 for 0). An indicator thus enters as 1, like the intercept
///   for the examples that carry it. When a constant feature starts to vary, it switches to the
///   standardized form.
///
/// With sparse examples, a present feature whose value equals its running mean contributes 0,
/// like an absent one; the statistics are those of the examples that carry the feature. They are
/// plain running moments (no forgetting, no outlier rejection), so one huge value shifts a
/// feature's mean and inflates its std for a long time.
#[inline]
pub fn standardized_value(standardize: bool, x: f64, state: &ParamState) -> f64 {
    if !standardize {
        return x;
    }
    let mean = state.mean;
    if state.count >= 2 {
        let std = (state.m2 / (state.count - 1) as f64).sqrt();
        if std > 0.0 && std > STD_REL_MIN * mean.abs() {
            // std > 0 also rejects NaN.
            return sat(sat(x - mean, f64::MAX) / std, f64::MAX);
        }
    }
    let scale = if state.count >= 1 && mean != 0.0 && mean.is_finite() {
        mean.abs()
    } else {
        x.abs()
    };
    if scale > 0.0 {
        sat(x / scale, f64::MAX)
    } else {
        0.0
    }
}

/// The input a feature enters the model with under `cfg`: [`standardized_value`], clipped to
/// `[-standardize_clip, standardize_clip]` when standardizing with a clip.
#[inline]
pub fn input_value(cfg: &LearnerConfig, x: f64, state: &ParamState) -> f64 {
    let v = standardized_value(cfg.standardize, x, state);
    if cfg.standardize && cfg.standardize_clip > 0.0 {
        v.clamp(-cfg.standardize_clip, cfg.standardize_clip)
    } else {
        v
    }
}

/// One contribution `w * x'` to the margin, saturated.
#[inline]
pub fn contribution(weight: f64, x_prime: f64) -> f64 {
    sat(weight * x_prime, TERM_MAX)
}

/// Updates one parameter for one example.
///
/// * `x`: the raw feature value, or `None` for the intercept (whose input is 1, which has no
///   regularization and no standardization statistics).
/// * `residual`: `weight * (p - y)`, the example's weighted loss gradient w.r.t. the margin.
/// * `lr`: the base learning rate of this step (`eta_t` for SGD).
///
/// Order: `x'` from the statistics before the example; the gradient
/// `g = residual * x' + l2 * w` (no L2 term for the intercept, nor for FTRL which applies L2 in
/// its closed form), clipped to `[-c, c]` when `clip_gradient > 0`; the optimizer step; then the
/// Welford update of `(count, mean, m2)` with the raw `x` (when standardizing); `count` is
/// incremented in every case (Adam's bias correction uses the new count).
///
/// `auto` goes through [`step_param_race`], every candidate with this same residual (the learner
/// gives each candidate its own residual; this form serves callers with a single one).
pub fn step_param(
    cfg: &LearnerConfig,
    lr: f64,
    state: &mut ParamState,
    x: Option<f64>,
    residual: f64,
) {
    if cfg.optimizer == OptimizerKind::Auto {
        let lrs = AUTO_RATE_FACTORS.map(|f| lr * f);
        return step_param_race(cfg, lrs, state, x, [residual; 3]);
    }
    let is_feature = x.is_some();
    let x_prime = match x {
        Some(x) => input_value(cfg, x, state),
        None => 1.0,
    };
    let mut g = residual * x_prime;
    if is_feature && cfg.l2 > 0.0 && cfg.optimizer != OptimizerKind::Ftrl {
        g += cfg.l2 * state.value;
    }
    g = sat(g, GRAD_MAX);
    if cfg.clip_gradient > 0.0 {
        g = g.clamp(-cfg.clip_gradient, cfg.clip_gradient);
    }
    // The count after this example (a stored negative count is treated as 0).
    let t = state.count.max(0).saturating_add(1);

    match cfg.optimizer {
        // `auto` returned above.
        OptimizerKind::Sgd | OptimizerKind::Auto => {
            move_value(state, lr * g);
        }
        OptimizerKind::Adagrad => {
            state.v = sat_pos(state.v + g * g, SECOND_MAX);
            move_value(state, lr * g / (state.v.sqrt() + cfg.epsilon));
        }
        OptimizerKind::Rmsprop => {
            state.v = sat_pos(cfg.rho * state.v + (1.0 - cfg.rho) * g * g, SECOND_MAX);
            move_value(state, lr * g / (state.v.sqrt() + cfg.epsilon));
        }
        OptimizerKind::Adam => {
            state.m = sat(cfg.beta1 * state.m + (1.0 - cfg.beta1) * g, FIRST_MAX);
            state.v = sat_pos(cfg.beta2 * state.v + (1.0 - cfg.beta2) * g * g, SECOND_MAX);
            let tf = t as f64;
            let m_hat = state.m / (1.0 - cfg.beta1.powf(tf));
            let v_hat = state.v / (1.0 - cfg.beta2.powf(tf));
            move_value(state, lr * m_hat / (v_hat.sqrt() + cfg.epsilon));
        }
        OptimizerKind::Ftrl => {
            let (l1, l2) = if is_feature {
                (cfg.l1, cfg.l2)
            } else {
                (0.0, 0.0)
            };
            let n = state.v;
            let n_new = sat_pos(n + g * g, SECOND_MAX);
            let sigma = sat((n_new.sqrt() - n.max(0.0).sqrt()) / lr, f64::MAX);
            state.m = sat(state.m + sat(g - sigma * state.value, f64::MAX), FIRST_MAX);
            state.v = n_new;
            let z = state.m;
            state.value = if z.abs() <= l1 {
                0.0
            } else {
                let denominator = (cfg.ftrl_beta + n_new.sqrt()) / lr + l2;
                if denominator > 0.0 {
                    sat(-(z - z.signum() * l1) / denominator, VALUE_MAX)
                } else {
                    0.0
                }
            };
        }
    }

    if let Some(x) = x {
        if cfg.standardize {
            welford(state, x, t);
        }
    }
    state.count = t;
}

/// The weight of candidate `k` of the `auto` race: slot 0 is `value`, 1 is `m`, 2 is `v`. For
/// every other optimizer only slot 0 is a weight.
#[inline]
pub fn slot(state: &ParamState, k: usize) -> f64 {
    match k {
        1 => state.m,
        2 => state.v,
        _ => state.value,
    }
}

#[inline]
pub(super) fn slot_mut(state: &mut ParamState, k: usize) -> &mut f64 {
    match k {
        1 => &mut state.m,
        2 => &mut state.v,
        _ => &mut state.value,
    }
}

/// The `auto` race's step of one parameter: candidate `k` (its weight in [`slot`] `k`) takes a
/// plain SGD step at rate `lrs[k]` with its own residual `residuals[k]`, with L2 and clipping
/// as in [`step_param`]; `x'` comes from the shared statistics before the example, which are
/// then updated once.
pub fn step_param_race(
    cfg: &LearnerConfig,
    lrs: [f64; 3],
    state: &mut ParamState,
    x: Option<f64>,
    residuals: [f64; 3],
) {
    let x_prime = match x {
        Some(x) => input_value(cfg, x, state),
        None => 1.0,
    };
    for k in 0..3 {
        let w = slot(state, k);
        let mut g = residuals[k] * x_prime;
        if x.is_some() && cfg.l2 > 0.0 {
            g += cfg.l2 * w;
        }
        g = sat(g, GRAD_MAX);
        if cfg.clip_gradient > 0.0 {
            g = g.clamp(-cfg.clip_gradient, cfg.clip_gradient);
        }
        let step = sat(lrs[k] * g, f64::MAX);
        *slot_mut(state, k) = sat(w - step, VALUE_MAX);
    }
    let t = state.count.max(0).saturating_add(1);
    if let Some(x) = x {
        if cfg.standardize {
            welford(state, x, t);
        }
    }
    state.count = t;
}

/// `w -= step`, ignoring a NaN step and saturating the result.
#[inline]
fn move_value(state: &mut ParamState, step: f64) {
    let step = sat(step, f64::MAX);
    state.value = sat(state.value - step, VALUE_MAX);
}

/// Welford's update of the running mean and sum of squared deviations with raw value `x`, `t`
/// being the count including `x`.
#[inline]
pub(super) fn welford(state: &mut ParamState, x: f64, t: i64) {
    let mean = if state.mean.is_finite() {
        state.mean
    } else {
        0.0
    };
    let delta = sat(x - mean, f64::MAX);
    let new_mean = sat(mean + delta / t as f64, f64::MAX);
    let delta2 = sat(x - new_mean, f64::MAX);
    state.mean = new_mean;
    state.m2 = sat_pos(state.m2 + delta * delta2, SECOND_MAX);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learner::LrSchedule;

    fn cfg(optimizer: OptimizerKind) -> LearnerConfig {
        LearnerConfig {
            optimizer,
            learning_rate: 0.1,
            lr_schedule: LrSchedule::Constant,
            standardize: false,
            ..LearnerConfig::default()
        }
    }

    #[test]
    fn sgd_step() {
        let c = cfg(OptimizerKind::Sgd);
        let mut s = ParamState {
            value: 1.0,
            ..Default::default()
        };
        step_param(&c, 0.1, &mut s, Some(2.0), 0.5);
        // g = 0.5 * 2 = 1
        assert_eq!(s.value, 1.0 - 0.1);
        assert_eq!(s.count, 1);
        assert_eq!((s.mean, s.m2), (0.0, 0.0));
        // l2 for features, not for the intercept
        let c = LearnerConfig { l2: 1.0, ..c };
        let mut s = ParamState {
            value: 1.0,
            ..Default::default()
        };
        step_param(&c, 0.1, &mut s, Some(0.0), 0.5);
        assert_eq!(s.value, 1.0 - 0.1 * 1.0);
        let mut s = ParamState {
            value: 1.0,
            ..Default::default()
        };
        step_param(&c, 0.1, &mut s, None, 0.5);
        assert_eq!(s.value, 1.0 - 0.1 * 0.5);
    }

    #[test]
    fn adagrad_rmsprop_steps() {
        let mut s = ParamState::default();
        step_param(&cfg(OptimizerKind::Adagrad), 0.1, &mut s, Some(1.0), 2.0);
        assert_eq!(s.v, 4.0);
        assert_eq!(s.value, -0.1 * 2.0 / (2.0 + 1e-8));
        let mut s = ParamState::default();
        step_param(&cfg(OptimizerKind::Rmsprop), 0.1, &mut s, Some(1.0), 2.0);
        assert!((s.v - 0.4).abs() < 1e-15);
        assert!((s.value - -0.1 * 2.0 / (0.4f64.sqrt() + 1e-8)).abs() < 1e-15);
    }

    #[test]
    fn adam_first_step_is_about_lr() {
        let mut s = ParamState::default();
        step_param(&cfg(OptimizerKind::Adam), 0.1, &mut s, Some(3.0), 7.0);
        assert!((s.value + 0.1).abs() < 1e-9, "{}", s.value);
        assert_eq!(s.count, 1);
        // A second, opposite gradient uses the count for the bias correction.
        step_param(&cfg(OptimizerKind::Adam), 0.1, &mut s, Some(-3.0), 7.0);
        assert_eq!(s.count, 2);
        let m = 0.9 * 0.1 * 21.0 + 0.1 * -21.0;
        let v = 0.999 * 0.001 * 441.0 + 0.001 * 441.0;
        let expect = -0.1 * 21.0 / (441.0f64.sqrt() + 1e-8)
            - 0.1 * (m / (1.0 - 0.81)) / ((v / (1.0 - 0.999f64.powi(2))).sqrt() + 1e-8);
        assert!(
            (s.value - expect).abs() < 1e-12,
            "{} vs {}",
            s.value,
            expect
        );
    }

    #[test]
    fn ftrl_l1_gives_exact_zeros() {
        let c = LearnerConfig {
            l1: 10.0,
            ..cfg(OptimizerKind::Ftrl)
        };
        let mut s = ParamState::default();
        step_param(&c, 0.1, &mut s, Some(1.0), 1.0);
        assert_eq!(s.value, 0.0);
        assert_eq!(s.m, 1.0); // z = g - sigma * 0
        assert_eq!(s.v, 1.0);
        // the intercept ignores l1
        let mut s = ParamState::default();
        step_param(&c, 0.1, &mut s, None, 1.0);
        assert!(s.value < 0.0);
        assert_eq!(s.value, -1.0 / ((1.0 + 1.0) / 0.1));
    }

    #[test]
    fn welford_matches_two_pass() {
        let c = LearnerConfig {
            standardize: true,
            ..cfg(OptimizerKind::Sgd)
        };
        let xs = [3.0, 5.0, -2.0, 10.0, 4.5];
        let mut s = ParamState::default();
        for x in xs {
            step_param(&c, 0.0, &mut s, Some(x), 0.0);
        }
        let mean = xs.iter().sum::<f64>() / 5.0;
        let m2: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
        assert_eq!(s.count, 5);
        assert!((s.mean - mean).abs() < 1e-12);
        assert!((s.m2 - m2).abs() < 1e-9);
    }

    #[test]
    fn standardization_warm_up() {
        let s0 = ParamState::default();
        assert_eq!(standardized_value(true, 250.0, &s0), 1.0);
        assert_eq!(standardized_value(true, -3.0, &s0), -1.0);
        assert_eq!(standardized_value(true, 0.0, &s0), 0.0);
        assert_eq!(standardized_value(false, 250.0, &s0), 250.0);
        // one observation of 100: scaled by |mean|
        let s1 = ParamState {
            count: 1,
            mean: 100.0,
            ..Default::default()
        };
        assert_eq!(standardized_value(true, 150.0, &s1), 1.5);
        // an indicator seen many times with value 1 enters as 1
        let s_ind = ParamState {
            count: 1000,
            mean: 1.0,
            ..Default::default()
        };
        assert_eq!(standardized_value(true, 1.0, &s_ind), 1.0);
        // a varying feature is standardized
        let s = ParamState {
            count: 3,
            mean: 10.0,
            m2: 8.0,
            ..Default::default()
        };
        assert_eq!(standardized_value(true, 14.0, &s), 2.0);
    }
}
