//! Issue 17: learning that needs no tuning. The defaults of new models (target centring, the
//! safe normalized SGD step, the intercept boost, per-optimizer rates) apply to new models only;
//! a model stored before them keeps learning exactly as before; and the defaults never diverge,
//! however many dense features an example has or whatever their scale.

use olps::learner::{Example, Learner, LearnerConfig, ModelKind, OptimizerKind, INTERCEPT};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{assert_params_equal, drain, insert_stream, learn_in_memory, spawn_app, Row};

fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A stream whose target sits far from zero: `y = 40 + x0 - 0.5 x1 + N(0, 0.5^2)`, `x0` on a
/// scale of 1e4 around 3e4, `x1` on a scale of 1e-3.
fn offset_stream(n: usize, seed: u64) -> Vec<Row> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let (z0, z1) = (normal(&mut rng), normal(&mut rng));
            let y = 40.0 + z0 - 0.5 * z1 + 0.5 * normal(&mut rng);
            (
                vec![("x0".into(), 3e4 + 1e4 * z0), ("x1".into(), 1e-3 * z1)],
                y,
            )
        })
        .collect()
}

/// `width` dense, correlated features (5 latent factors) on scales from 1e-3 to 1e4, ten of them
/// informative, target around 100.
fn wide_stream(n: usize, width: usize, seed: u64) -> Vec<Row> {
    let mut rng = StdRng::seed_from_u64(seed);
    let loadings: Vec<[f64; 5]> = (0..width)
        .map(|_| std::array::from_fn(|_| normal(&mut rng)))
        .collect();
    let scales: Vec<f64> = (0..width)
        .map(|j| 10f64.powf(-3.0 + 7.0 * j as f64 / (width - 1) as f64))
        .collect();
    let weights: Vec<f64> = (0..width)
        .map(|j| {
            if j % (width / 10) == 0 {
                normal(&mut rng)
            } else {
                0.0
            }
        })
        .collect();
    (0..n)
        .map(|_| {
            let factors: [f64; 5] = std::array::from_fn(|_| normal(&mut rng));
            let mut y = 100.0 + normal(&mut rng);
            let features = (0..width)
                .map(|j| {
                    let z = 0.5 * normal(&mut rng)
                        + loadings[j]
                            .iter()
                            .zip(factors)
                            .map(|(l, f)| l * f)
                            .sum::<f64>();
                    y += weights[j] * z;
                    (format!("w{j:02}"), scales[j] * z)
                })
                .collect();
            (features, y)
        })
        .collect()
}

/// Prequential predictions of `config` over `rows`.
fn predictions(kind: ModelKind, config: &LearnerConfig, rows: &[Row]) -> Vec<f64> {
    let mut learner = Learner::new(kind, config.clone());
    rows.iter()
        .map(|(f, y)| {
            let step = learner.learn(&Example::new(f.clone(), *y, 1.0).unwrap());
            assert!(step.loss.is_finite(), "loss {}", step.loss);
            step.prediction
        })
        .collect()
}

fn mae(predictions: &[f64], rows: &[Row]) -> f64 {
    predictions
        .iter()
        .zip(rows)
        .map(|(p, (_, y))| (p - y).abs())
        .sum::<f64>()
        / rows.len() as f64
}

/// MAE of the running mean of the labels (predicting 0 first).
fn running_mean_mae(rows: &[Row]) -> f64 {
    let mut sum = 0.0;
    let mut total = 0.0;
    for (i, (_, y)) in rows.iter().enumerate() {
        let mean = if i == 0 { 0.0 } else { sum / i as f64 };
        total += (mean - y).abs();
        sum += y;
    }
    total / rows.len() as f64
}

#[test]
fn defaults_never_diverge_with_many_dense_features_on_scales_up_to_1e4() {
    // 60 dense features: the old default (plain SGD at 0.02) is past its stability limit of
    // about 100 standardized features per example only on the worst examples, and its MAE
    // blows up; the safe step bounds every update.
    for seed in 1..=3 {
        let rows = wide_stream(3000, 60, seed);
        let labels_max = rows.iter().map(|(_, y)| y.abs()).fold(0.0, f64::max);
        let new = predictions(ModelKind::Linear, &LearnerConfig::default(), &rows);
        let max_abs = new.iter().map(|p| p.abs()).fold(0.0, f64::max);
        assert!(
            new.iter().all(|p| p.is_finite()) && max_abs <= 10.0 * labels_max,
            "seed {seed}: a prediction of {max_abs} for labels up to {labels_max}"
        );
        let (first, second) = rows.split_at(rows.len() / 2);
        let naive = running_mean_mae(second);
        let late = mae(&new[first.len()..], second);
        assert!(
            late < 0.8 * naive,
            "seed {seed}: MAE {late} over the second half, the running mean's {naive}"
        );
        let old = predictions(ModelKind::Linear, &LearnerConfig::legacy(), &rows);
        assert!(
            mae(&new, &rows) < mae(&old, &rows),
            "seed {seed}: new defaults {} vs old {}",
            mae(&new, &rows),
            mae(&old, &rows)
        );
        // Logistic, on the same features (label: above the median level).
        let clf: Vec<Row> = rows
            .iter()
            .map(|(f, y)| (f.clone(), f64::from(u8::from(*y > 100.0))))
            .collect();
        for p in predictions(ModelKind::Logistic, &LearnerConfig::default(), &clf) {
            assert!((0.0..=1.0).contains(&p), "seed {seed}: probability {p}");
        }
    }
}

