//! Concept-drift detection over the prequential loss stream, and the adaptation it triggers.
//!
//! Two detectors, as published:
//! * Page-Hinkley (Page 1954): the cumulative deviation `m_T = sum(x_t - mean_t - delta)` of the
//!   loss from its running mean (with the forgetting factor `alpha` of the usual streaming
//!   form); drift when `m_T - min_t m_t > lambda`, i.e. the loss rose by more than `delta`
//!   long enough. It is reset after an alarm.
//! * ADWIN (Bifet & Gavalda 2007, ADWIN2): an adaptive window kept as an exponential histogram
//!   of buckets; every `clock` examples each split of the window into an older and a newer part
//!   is tested, and while the two means differ by more than
//!   `eps = sqrt(2/m * var * ln(2/delta')) + 2/(3m) * ln(2/delta')` (m the harmonic mean of the
//!   two sizes, delta' = delta / n) the older part is dropped. A drop where the newer part has
//!   the higher mean loss is a drift (a drop where it is lower is learning, not drift).
//!
//! All state is plain data (serde), persisted with the model so a restarted or second worker
//! continues the same detectors.
//!
//! ## Staying finite
//! A loss can be as large as `f64::MAX` (a linear model and a label of 1e300), and the detectors
//! sum and square losses: unbounded, their state would overflow to infinity, which JSON cannot
//! hold (serde_json writes `null`, which then cannot be read back as a number). So each loss is
//! clamped to [`LOSS_MAX`] before a detector sees it, which keeps every sum and square finite
//! for any window a model can reach; [`DriftState::sanitized`] clamps stored state that comes
//! from anywhere else.

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// The largest loss a drift detector takes in (larger ones count as this much): its square times
/// any window size below 2^63 stays finite.
pub const LOSS_MAX: f64 = 1e100;

/// Bound of any stored detector sum (far beyond what [`LOSS_MAX`] lets them reach).
const STATE_MAX: f64 = 1e300;

/// `x` clamped to `[-bound, bound]`, NaN as 0.
fn finite(x: f64, bound: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(-bound, bound)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    None,
    PageHinkley,
    Adwin,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Adaptation {
    /// Only record the drift event.
    None,
    /// Multiply the learning rate by `boost_factor`, decaying back to 1 with `boost_half_life`.
    Boost,
    /// Reset the optimizer's accumulated state (AdaGrad/RMSprop/Adam denominators, Adam's
    /// momentum; FTRL's `n`, with `z` recomputed so the weights are kept).
    Reset,
}

/// Drift settings of a model (part of its learner settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftConfig {
    pub detector: DetectorKind,
    pub adaptation: Adaptation,
    /// Page-Hinkley: tolerated rise of the loss.
    pub ph_delta: f64,
    /// Page-Hinkley: alarm threshold on the cumulative rise.
    pub ph_lambda: f64,
    /// Page-Hinkley: forgetting factor of the cumulative sum, in (0, 1].
    pub ph_alpha: f64,
    /// Page-Hinkley: examples before it may alarm (after start or reset).
    pub ph_min_instances: i64,
    /// ADWIN: confidence; smaller is more conservative.
    pub adwin_delta: f64,
    /// ADWIN: test the window every this many examples.
    pub adwin_clock: i64,
    /// ADWIN: buckets of each size kept before two are merged.
    pub adwin_max_buckets: usize,
    /// ADWIN: neither part of a split may be smaller than this.
    pub adwin_min_part: i64,
    /// Boost: learning-rate multiplier right after a drift.
    pub boost_factor: f64,
    /// Boost: examples for the multiplier's excess over 1 to halve.
    pub boost_half_life: f64,
}

