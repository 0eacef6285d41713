//! Concept drift: detection on the prequential loss, adaptation, and (against PostgreSQL) the
//! detector state surviving a worker restart.

use olps::learner::drift::{Adaptation, DetectorKind, DriftConfig};
use olps::learner::{Example, Learner, LearnerConfig, ModelKind, OptimizerKind};
use rand::{Rng, SeedableRng};

use crate::common::*;

/// A seed_stream-like linear stream: y = s * sum(x) + noise, with s flipping at `flip_at`.
fn linear_stream(n: usize, flip_at: Option<usize>, seed: u64) -> Vec<Row> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let x: Vec<f64> = (0..5)
                .map(|_| rng.sample::<f64, _>(rand_distr_normal()))
                .collect();
            let sign = if flip_at.is_some_and(|f| i >= f) {
                -1.0
            } else {
                1.0
            };
            let y = sign * x.iter().sum::<f64>() + 0.1 * rng.sample::<f64, _>(rand_distr_normal());
            ((0..5).map(|j| (format!("x{j}"), x[j])).collect(), y)
        })
        .collect()
}

/// A logistic stream whose decision boundary rotates by `angle` radians at `rotate_at`.
fn rotating_stream(n: usize, rotate_at: Option<usize>, angle: f64, seed: u64) -> Vec<Row> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let a: f64 = rng.gen_range(-3.0..3.0);
            let b: f64 = rng.gen_range(-3.0..3.0);
            let theta = if rotate_at.is_some_and(|r| i >= r) {
                angle
            } else {
                0.0
            };
            let score = theta.cos() * a + theta.sin() * b;
            let label = if score > 0.0 { 1.0 } else { 0.0 };
            (vec![("a".into(), a), ("b".into(), b)], label)
        })
        .collect()
}

fn rand_distr_normal() -> impl rand::distributions::Distribution<f64> {
    // Box-Muller over the standard uniform: enough for test streams, no extra dependency.
    struct Normal;
    impl rand::distributions::Distribution<f64> for Normal {
        fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
            let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
            let u2: f64 = rng.gen();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }
    Normal
}

struct Run {
    detections: Vec<i64>,
    losses: Vec<f64>,
}

fn run(kind: ModelKind, config: LearnerConfig, rows: &[Row]) -> Run {
    let mut learner = Learner::new(kind, config);
    let mut losses = Vec::with_capacity(rows.len());
    for (features, label) in rows {
        let step = learner.learn(&Example::new(features.clone(), *label, 1.0).unwrap());
        losses.push(step.loss);
    }
    let detections = learner
        .take_drift_events()
        .iter()
        .map(|e| e.at_example)
        .collect();
    Run { detections, losses }
}

fn with(
    optimizer: OptimizerKind,
    rate: f64,
    detector: DetectorKind,
    adaptation: Adaptation,
) -> LearnerConfig {
    LearnerConfig {
        optimizer,
        learning_rate: rate,
        drift: DriftConfig {
            detector,
            adaptation,
            ..DriftConfig::default()
        },
        ..LearnerConfig::default()
    }
}

#[test]
fn detectors_fire_soon_after_an_abrupt_drift_and_never_on_stationary_streams() {
    let streams: Vec<(&str, ModelKind, Vec<Row>, Vec<Row>)> = vec![
        (
            "seed_stream",
            ModelKind::Linear,
            seed_stream(),
            linear_stream(2_000, None, 1),
        ),
        (
            "generated sign flip",
            ModelKind::Linear,
            linear_stream(2_000, Some(1_000), 2),
            linear_stream(2_000, None, 2),
        ),
        (
            "rotating boundary",
            ModelKind::Logistic,
            rotating_stream(4_000, Some(2_000), 2.5, 3),
            rotating_stream(4_000, None, 0.0, 3),
        ),
    ];
    for detector in [DetectorKind::PageHinkley, DetectorKind::Adwin] {
        for (name, kind, drifting, stationary) in &streams {
            let change = (drifting.len() / 2) as i64;
            let config = with(OptimizerKind::Sgd, 0.02, detector, Adaptation::None);
            let quiet = run(*kind, config.clone(), stationary);
            println!("{detector:?} {name} stationary: {:?}", quiet.detections);
            let noisy = run(*kind, config, drifting);
            println!("{detector:?} {name} drifting: {:?}", noisy.detections);
            assert!(
                quiet.detections.is_empty(),
                "{detector:?} {name}: false alarms {:?}",
                quiet.detections
            );
            let first = noisy.detections.iter().find(|&&at| at >= change).copied();
            let early: Vec<_> = noisy.detections.iter().filter(|&&at| at < change).collect();
            assert!(
                early.is_empty(),
                "{detector:?} {name}: alarms before the change {early:?}"
            );
            let delay = first.map(|at| at - change);
            assert!(
                delay.is_some_and(|d| d <= 300),
                "{detector:?} {name}: detection delay {delay:?}"
            );
        }
    }
}