#[test]
fn a_target_far_from_zero_costs_no_warm_up() {
    let rows = offset_stream(400, 7);
    let new = predictions(ModelKind::Linear, &LearnerConfig::default(), &rows);
    let old = predictions(ModelKind::Linear, &LearnerConfig::legacy(), &rows);
    // From the second example on, the level is known: no prediction is off by the level (40).
    let worst_after_first = new[1..]
        .iter()
        .zip(&rows[1..])
        .map(|(p, (_, y))| (p - y).abs())
        .fold(0.0, f64::max);
    assert!(worst_after_first < 10.0, "worst error {worst_after_first}");
    // The old default climbs to the level from 0 at its rate: tens of examples off by tens.
    let (new_mae, old_mae) = (mae(&new, &rows), mae(&old, &rows));
    assert!(new_mae < 0.5 * old_mae, "MAE new {new_mae}, old {old_mae}");
    // The intercept carries the label mean: it is within the noise of the level.
    let mut learner = Learner::new(ModelKind::Linear, LearnerConfig::default());
    for (f, y) in &rows {
        learner.learn(&Example::new(f.clone(), *y, 1.0).unwrap());
    }
    let intercept = learner.param(INTERCEPT);
    let label_mean = rows.iter().map(|(_, y)| y).sum::<f64>() / rows.len() as f64;
    assert_eq!(intercept.count, rows.len() as i64);
    assert!((intercept.mean - label_mean).abs() < 1e-9);
    assert!(
        (intercept.value - 40.0).abs() < 1.0,
        "intercept {}",
        intercept.value
    );
}

/// The settings JSON a model created before issue 17 has in `models.settings`: every field of
/// that time, none of the new ones.
fn settings_stored_before_the_new_defaults() -> serde_json::Value {
    let mut old = serde_json::to_value(LearnerConfig::legacy()).unwrap();
    let object = old.as_object_mut().unwrap();
    for field in [
        "standardize_clip",
        "center_target",
        "safe_step",
        "intercept_boost",
        "intercept_boost_half_life",
    ] {
        object.remove(field).unwrap();
    }
    old
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_models_keep_their_behaviour_and_new_models_get_the_new_defaults() {
    let app = spawn_app().await;
    let pool = app.pool();
    let rows = offset_stream(600, 11);

    // A model as stored before the new fields existed, written straight into `models`.
    let old_id: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO models (name, kind, settings) VALUES ('stored-before', 'linear', $1) \
         RETURNING model_id",
    )
    .bind(settings_stored_before_the_new_defaults())
    .fetch_one(pool)
    .await
    .unwrap();
    // A model created over HTTP without settings, and one naming only an optimizer.
    let new_id = app.create_model("created-now", "linear").await;
    let (status, body) = app
        .post(
            "/v1/models",
            &serde_json::json!({"name": "adagrad-now", "kind": "logistic",
                                "settings": {"optimizer": "adagrad"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["settings"]["learning_rate"],
        LearnerConfig::default_learning_rate(OptimizerKind::Adagrad)
    );

    let old = olps::models::find(pool, &old_id.to_string()).await.unwrap();
    let new = olps::models::find(pool, &new_id.to_string()).await.unwrap();
    assert_eq!(old.settings, LearnerConfig::legacy());
    assert_eq!(new.settings, LearnerConfig::default());
    let (status, shown) = app.get(&format!("/v1/models/{old_id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["settings"]["center_target"], false);
    assert_eq!(shown["settings"]["learning_rate"], 0.02);

    insert_stream(pool, old_id, &rows).await;
    insert_stream(pool, new_id, &rows).await;
    drain(pool, 97).await;

    // Each is bit-identical to the learner in memory with its own settings: the old model to
    // the old defaults (no target centring: its intercept's label statistics stay 0), the new
    // model to the new ones.
    let old_learner = learn_in_memory(&old, &rows);
    assert_eq!(old_learner.config, LearnerConfig::legacy());
    assert_params_equal(pool, old_id, &old_learner).await;
    let new_learner = learn_in_memory(&new, &rows);
    assert_params_equal(pool, new_id, &new_learner).await;
    let stored = olps::params::load_all(pool, old_id).await.unwrap();
    assert_eq!(stored[INTERCEPT].mean, 0.0);
    let stored = olps::params::load_all(pool, new_id).await.unwrap();
    assert!(stored[INTERCEPT].mean > 30.0, "{:?}", stored[INTERCEPT]);
    assert_ne!(
        old_learner.intercept().to_bits(),
        new_learner.intercept().to_bits()
    );

    // The service predicts with the stored state: the same numbers as the learner in memory.
    let probe = &rows[0].0;
    let features: serde_json::Map<String, serde_json::Value> = probe
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!(v)))
        .collect();
    for (id, learner) in [(old_id, &old_learner), (new_id, &new_learner)] {
        let (status, body) = app
            .post(
                &format!("/v1/models/{id}/predict"),
                &serde_json::json!({ "features": features }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["prediction"].as_f64().unwrap().to_bits(),
            learner.predict(probe).to_bits()
        );
    }
}
