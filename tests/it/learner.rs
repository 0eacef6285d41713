//! Acceptance tests of the pure online learner (`olps::learner`): no database.

use std::collections::HashMap;

use olps::learner::{
    loss, ConfigError, Example, ExampleError, Learner, LearnerConfig, LrSchedule, ModelKind,
    OptimizerKind, ParamState, INTERCEPT,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::common::{mean, seed_stream, state_bits, Row};

/// (features, label, weight)
type WeightedRow = (Vec<(String, f64)>, f64, f64);

fn example(features: &[(String, f64)], label: f64) -> Example {
    Example::new(features.to_vec(), label, 1.0).unwrap()
}

/// Runs the stream prequentially and returns the loss of each prediction made before its update.
fn prequential(learner: &mut Learner, rows: &[Row]) -> Vec<f64> {
    rows.iter()
        .map(|(f, y)| {
            let step = learner.learn(&example(f, *y));
            assert!(step.loss.is_finite());
            step.loss
        })
        .collect()
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box-Muller
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A separable, unscaled logistic stream: `a ~ N(0, 5^2)`, `b ~ U(-10, 10)`, an irrelevant
/// `c ~ U(900, 1100)`, label 1 iff `2a - 3b + 0.5 > 0`.
fn logistic_stream(n: usize, seed: u64) -> Vec<Row> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let a = 5.0 * normal(&mut rng);
            let b = rng.gen_range(-10.0..10.0);
            let c = rng.gen_range(900.0..1100.0);
            let y = if 2.0 * a - 3.0 * b + 0.5 > 0.0 {
                1.0
            } else {
                0.0
            };
            let f = vec![("a".into(), a), ("b".into(), b), ("c".into(), c)];
            (f, y)
        })
        .collect()
}

/// Prequential accuracy (prediction >= 0.5 means class 1) of each example.
fn prequential_hits(learner: &mut Learner, rows: &[Row]) -> Vec<f64> {
    rows.iter()
        .map(|(f, y)| {
            let step = learner.learn(&example(f, *y));
            let predicted = if step.prediction >= 0.5 { 1.0 } else { 0.0 };
            if predicted == *y {
                1.0
            } else {
                0.0
            }
        })
        .collect()
}

/// A stationary linear stream: `y = 3 + 1.5 x0 - 2 x1 + 0.5 x2 + N(0, 0.1^2)` with unscaled
/// features (`x0 ~ N(0, 1)`, `x1 ~ N(10, 3^2)`, `x2 ~ U(0, 100)`).
fn linear_stationary(n: usize, seed: u64) -> Vec<Row> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let x0 = normal(&mut rng);
            let x1 = 10.0 + 3.0 * normal(&mut rng);
            let x2 = rng.gen_range(0.0..100.0);
            let y = 3.0 + 1.5 * x0 - 2.0 * x1 + 0.5 * x2 + 0.1 * normal(&mut rng);
            (
                vec![("x0".into(), x0), ("x1".into(), x1), ("x2".into(), x2)],
                y,
            )
        })
        .collect()
}

/// Per-optimizer settings used by the "every optimizer learns" tests: the defaults with the
/// optimizer swapped and a learning rate suited to it.
fn config_for(optimizer: OptimizerKind) -> LearnerConfig {
    let learning_rate = match optimizer {
        OptimizerKind::Sgd => 0.02,
        OptimizerKind::Adagrad => 0.5,
        OptimizerKind::Rmsprop => 0.01,
        OptimizerKind::Adam => 0.05,
        OptimizerKind::Ftrl => 0.5,
        OptimizerKind::Auto => 0.02,
    };
    LearnerConfig {
        optimizer,
        learning_rate,
        ..LearnerConfig::default()
    }
}

const OPTIMIZERS: [OptimizerKind; 6] = [
    OptimizerKind::Sgd,
    OptimizerKind::Adagrad,
    OptimizerKind::Rmsprop,
    OptimizerKind::Adam,
    OptimizerKind::Ftrl,
    OptimizerKind::Auto,
];