#[test]
fn adaptation_lowers_the_loss_after_the_drift() {
    for (optimizer, rate, adaptation) in [
        (OptimizerKind::Sgd, 0.02, Adaptation::Boost),
        (OptimizerKind::Adagrad, 0.5, Adaptation::Reset),
        (OptimizerKind::Adagrad, 0.5, Adaptation::Boost),
    ] {
        for (name, kind, rows) in [
            ("seed_stream", ModelKind::Linear, seed_stream()),
            (
                "rotating",
                ModelKind::Logistic,
                rotating_stream(4_000, Some(2_000), 2.5, 3),
            ),
        ] {
            let change = rows.len() / 2;
            let off = run(
                kind,
                with(optimizer, rate, DetectorKind::Both, Adaptation::None),
                &rows,
            );
            let on = run(
                kind,
                with(optimizer, rate, DetectorKind::Both, adaptation),
                &rows,
            );
            let (loss_off, loss_on) = (
                mean(&off.losses[change..change + 500]),
                mean(&on.losses[change..change + 500]),
            );
            println!("{optimizer} {adaptation:?} {name}: off {loss_off:.4} on {loss_on:.4} detections {:?}", on.detections);
            assert!(
                loss_on < loss_off,
                "{optimizer} {adaptation:?} {name}: with {loss_on} vs without {loss_off}"
            );
        }
    }
}

async fn drift_rows(pool: &sqlx::PgPool, model: uuid::Uuid) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT at_example, detector FROM drift_events WHERE model_id = $1 ORDER BY id")
        .bind(model)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn worker_records_drifts_and_detector_state_survives_a_restart() {
    let db = TestDb::new().await;
    let rows = seed_stream();
    let config = with(
        OptimizerKind::Sgd,
        0.02,
        DetectorKind::Both,
        Adaptation::Boost,
    );
    let continuous = create_model(&db.pool, "continuous", ModelKind::Linear, config.clone()).await;
    let restarted = create_model(&db.pool, "restarted", ModelKind::Linear, config).await;
    insert_stream(&db.pool, continuous.model_id, &rows).await;
    drain(&db.pool, 100).await;
    // The other model: a worker drains the first 990 rows and stops; a new worker (fresh
    // process state, nothing cached) drains the rest, which holds the drift.
    insert_stream(&db.pool, restarted.model_id, &rows[..990]).await;
    drain(&db.pool, 100).await;
    insert_stream(&db.pool, restarted.model_id, &rows[990..]).await;
    drain(&db.pool, 64).await;

    let mut expected = learn_in_memory(&continuous, &rows);
    let expected_at: Vec<i64> = expected
        .take_drift_events()
        .iter()
        .map(|e| e.at_example)
        .collect();
    assert!(!expected_at.is_empty());
    for model in [&continuous, &restarted] {
        let got = drift_rows(&db.pool, model.model_id).await;
        let got_at: Vec<i64> = got.iter().map(|r| r.0).collect();
        assert_eq!(
            got_at, expected_at,
            "{}: same detections as one uninterrupted run",
            model.name
        );
        assert_params_equal(&db.pool, model.model_id, &expected).await;
        assert_linear_history(&db.pool, model.model_id).await;
    }
    // The boost is in the history: learning rates above the base rate right after the drift.
    let boosted: f64 =
        sqlx::query_scalar("SELECT max(learning_rate) FROM parameter_updates WHERE model_id = $1")
            .bind(continuous.model_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        boosted > 0.02 * 2.0,
        "boosted rate recorded in history: {boosted}"
    );
}