impl Default for DriftConfig {
    /// ADWIN on (delta 0.002, checked every 32 examples, 5 buckets per size): its cut is
    /// computed from the window's own variance, so it needs no tuning to the scale of a model's
    /// loss. Page-Hinkley is available with its published defaults (delta 0.005, lambda 50, alpha
    /// 0.9999, 30 warm-up examples), but its threshold is in units of the loss itself: on an
    /// unscaled linear model (squared errors in the hundreds) it fires constantly (measured: 542
    /// alarms in 20,000 stationary examples, against 9 for ADWIN), so set `ph_lambda` for your
    /// loss before turning it on. On drift the learning rate is tripled and decays back with a
    /// half-life of 200 examples, which re-learns an abrupt change faster (see tests/it/drift.rs).
    fn default() -> Self {
        DriftConfig {
            detector: DetectorKind::Adwin,
            adaptation: Adaptation::Boost,
            ph_delta: 0.005,
            ph_lambda: 50.0,
            ph_alpha: 0.9999,
            ph_min_instances: 30,
            adwin_delta: 0.002,
            adwin_clock: 32,
            adwin_max_buckets: 5,
            adwin_min_part: 32,
            boost_factor: 3.0,
            boost_half_life: 200.0,
        }
    }
}

impl DriftConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad =
            |field: &'static str, message: String| Err(ConfigError::Invalid { field, message });
        let finite = |x: f64| x.is_finite();
        if !(finite(self.ph_delta) && self.ph_delta >= 0.0) {
            return bad(
                "drift.ph_delta",
                format!("must be a finite number >= 0, got {}", self.ph_delta),
            );
        }
        if !(finite(self.ph_lambda) && self.ph_lambda > 0.0) {
            return bad(
                "drift.ph_lambda",
                format!("must be a finite number > 0, got {}", self.ph_lambda),
            );
        }
        if !(finite(self.ph_alpha) && self.ph_alpha > 0.0 && self.ph_alpha <= 1.0) {
            return bad(
                "drift.ph_alpha",
                format!("must be in (0, 1], got {}", self.ph_alpha),
            );
        }
        if self.ph_min_instances < 1 {
            return bad(
                "drift.ph_min_instances",
                format!("must be >= 1, got {}", self.ph_min_instances),
            );
        }
        if !(finite(self.adwin_delta) && self.adwin_delta > 0.0 && self.adwin_delta < 1.0) {
            return bad(
                "drift.adwin_delta",
                format!("must be in (0, 1), got {}", self.adwin_delta),
            );
        }
        if self.adwin_clock < 1 {
            return bad(
                "drift.adwin_clock",
                format!("must be >= 1, got {}", self.adwin_clock),
            );
        }
        if !(2..=64).contains(&self.adwin_max_buckets) {
            return bad(
                "drift.adwin_max_buckets",
                format!("must be in 2..=64, got {}", self.adwin_max_buckets),
            );
        }
        if self.adwin_min_part < 1 {
            return bad(
                "drift.adwin_min_part",
                format!("must be >= 1, got {}", self.adwin_min_part),
            );
        }
        if !(finite(self.boost_factor) && self.boost_factor >= 1.0 && self.boost_factor <= 100.0) {
            return bad(
                "drift.boost_factor",
                format!("must be in [1, 100], got {}", self.boost_factor),
            );
        }
        if !(finite(self.boost_half_life) && self.boost_half_life > 0.0) {
            return bad(
                "drift.boost_half_life",
                format!("must be a finite number > 0, got {}", self.boost_half_life),
            );
        }
        Ok(())
    }
}

/// Page-Hinkley state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PageHinkley {
    pub n: i64,
    pub mean: f64,
    pub sum: f64,
    pub min: f64,
}

impl PageHinkley {
    /// Adds one loss; returns the statistic `m_T - M_T` when it crosses `lambda` (then resets).
    pub fn observe(&mut self, x: f64, cfg: &DriftConfig) -> Option<f64> {
        self.n += 1;
        self.mean += (x - self.mean) / self.n as f64;
        self.sum = cfg.ph_alpha * self.sum + (x - self.mean - cfg.ph_delta);
        if self.n == 1 || self.sum < self.min {
            self.min = self.sum;
        }
        let statistic = self.sum - self.min;
        if self.n >= cfg.ph_min_instances && statistic > cfg.ph_lambda {
            *self = PageHinkley::default();
            return Some(statistic);
        }
        None
    }
}