#[test]
fn default_linear_relearns_after_the_drift_of_the_seed_stream() {
    let rows = seed_stream();
    let mut learner = Learner::new(ModelKind::Linear, LearnerConfig::default());
    let losses = prequential(&mut learner, &rows);
    let mse_last_500 = mean(&losses[1500..]);
    let mse_before_drift = mean(&losses[500..1000]);
    println!(
        "seed_stream, defaults: MSE rows 500..1000 = {mse_before_drift:.5}, \
         rows 1000..1100 = {:.4}, last 500 rows = {mse_last_500:.5}",
        mean(&losses[1000..1100])
    );
    assert!(
        mse_last_500 < 0.1,
        "MSE over the last 500 rows: {mse_last_500}"
    );
    assert!(
        mse_before_drift < 0.1,
        "MSE before the drift: {mse_before_drift}"
    );
    // The learned weights are those of y = -sum(x).
    for i in 0..5 {
        let name = format!("x{i}");
        let w = learner.param(&name).value;
        let state = learner.param(&name);
        let std = (state.m2 / (state.count - 1) as f64).sqrt();
        // w is per standardized unit: w / std is the raw slope
        assert!((w / std + 1.0).abs() < 0.2, "{name}: raw slope {}", w / std);
    }
}

#[test]
fn default_logistic_separates_an_unscaled_stream() {
    let rows = logistic_stream(4000, 7);
    let positives = rows.iter().filter(|(_, y)| *y == 1.0).count();
    assert!((1200..2800).contains(&positives), "{positives} positives");
    let mut learner = Learner::new(ModelKind::Logistic, LearnerConfig::default());
    let hits = prequential_hits(&mut learner, &rows);
    let whole = mean(&hits);
    let second_half = mean(&hits[2000..]);
    println!(
        "logistic, defaults: prequential accuracy whole stream = {whole:.4}, \
         second half = {second_half:.4}"
    );
    assert!(whole > 0.95, "accuracy over the whole stream: {whole}");
    assert!(
        second_half > 0.97,
        "accuracy over the second half: {second_half}"
    );
}

#[test]
fn every_optimizer_learns_a_linear_stream() {
    let rows = linear_stationary(3000, 11);
    for optimizer in OPTIMIZERS {
        let mut learner = Learner::new(ModelKind::Linear, config_for(optimizer));
        let losses = prequential(&mut learner, &rows);
        let first = mean(&losses[..200]);
        let last = mean(&losses[2500..]);
        println!("linear {optimizer}: MSE first 200 = {first:.3}, last 500 = {last:.5}");
        assert!(
            last < 0.05 * first && last < 1.0,
            "{optimizer}: first {first}, last {last}"
        );
    }
}

#[test]
fn every_optimizer_learns_a_logistic_stream() {
    let rows = logistic_stream(3000, 5);
    for optimizer in OPTIMIZERS {
        let mut learner = Learner::new(ModelKind::Logistic, config_for(optimizer));
        let losses = prequential(&mut learner, &rows);
        let first = mean(&losses[..200]);
        let last = mean(&losses[2500..]);
        println!("logistic {optimizer}: log loss first 200 = {first:.4}, last 500 = {last:.4}");
        assert!(
            last < 0.5 * first && last < 0.2,
            "{optimizer}: first {first}, last {last}"
        );
    }
}

#[test]
fn every_optimizer_learns_without_standardization() {
    // Features of unit scale: each optimizer works on raw values too.
    let rows = seed_stream();
    for optimizer in OPTIMIZERS {
        let config = LearnerConfig {
            standardize: false,
            ..config_for(optimizer)
        };
        let mut learner = Learner::new(ModelKind::Linear, config);
        let losses = prequential(&mut learner, &rows[..1000]);
        let first = mean(&losses[..100]);
        let last = mean(&losses[500..]);
        println!("linear raw {optimizer}: MSE first 100 = {first:.3}, rows 500..1000 = {last:.5}");
        assert!(
            last < 0.1 * first,
            "{optimizer}: first {first}, last {last}"
        );
    }
}

#[test]
fn sgd_invscaling_converges_on_stationary_data() {
    let rows = linear_stationary(3000, 3);
    let config = LearnerConfig {
        optimizer: OptimizerKind::Sgd,
        learning_rate: 0.05,
        lr_schedule: LrSchedule::Invscaling,
        power_t: 0.25,
        ..LearnerConfig::default()
    };
    let mut learner = Learner::new(ModelKind::Linear, config);
    let losses = prequential(&mut learner, &rows);
    assert!(mean(&losses[2500..]) < 0.05, "{}", mean(&losses[2500..]));
    assert!(learner.current_learning_rate() < 0.05 / 7.0);
}