#[tokio::test]
async fn reset_adaptation_resets_parameters_the_worker_never_loaded() {
    let db = TestDb::new().await;
    // Dense features that drift, plus sparse indicators: many parameters are untouched by the
    // batch in which the drift is detected, and must be reset in the database all the same.
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let rows: Vec<Row> = seed_stream()
        .into_iter()
        .map(|(mut features, y)| {
            features.push((format!("tag{}", rng.gen_range(0..300)), 1.0));
            (features, y)
        })
        .collect();
    let config = with(
        OptimizerKind::Adagrad,
        0.5,
        DetectorKind::PageHinkley,
        Adaptation::Reset,
    );
    let model = create_model(&db.pool, "reset", ModelKind::Linear, config).await;
    insert_stream(&db.pool, model.model_id, &rows).await;
    drain(&db.pool, 50).await;
    let expected = learn_in_memory(&model, &rows);
    assert!(!drift_rows(&db.pool, model.model_id).await.is_empty());
    assert_params_equal(&db.pool, model.model_id, &expected).await;
    assert_linear_history(&db.pool, model.model_id).await;
}

#[tokio::test]
async fn guard_rolls_back_and_quarantines_a_poisoned_model_and_resume_loses_nothing() {
    let db = TestDb::new().await;
    let config = LearnerConfig {
        guard: olps::learner::GuardConfig {
            enabled: true,
            window: 300,
            ..Default::default()
        },
        ..LearnerConfig::default()
    };
    let model = create_model(&db.pool, "guarded", ModelKind::Logistic, config).await;
    let id = model.model_id;
    let clean = rotating_stream(6_000, None, 0.0, 21);
    insert_stream(&db.pool, id, &clean[..3_000]).await;
    drain(&db.pool, 100).await;
    let trained = committed::create_snapshot(&db.pool, id, Some("trained"))
        .await
        .unwrap();
    // A burst of flipped labels, then clean traffic, all queued at once.
    let poisoned: Vec<Row> = clean[3_000..4_000]
        .iter()
        .map(|(f, y)| (f.clone(), 1.0 - y))
        .collect();
    insert_stream(&db.pool, id, &poisoned).await;
    insert_stream(&db.pool, id, &clean[4_000..]).await;
    drain(&db.pool, 100).await;

    let (status, reason, version): (String, Option<String>, i64) =
        sqlx::query_as("SELECT status, status_reason, version FROM models WHERE model_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "quarantined");
    assert!(
        reason.as_deref().unwrap_or("").contains("guard"),
        "{reason:?}"
    );
    let (kind, to): (String, Option<i64>) = sqlx::query_as(
        "SELECT kind, rolled_back_to FROM model_versions WHERE model_id = $1 AND model_version = $2",
    )
    .bind(id)
    .bind(version)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(kind, "rollback");
    let target = to.unwrap();
    assert!(
        target >= trained.model_version,
        "rolled back to a snapshot at or after training"
    );
    // The parameters are those of the target version, bit for bit (zeroed extras aside).
    let at_target = committed::parameters_at(
        &db.pool,
        id,
        olps::timeline::reconstruct::At::Version(target),
    )
    .await
    .unwrap();
    let now = olps::params::load_all(&db.pool, id).await.unwrap();
    for p in &at_target.parameters {
        assert_eq!(
            state_bits(&now[&p.parameter_id]),
            state_bits(&p.state()),
            "{}",
            p.parameter_id
        );
    }
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM feedback_queue WHERE model_id = $1 AND status = 'pending'",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(pending > 0, "the quarantined model's feedback is kept");

    // Resume: learning continues and every event is applied exactly once. The rest of the
    // poisoned burst is still queued (nothing was dropped), so the guard may trip again until
    // it has gone through; each time the model is rolled back and waits for a resume.
    let mut resumes = 0;
    loop {
        assert!(olps::monitor::resume(&db.pool, id).await.unwrap());
        resumes += 1;
        drain(&db.pool, 100).await;
        let status: String = sqlx::query_scalar("SELECT status FROM models WHERE model_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if status == "active" {
            break;
        }
        assert!(resumes < 20, "the guard keeps tripping on clean traffic");
    }
    let (processed, total): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE processed), count(*) FROM feedback_events WHERE model_id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM models WHERE model_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "active");
    assert_eq!((processed, total), (6_000, 6_000));
    let queue: i64 = sqlx::query_scalar("SELECT count(*) FROM feedback_queue WHERE model_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(queue, 0);
    assert_linear_history(&db.pool, id).await;
}

