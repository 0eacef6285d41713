//! The worker, the learner in memory over the same rows, and the invariants between them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use olps::learner::ParamState;
use olps::worker::{BatchOutcome, Worker, WorkerConfig, WorkerStats};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Row;

/// Runs an in-process worker until the queue is empty.
pub async fn drain(pool: &PgPool, batch_size: i64) -> WorkerStats {
    run_worker(pool.clone(), batch_size, Duration::from_millis(20)).await
}

/// An in-process worker over all models, polling every `poll_interval`, until the queue is
/// empty (to spawn several).
pub async fn run_worker(pool: PgPool, batch_size: i64, poll_interval: Duration) -> WorkerStats {
    let config = WorkerConfig {
        batch_size,
        poll_interval,
        until_empty: true,
        ..Default::default()
    };
    Worker::new(pool, config)
        .run(CancellationToken::new())
        .await
        .unwrap()
}

/// The parameters of a model, by name.
pub type State = HashMap<String, ParamState>;

/// A model as stored now, as `step_all` records it after each version: its parameters
/// (`State`), or what a test module needs besides.
pub trait Stored: Sized {
    async fn load(pool: &PgPool, id: Uuid) -> Self;
}

impl Stored for State {
    async fn load(pool: &PgPool, id: Uuid) -> State {
        olps::params::load_all(pool, id).await.unwrap()
    }
}

/// Applies the model's queue one batch (one version) at a time, recording every version.
pub async fn step_all<S: Stored>(
    pool: &PgPool,
    id: Uuid,
    batch: i64,
    recorded: &mut BTreeMap<i64, S>,
) {
    let config = WorkerConfig {
        batch_size: batch,
        models: vec![id],
        ..Default::default()
    };
    let mut worker = Worker::new(pool.clone(), config);
    loop {
        match worker.run_batch(id).await.unwrap() {
            BatchOutcome::Applied { version, .. } => {
                recorded.insert(version, S::load(pool, id).await);
            }
            BatchOutcome::Empty => break,
            other => panic!("unexpected batch outcome {other:?}"),
        }
    }
}

/// The learner run in memory over the same rows in the same order.
pub fn learn_in_memory(model: &olps::models::Model, rows: &[Row]) -> olps::learner::Learner {
    let mut learner = olps::learner::Learner::new(model.kind, model.settings.clone());
    for (features, label) in rows {
        let example = olps::learner::Example::new(features.clone(), *label, 1.0).unwrap();
        learner.learn(&example);
    }
    learner
}

pub fn state_bits(s: &olps::learner::ParamState) -> [u64; 6] {
    [
        s.value.to_bits(),
        s.m.to_bits(),
        s.v.to_bits(),
        s.count as u64,
        s.mean.to_bits(),
        s.m2.to_bits(),
    ]
}

/// Asserts the stored parameters equal the in-memory learner's, bit for bit.
pub async fn assert_params_equal(
    pool: &PgPool,
    model_id: uuid::Uuid,
    expected: &olps::learner::Learner,
) {
    let stored = olps::params::load_all(pool, model_id).await.unwrap();
    assert_eq!(
        stored.len(),
        expected.params.len(),
        "parameter sets differ in size"
    );
    for (name, state) in &expected.params {
        let got = stored
            .get(name)
            .unwrap_or_else(|| panic!("parameter {name} missing"));
        assert_eq!(
            state_bits(got),
            state_bits(state),
            "parameter {name}: stored {got:?}, in memory {state:?}"
        );
    }
    let seen: i64 = sqlx::query_scalar("SELECT examples_seen FROM models WHERE model_id = $1")
        .bind(model_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(seen, expected.examples_seen);
    // The model-level learner state too (drift detectors, the `auto` race's ranking).
    let state: serde_json::Value =
        sqlx::query_scalar("SELECT learner_state FROM models WHERE model_id = $1")
            .bind(model_id)
            .fetch_one(pool)
            .await
            .unwrap();
    let state: olps::learner::ModelState = serde_json::from_value(state).unwrap();
    assert_eq!(state, expected.model_state(), "learner_state");
}

/// Invariant 2: versions 1..=current without gaps, each history row's old_value is the previous
/// row's new_value, and current_value is the last new_value. Returns the current version.
pub async fn assert_linear_history(pool: &PgPool, model_id: uuid::Uuid) -> i64 {
    let current: i64 = sqlx::query_scalar("SELECT version FROM models WHERE model_id = $1")
        .bind(model_id)
        .fetch_one(pool)
        .await
        .unwrap();
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT model_version FROM model_versions WHERE model_id = $1 ORDER BY model_version",
    )
    .bind(model_id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        versions,
        (1..=current).collect::<Vec<_>>(),
        "version line has gaps or repeats"
    );
    let stray: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM parameter_updates WHERE model_id = $1 AND model_version NOT BETWEEN 1 AND $2",
    )
    .bind(model_id)
    .bind(current)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(stray, 0, "history rows outside the version line");
    let broken: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT old_value, lag(new_value) OVER w AS prev, row_number() OVER w AS rn
             FROM parameter_updates WHERE model_id = $1
             WINDOW w AS (PARTITION BY parameter_id ORDER BY model_version)
         ) t
         WHERE (rn = 1 AND old_value IS NOT NULL) OR (rn > 1 AND old_value IS DISTINCT FROM prev)",
    )
    .bind(model_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        broken, 0,
        "history rows whose old_value is not the previous new_value"
    );
    let mismatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM model_parameters p
         LEFT JOIN LATERAL (SELECT new_value, model_version FROM parameter_updates u
                            WHERE u.model_id = p.model_id AND u.parameter_id = p.parameter_id
                            ORDER BY model_version DESC LIMIT 1) last ON TRUE
         WHERE p.model_id = $1
           AND (last.new_value IS DISTINCT FROM p.current_value OR last.model_version IS DISTINCT FROM p.version)",
    )
    .bind(model_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        mismatched, 0,
        "current values that are not the last history row's new_value"
    );
    current
}