fn assert_bit_identical(a: &Learner, b: &Learner) {
    assert_eq!(a.examples_seen, b.examples_seen);
    assert_eq!(a.params.len(), b.params.len());
    for (name, sa) in &a.params {
        let sb = b
            .params
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(
            state_bits(sa),
            state_bits(sb),
            "parameter {name}: {sa:?} vs {sb:?}"
        );
    }
}

#[test]
fn results_are_bit_identical_whatever_the_feature_and_storage_order() {
    let mut rng = StdRng::seed_from_u64(99);
    // A sparse stream: each example carries a random subset of 12 features.
    let names: Vec<String> = (0..12).map(|i| format!("f{i:02}")).collect();
    let rows: Vec<WeightedRow> = (0..600)
        .map(|i| {
            let mut f: Vec<(String, f64)> = Vec::new();
            for n in &names {
                if rng.gen_bool(0.6) {
                    f.push((n.clone(), 100.0 * normal(&mut rng) + 3.0));
                }
            }
            f.push((format!("one_hot={}", i % 4), 1.0));
            let y = f.iter().map(|(_, v)| v * 0.01).sum::<f64>() + normal(&mut rng);
            let weight = rng.gen_range(0.1..2.0);
            (f, y, weight)
        })
        .collect();

    for kind in [ModelKind::Linear, ModelKind::Logistic] {
        for optimizer in OPTIMIZERS {
            for standardize in [true, false] {
                let config = LearnerConfig {
                    standardize,
                    l1: 0.01,
                    l2: 0.001,
                    clip_gradient: 50.0,
                    ..config_for(optimizer)
                };
                let mut a = Learner::new(kind, config.clone());
                // `store` plays the database: b keeps only the parameters of the current batch,
                // loaded in a shuffled order, and writes them back after it.
                let mut store: HashMap<String, ParamState> = HashMap::new();
                let mut b_seen = 0i64;
                let mut b_state = olps::learner::ModelState::default();
                let mut last_b = None;
                for batch in rows.chunks(7) {
                    let examples_b: Vec<Example> = batch
                        .iter()
                        .map(|(f, y, w)| {
                            let y = if kind == ModelKind::Logistic {
                                if *y > 0.0 {
                                    1.0
                                } else {
                                    0.0
                                }
                            } else {
                                *y
                            };
                            let mut f = f.clone();
                            f.shuffle(&mut rng);
                            Example::new(f, y, *w).unwrap()
                        })
                        .collect();
                    let mut touched: Vec<String> = examples_b
                        .iter()
                        .flat_map(|e| Learner::touched_parameters(e).map(str::to_string))
                        .collect();
                    touched.sort();
                    touched.dedup();
                    touched.shuffle(&mut rng);
                    let mut b = Learner::new(kind, config.clone());
                    b.examples_seen = b_seen;
                    b.restore_model_state(b_state.clone());
                    for name in &touched {
                        if let Some(s) = store.get(name) {
                            b.params.insert(name.clone(), *s);
                        }
                    }
                    for (e, (f, _, w)) in examples_b.iter().zip(batch) {
                        let ea = Example::new(f.clone(), e.label, *w).unwrap();
                        let sa = a.learn(&ea);
                        let sb = b.learn(e);
                        assert_eq!(sa.prediction.to_bits(), sb.prediction.to_bits());
                        assert_eq!(sa.loss.to_bits(), sb.loss.to_bits());
                    }
                    let mut written: Vec<(String, ParamState)> = b.params.drain().collect();
                    written.shuffle(&mut rng);
                    store.extend(written);
                    b_seen = b.examples_seen;
                    b_state = b.model_state();
                    last_b = Some(b);
                }
                let mut restored = last_b.unwrap();
                let mut all: Vec<(String, ParamState)> = store.into_iter().collect();
                all.shuffle(&mut rng);
                restored.params = all.into_iter().collect();
                assert_bit_identical(&a, &restored);
                // Predictions agree bit for bit too, in any feature order.
                let (f, _, _) = &rows[5];
                let mut g = f.clone();
                g.reverse();
                assert_eq!(a.predict(f).to_bits(), restored.predict(&g).to_bits());
            }
        }
    }
}