/// One ADWIN bucket: `n` losses (a power of two), their total and sum of squared deviations.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub n: i64,
    pub total: f64,
    pub m2: f64,
}

impl Bucket {
    fn merge(a: Bucket, b: Bucket) -> Bucket {
        let n = a.n + b.n;
        let (ma, mb) = (a.total / a.n as f64, b.total / b.n as f64);
        let d = ma - mb;
        Bucket {
            n,
            total: a.total + b.total,
            m2: a.m2 + b.m2 + d * d * (a.n as f64) * (b.n as f64) / n as f64,
        }
    }
}

/// ADWIN state: buckets from oldest to newest (sizes non-increasing), and a clock.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Adwin {
    pub buckets: Vec<Bucket>,
    pub ticks: i64,
}

impl Adwin {
    pub fn width(&self) -> i64 {
        self.buckets.iter().map(|b| b.n).sum()
    }

    pub fn mean(&self) -> f64 {
        let n = self.width();
        if n == 0 {
            0.0
        } else {
            self.buckets.iter().map(|b| b.total).sum::<f64>() / n as f64
        }
    }

    /// Adds one loss; returns `(|mean_new - mean_old|, eps)` of the first cut when the window
    /// shrank because the newer part's loss is higher (a drift).
    pub fn observe(&mut self, x: f64, cfg: &DriftConfig) -> Option<(f64, f64)> {
        self.buckets.push(Bucket {
            n: 1,
            total: x,
            m2: 0.0,
        });
        self.compress(cfg.adwin_max_buckets);
        self.ticks += 1;
        if self.ticks % cfg.adwin_clock != 0 {
            return None;
        }
        let mut drift = None;
        while let Some((diff, eps, newer_higher)) = self.find_cut(cfg) {
            self.buckets.remove(0);
            if newer_higher && drift.is_none() {
                drift = Some((diff, eps));
            }
        }
        drift
    }

    fn compress(&mut self, max: usize) {
        let mut size = 1;
        loop {
            let first = self.buckets.iter().position(|b| b.n == size);
            let Some(first) = first else { break };
            let count = self.buckets[first..]
                .iter()
                .take_while(|b| b.n == size)
                .count();
            if count <= max {
                break;
            }
            let merged = Bucket::merge(self.buckets[first], self.buckets[first + 1]);
            self.buckets[first] = merged;
            self.buckets.remove(first + 1);
            size *= 2;
        }
    }

    /// The oldest split whose two parts differ significantly: (difference, eps, newer higher).
    fn find_cut(&self, cfg: &DriftConfig) -> Option<(f64, f64, bool)> {
        let n = self.width();
        if n < 2 * cfg.adwin_min_part {
            return None;
        }
        let total: f64 = self.buckets.iter().map(|b| b.total).sum();
        let window = self.buckets.iter().fold(None, |acc: Option<Bucket>, b| {
            Some(match acc {
                None => *b,
                Some(a) => Bucket::merge(a, *b),
            })
        })?;
        let variance = window.m2 / n as f64;
        let ln = (2.0 * n as f64 / cfg.adwin_delta).ln();
        let (mut n0, mut s0) = (0i64, 0.0);
        for b in &self.buckets[..self.buckets.len() - 1] {
            n0 += b.n;
            s0 += b.total;
            let n1 = n - n0;
            if n0 < cfg.adwin_min_part || n1 < cfg.adwin_min_part {
                continue;
            }
            let (mean0, mean1) = (s0 / n0 as f64, (total - s0) / n1 as f64);
            let m = 1.0 / (1.0 / n0 as f64 + 1.0 / n1 as f64);
            let eps = (2.0 / m * variance * ln).sqrt() + 2.0 / (3.0 * m) * ln;
            let diff = (mean1 - mean0).abs();
            if diff > eps {
                return Some((diff, eps, mean1 > mean0));
            }
        }
        None
    }
}