#[tokio::test]
async fn metrics_endpoint_serves_the_loss_series_and_drift_events() {
    let app = spawn_app().await;
    let model = create_model(
        app.pool(),
        "seed",
        ModelKind::Linear,
        LearnerConfig::default(),
    )
    .await;
    insert_stream(app.pool(), model.model_id, &seed_stream()).await;
    drain(app.pool(), 100).await;
    let (status, body) = app.get("/v1/models/seed/metrics?window=500").await;
    assert_eq!(status, 200, "{body}");
    let points = body["loss"].as_array().unwrap();
    assert_eq!(points.len(), 4, "2,000 examples in windows of 500: {body}");
    let examples: i64 = points.iter().map(|p| p["examples"].as_i64().unwrap()).sum();
    assert_eq!(examples, 2_000);
    // The drift at row 1000 shows in the series and in the events.
    let loss = |i: usize| points[i]["mean_loss"].as_f64().unwrap();
    assert!(loss(2) > 10.0 * loss(1), "{body}");
    let drifts = body["drift_events"].as_array().unwrap();
    assert!(!drifts.is_empty());
    assert!(drifts
        .iter()
        .all(|d| d["at_example"].as_i64().unwrap() >= 1_000));
    let (status, body) = app
        .get("/v1/models/seed/metrics?from_version=11&to_version=12&window=1")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["loss"].as_array().unwrap().len(), 2);
    for bad in [
        "window=0",
        "from_version=5&to_version=2",
        "window=abc",
        "colour=red",
    ] {
        let (status, body) = app.get(&format!("/v1/models/seed/metrics?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"]["message"].is_string());
    }
    let (status, _) = app.get("/v1/models/nope/metrics").await;
    assert_eq!(status, 404);
    let (status, body) = app
        .post("/v1/models/seed/resume", &serde_json::json!({}))
        .await;
    assert_eq!((status, body["resumed"].as_bool()), (200, Some(false)));
}

/// Why ADWIN alone is the default: Page-Hinkley's threshold is in loss units and fires all the
/// time on an unscaled squared loss; ADWIN's variance-based cut stays quiet on the same streams.
#[test]
fn default_detector_stays_quiet_on_stationary_sparse_streams_where_page_hinkley_does_not() {
    let mut default_alarms = 0;
    let mut ph_alarms = 0;
    for (kind, rows) in [
        (
            ModelKind::Linear,
            sparse_stream(20_000, 10, 10_000, false, 1),
        ),
        (
            ModelKind::Logistic,
            sparse_stream(20_000, 10, 10_000, true, 2),
        ),
        (ModelKind::Linear, sparse_stream(20_000, 8, 200, false, 3)),
    ] {
        let defaults = LearnerConfig {
            drift: DriftConfig {
                adaptation: Adaptation::None,
                ..DriftConfig::default()
            },
            ..LearnerConfig::default()
        };
        default_alarms += run(kind, defaults, &rows).detections.len();
        let ph = with(
            OptimizerKind::Sgd,
            0.02,
            DetectorKind::PageHinkley,
            Adaptation::None,
        );
        ph_alarms += run(kind, ph, &rows).detections.len();
    }
    assert!(
        default_alarms <= 10,
        "{default_alarms} false alarms in 60,000 stationary examples"
    );
    assert!(
        ph_alarms > 100,
        "Page-Hinkley with published defaults: {ph_alarms}"
    );
}