#[test]
fn extreme_values_keep_every_state_finite() {
    let big = [
        f64::MAX,
        -f64::MAX,
        1e300,
        -1e300,
        1e-300,
        f64::MIN_POSITIVE,
        0.0,
        1.0,
        -3.0,
        1e150,
    ];
    let mut rng = StdRng::seed_from_u64(1);
    for kind in [ModelKind::Linear, ModelKind::Logistic] {
        for optimizer in OPTIMIZERS {
            for (standardize, clip) in [(true, 0.0), (false, 0.0), (true, 5.0), (false, 1e200)] {
                let config = LearnerConfig {
                    optimizer,
                    standardize,
                    clip_gradient: clip,
                    learning_rate: 1e100,
                    l2: 1e10,
                    epsilon: 1e-300,
                    // Both drift detectors, with every kind of adaptation across the configs.
                    drift: olps::learner::drift::DriftConfig {
                        detector: olps::learner::drift::DetectorKind::Both,
                        adaptation: if standardize {
                            olps::learner::drift::Adaptation::Boost
                        } else {
                            olps::learner::drift::Adaptation::Reset
                        },
                        adwin_clock: 4,
                        ph_min_instances: 3,
                        ..Default::default()
                    },
                    ..LearnerConfig::default()
                };
                config.validate().unwrap();
                for cfg in [config.clone(), config_for(optimizer)] {
                    let mut learner = Learner::new(kind, cfg);
                    for _ in 0..300 {
                        let mut f: Vec<(String, f64)> = Vec::new();
                        for n in ["a", "b", "c"] {
                            if rng.gen_bool(0.8) {
                                f.push((n.to_string(), *big.choose(&mut rng).unwrap()));
                            }
                        }
                        let label = match kind {
                            ModelKind::Linear => *big.choose(&mut rng).unwrap(),
                            ModelKind::Logistic => rng.gen_range(0..2) as f64,
                        };
                        let weight = *[1e300, f64::MAX, 1e-300, 1.0].choose(&mut rng).unwrap();
                        let e = Example::new(f.clone(), label, weight).unwrap();
                        let step = learner.learn(&e);
                        assert!(step.prediction.is_finite(), "{kind} {optimizer}: {step:?}");
                        assert!(step.loss.is_finite(), "{kind} {optimizer}: {step:?}");
                        assert!(learner.predict(&f).is_finite());
                        for (_, c) in learner.contributions(&f) {
                            assert!(c.is_finite());
                        }
                        for (name, s) in &learner.params {
                            for x in [s.value, s.m, s.v, s.mean, s.m2] {
                                assert!(x.is_finite(), "{kind} {optimizer} {name}: {s:?}");
                            }
                        }
                        // The model-level state (drift detectors) is stored as JSON: it must
                        // read back, equal (serde_json writes a non-finite number as null).
                        let state = learner.model_state();
                        let json = serde_json::to_string(&state).unwrap();
                        let back: olps::learner::ModelState = serde_json::from_str(&json)
                            .unwrap_or_else(|e| panic!("{kind} {optimizer}: {e}: {json}"));
                        assert_eq!(back, state, "{kind} {optimizer}");
                        assert_eq!(
                            state.drift, learner.drift,
                            "state built by the learner is kept as is"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn default_learner_recovers_from_a_wild_label() {
    // A label 20 standard deviations off, just after the drift, is forgotten in time.
    let mut rows = seed_stream();
    rows[1200].1 = 100.0;
    let mut learner = Learner::new(ModelKind::Linear, LearnerConfig::default());
    let losses = prequential(&mut learner, &rows);
    let mse_last_500 = mean(&losses[1500..]);
    assert!(mse_last_500 < 0.1, "{mse_last_500}");
}

#[test]
fn default_linear_learns_an_unscaled_target() {
    // The seed stream with y * 1000 + 5000: the defaults learn it as well as the original.
    let rows: Vec<_> = seed_stream()
        .into_iter()
        .map(|(f, y)| (f, 1000.0 * y + 5000.0))
        .collect();
    let mut learner = Learner::new(ModelKind::Linear, LearnerConfig::default());
    let losses = prequential(&mut learner, &rows);
    let relative = mean(&losses[1500..]) / 1e6;
    println!(
        "seed_stream * 1000 + 5000, defaults: MSE / 1000^2 over the last 500 rows = {relative:.5}"
    );
    assert!(relative < 0.1, "{relative}");
}

#[test]
fn config_validation_names_the_field() {
    let base = LearnerConfig::default();
    let cases: Vec<(&str, LearnerConfig)> = vec![
        (
            "learning_rate",
            LearnerConfig {
                learning_rate: -1.0,
                ..base.clone()
            },
        ),
        (
            "learning_rate",
            LearnerConfig {
                learning_rate: 0.0,
                ..base.clone()
            },
        ),
        (
            "learning_rate",
            LearnerConfig {
                learning_rate: f64::NAN,
                ..base.clone()
            },
        ),
        (
            "power_t",
            LearnerConfig {
                power_t: -0.5,
                ..base.clone()
            },
        ),
        (
            "power_t",
            LearnerConfig {
                power_t: f64::INFINITY,
                ..base.clone()
            },
        ),
        (
            "beta1",
            LearnerConfig {
                beta1: 1.0,
                ..base.clone()
            },
        ),
        (
            "beta1",
            LearnerConfig {
                beta1: -0.1,
                ..base.clone()
            },
        ),
        (
            "beta2",
            LearnerConfig {
                beta2: 1.5,
                ..base.clone()
            },
        ),
        (
            "rho",
            LearnerConfig {
                rho: 1.0,
                ..base.clone()
            },
        ),
        (
            "epsilon",
            LearnerConfig {
                epsilon: 0.0,
                ..base.clone()
            },
        ),
        (
            "ftrl_beta",
            LearnerConfig {
                ftrl_beta: -1.0,
                ..base.clone()
            },
        ),
        (
            "l1",
            LearnerConfig {
                l1: -0.1,
                ..base.clone()
            },
        ),
        (
            "l2",
            LearnerConfig {
                l2: f64::NEG_INFINITY,
                ..base.clone()
            },
        ),
        (
            "clip_gradient",
            LearnerConfig {
                clip_gradient: -2.0,
                ..base.clone()
            },
        ),
    ];
    for (field, config) in cases {
        let err = config.validate().unwrap_err();
        let ConfigError::Invalid { field: got, .. } = &err else {
            panic!("{field}: not a validation error: {err}");
        };
        assert_eq!(*got, field);
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("{field}: must be")),
            "{message}"
        );
    }
    let err = LearnerConfig {
        learning_rate: -1.0,
        ..base.clone()
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "learning_rate: must be a finite number > 0, got -1"
    );
    base.validate().unwrap();
}

#[test]
fn config_json() {
    let empty: LearnerConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, LearnerConfig::default());
    let partial: LearnerConfig = serde_json::from_str(
        r#"{"optimizer": "rmsprop", "learning_rate": 0.01, "standardize": false}"#,
    )
    .unwrap();
    assert_eq!(partial.optimizer, OptimizerKind::Rmsprop);
    assert_eq!(partial.learning_rate, 0.01);
    assert!(!partial.standardize);
    assert_eq!(partial.beta1, LearnerConfig::default().beta1);
    let err = serde_json::from_str::<LearnerConfig>(r#"{"learning_rte": 0.1}"#).unwrap_err();
    assert!(
        err.to_string().contains("unknown field `learning_rte`"),
        "{err}"
    );
    assert!(serde_json::from_str::<LearnerConfig>(r#"{"optimizer": "lbfgs"}"#).is_err());
    // Round trip.
    let json = serde_json::to_string(&LearnerConfig::default()).unwrap();
    let back: LearnerConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, LearnerConfig::default());
    assert!(json.contains(r#""optimizer":"auto""#), "{json}");
    // ParamState round trip
    let s = ParamState {
        value: 1.5,
        m: -2.0,
        v: 3.0,
        count: 4,
        mean: 0.25,
        m2: 8.0,
    };
    let back: ParamState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(back, s);
}

#[test]
fn enum_parsing() {
    assert_eq!(
        "logistic".parse::<ModelKind>().unwrap(),
        ModelKind::Logistic
    );
    assert_eq!(
        "FTRL".parse::<OptimizerKind>().unwrap(),
        OptimizerKind::Ftrl
    );
    assert_eq!(
        "invscaling".parse::<LrSchedule>().unwrap(),
        LrSchedule::Invscaling
    );
    let err = "poisson".parse::<ModelKind>().unwrap_err().to_string();
    assert!(err.contains("linear, logistic"), "{err}");
    assert_eq!(OptimizerKind::Rmsprop.to_string(), "rmsprop");
    assert_eq!(LrSchedule::Constant.as_str(), "constant");
}

#[test]
fn example_validation() {
    let f = |pairs: &[(&str, f64)]| -> Vec<(String, f64)> {
        pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
    };
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let err = Example::new(f(&[("ok", 1.0), ("amount", bad)]), 1.0, 1.0).unwrap_err();
        assert!(matches!(err, ExampleError::NonFiniteFeature { ref name, .. } if name == "amount"));
        assert!(err.to_string().contains("amount"));
        assert!(matches!(
            Example::new(f(&[("a", 1.0)]), bad, 1.0),
            Err(ExampleError::NonFiniteLabel { .. })
        ));
        assert!(matches!(
            Example::new(f(&[("a", 1.0)]), 1.0, bad),
            Err(ExampleError::InvalidWeight { .. })
        ));
    }
    assert!(matches!(
        Example::new(f(&[("a", 1.0), ("", 2.0)]), 1.0, 1.0),
        Err(ExampleError::EmptyFeatureName { index: 1 })
    ));
    let err = Example::new(f(&[("x", 1.0), ("y", 2.0), ("x", 3.0)]), 1.0, 1.0).unwrap_err();
    assert_eq!(err, ExampleError::DuplicateFeature { name: "x".into() });
    assert!(err.to_string().contains("\"x\""));
    for w in [0.0, -0.5] {
        let err = Example::new(f(&[("a", 1.0)]), 1.0, w).unwrap_err();
        assert!(err.to_string().contains("weight"), "{err}");
    }
    assert!(matches!(
        Example::new(f(&[(INTERCEPT, 1.0)]), 1.0, 1.0),
        Err(ExampleError::ReservedFeatureName { .. })
    ));
    let e = Example::new(f(&[("z", 1.0), ("a", 2.0)]), 0.5, 0.9).unwrap();
    assert_eq!(e.features(), f(&[("a", 2.0), ("z", 1.0)]).as_slice());
    assert!(olps::learner::validate_label(ModelKind::Logistic, 1.01).is_err());
    assert!(olps::learner::validate_label(ModelKind::Linear, 1e300).is_ok());
}

#[test]
fn sparse_indicator_features_learn_with_standardization() {
    // One-hot features given only when set (value 1) must still learn under standardization.
    let mut learner = Learner::new(ModelKind::Linear, LearnerConfig::default());
    let effect = [
        ("country=US", 2.0),
        ("country=FR", -1.0),
        ("country=DE", 0.5),
    ];
    for i in 0..3000 {
        let (name, y) = effect[i % 3];
        learner.learn(&Example::new(vec![(name.to_string(), 1.0)], y, 1.0).unwrap());
    }
    for (name, y) in effect {
        let p = learner.predict(&[(name.to_string(), 1.0)]);
        assert!((p - y).abs() < 0.1, "{name}: predicted {p}, want {y}");
    }
}

#[test]
fn loss_function() {
    assert_eq!(loss(ModelKind::Linear, 1.0, 3.0), 4.0);
    assert!((loss(ModelKind::Logistic, 0.25, 0.0) - -(0.75f64).ln()).abs() < 1e-15);
    assert!(loss(ModelKind::Logistic, 1.0, 0.0).is_finite());
}

/// Not a check: prints the figures behind the choice of defaults.
/// `cargo test --test it -- --ignored --nocapture learner::report`
#[test]
#[ignore]
fn report() {
    let rows = seed_stream();
    let logistic = logistic_stream(4000, 7);
    let scaled: Vec<Row> = rows
        .iter()
        .map(|(f, y)| {
            let f = f
                .iter()
                .enumerate()
                .map(|(i, (n, v))| (n.clone(), v * 10f64.powi(i as i32 - 2) + 1000.0))
                .collect();
            (f, *y)
        })
        .collect();
    let mut outlier = rows.clone();
    outlier[1200].1 = 1e4;
    println!("optimizer lr standardize | seed MSE 500..1000 | 1000..1100 | last 500 | seed x1e-2..1e2+1000 last 500 | outlier last 500 | logistic acc all / 2nd half");
    for optimizer in OPTIMIZERS {
        for lr in [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0] {
            for standardize in [true, false] {
                let config = LearnerConfig {
                    optimizer,
                    learning_rate: lr,
                    standardize,
                    ..LearnerConfig::default()
                };
                let mut l = Learner::new(ModelKind::Linear, config.clone());
                let losses = prequential(&mut l, &rows);
                let mut l = Learner::new(ModelKind::Linear, config.clone());
                let losses_scaled = prequential(&mut l, &scaled);
                let mut l = Learner::new(ModelKind::Linear, config.clone());
                let losses_outlier = prequential(&mut l, &outlier);
                let mut l = Learner::new(ModelKind::Logistic, config);
                let hits = prequential_hits(&mut l, &logistic);
                println!(
                    "{optimizer:8} {lr:5} {standardize:5} | {:10.4} | {:10.4} | {:10.4} | {:10.4} | {:10.4} | {:.4} / {:.4}",
                    mean(&losses[500..1000]),
                    mean(&losses[1000..1100]),
                    mean(&losses[1500..]),
                    mean(&losses_scaled[1500..]),
                    mean(&losses_outlier[1500..]),
                    mean(&hits),
                    mean(&hits[2000..]),
                );
            }
        }
    }
}

/// Not a check: compares candidate defaults over harder scenarios.
/// `cargo test --release --test it -- --ignored --nocapture learner::scenarios`
#[test]
#[ignore]
fn scenarios() {
    let rows = seed_stream();
    let mut out100 = rows.clone();
    out100[1200].1 = 100.0;
    let mut out1e4 = rows.clone();
    out1e4[1200].1 = 1e4;
    let big_target: Vec<_> = rows
        .iter()
        .map(|(f, y)| (f.clone(), 1000.0 * y + 5000.0))
        .collect();
    // 50 dense N(0,1) features, y = +-sum of the first 10 + noise, drift at 1000.
    let mut rng = StdRng::seed_from_u64(17);
    let wide: Vec<Row> = (0..2000)
        .map(|i| {
            let f: Vec<(String, f64)> = (0..50)
                .map(|j| (format!("w{j:02}"), normal(&mut rng)))
                .collect();
            let s: f64 = f[..10].iter().map(|(_, v)| v).sum();
            let y = if i < 1000 { s } else { -s } + 0.1 * normal(&mut rng);
            (f, y)
        })
        .collect();
    let logistic = logistic_stream(4000, 7);
    let mut logistic_out = logistic.clone();
    logistic_out[1000].0[0].1 = 1e4;
    let adam = |lr: f64, beta2: f64, clip: f64| LearnerConfig {
        optimizer: OptimizerKind::Adam,
        learning_rate: lr,
        beta2,
        clip_gradient: clip,
        ..LearnerConfig::default()
    };
    let other = |optimizer, lr: f64| LearnerConfig {
        optimizer,
        learning_rate: lr,
        ..LearnerConfig::default()
    };
    let candidates = vec![
        ("sgd 0.02", other(OptimizerKind::Sgd, 0.02)),
        ("sgd 0.05", other(OptimizerKind::Sgd, 0.05)),
        ("rmsprop 0.02", other(OptimizerKind::Rmsprop, 0.02)),
        ("rmsprop 0.03", other(OptimizerKind::Rmsprop, 0.03)),
        ("adam 0.02", adam(0.02, 0.999, 0.0)),
        ("adam 0.05", adam(0.05, 0.999, 0.0)),
        ("adam 0.05 b2 .99", adam(0.05, 0.99, 0.0)),
        ("adam 0.05 clip 1", adam(0.05, 0.999, 1.0)),
        ("adam 0.05 clip 10", adam(0.05, 0.999, 10.0)),
    ];
    println!("candidate | seed last500 | 1000..1100 | out100 | out1e4 | bigtarget/1e6 | wide50 last500 | wide 1000..1100 | logistic 2nd half | logistic w/ outlier 2nd half");
    for (name, config) in candidates {
        let run = |rows: &[Row]| {
            let mut l = Learner::new(ModelKind::Linear, config.clone());
            prequential(&mut l, rows)
        };
        let seed = run(&rows);
        let acc = |rows: &[Row]| {
            let mut l = Learner::new(ModelKind::Logistic, config.clone());
            mean(&prequential_hits(&mut l, rows)[2000..])
        };
        let w = run(&wide);
        println!(
            "{name:18} | {:8.4} | {:8.3} | {:8.4} | {:8.4} | {:8.4} | {:8.4} | {:8.3} | {:.4} | {:.4}",
            mean(&seed[1500..]),
            mean(&seed[1000..1100]),
            mean(&run(&out100)[1500..]),
            mean(&run(&out1e4)[1500..]),
            mean(&run(&big_target)[1500..]) / 1e6,
            mean(&w[1500..]),
            mean(&w[1000..1100]),
            acc(&logistic),
            acc(&logistic_out),
        );
    }
}