/// A detected drift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftEvent {
    /// `page_hinkley` or `adwin`.
    pub detector: String,
    pub statistic: f64,
    pub threshold: f64,
    /// The model's example count when it was detected (before the example was learned).
    pub at_example: i64,
    /// What was done: `none`, `boost` or `reset`.
    pub adaptation: Adaptation,
    /// The learning-rate multiplier right after the adaptation.
    pub lr_multiplier: f64,
}

/// A model's drift state: both detectors and the current learning-rate multiplier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DriftState {
    pub page_hinkley: PageHinkley,
    pub adwin: Adwin,
    pub lr_multiplier: f64,
}

impl Default for DriftState {
    fn default() -> Self {
        DriftState {
            page_hinkley: PageHinkley::default(),
            adwin: Adwin::default(),
            lr_multiplier: 1.0,
        }
    }
}

impl DriftState {
    /// Feeds one prequential loss to the configured detectors; returns a drift (the first
    /// detector that fired) if any. NaN losses are ignored; losses above [`LOSS_MAX`] (and
    /// infinite ones) count as `LOSS_MAX`.
    pub fn observe(&mut self, loss: f64, at_example: i64, cfg: &DriftConfig) -> Option<DriftEvent> {
        if loss.is_nan() {
            return None;
        }
        let loss = loss.clamp(-LOSS_MAX, LOSS_MAX);
        let mut event = None;
        if matches!(cfg.detector, DetectorKind::PageHinkley | DetectorKind::Both) {
            if let Some(statistic) = self.page_hinkley.observe(loss, cfg) {
                event = Some(DriftEvent {
                    detector: "page_hinkley".into(),
                    statistic,
                    threshold: cfg.ph_lambda,
                    at_example,
                    adaptation: cfg.adaptation,
                    lr_multiplier: 1.0,
                });
            }
        }
        if matches!(cfg.detector, DetectorKind::Adwin | DetectorKind::Both) {
            if let Some((statistic, threshold)) = self.adwin.observe(loss, cfg) {
                event.get_or_insert(DriftEvent {
                    detector: "adwin".into(),
                    statistic,
                    threshold,
                    at_example,
                    adaptation: cfg.adaptation,
                    lr_multiplier: 1.0,
                });
            }
        }
        event
    }

    /// The state with every number finite (NaN as 0, infinities and anything beyond the bounds
    /// clamped), so that it serializes to JSON that reads back. State the detectors built
    /// themselves is already within the bounds and is returned unchanged, bit for bit.
    pub fn sanitized(&self) -> DriftState {
        let ph = &self.page_hinkley;
        DriftState {
            page_hinkley: PageHinkley {
                n: ph.n,
                mean: finite(ph.mean, STATE_MAX),
                sum: finite(ph.sum, STATE_MAX),
                min: finite(ph.min, STATE_MAX),
            },
            adwin: Adwin {
                buckets: self
                    .adwin
                    .buckets
                    .iter()
                    .map(|b| Bucket {
                        n: b.n,
                        total: finite(b.total, STATE_MAX),
                        m2: finite(b.m2, STATE_MAX).max(0.0),
                    })
                    .collect(),
                ticks: self.adwin.ticks,
            },
            lr_multiplier: if self.lr_multiplier.is_finite() && self.lr_multiplier > 0.0 {
                self.lr_multiplier
            } else {
                1.0
            },
        }
    }

    /// Decays the multiplier after an example.
    pub fn decay(&mut self, cfg: &DriftConfig) {
        if self.lr_multiplier != 1.0 {
            let factor = (-std::f64::consts::LN_2 / cfg.boost_half_life).exp();
            self.lr_multiplier = 1.0 + (self.lr_multiplier - 1.0) * factor;
            if (self.lr_multiplier - 1.0).abs() < 1e-6 {
                self.lr_multiplier = 1.0;
            }
        }
    }
}
