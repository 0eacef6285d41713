//! The learning worker against a real PostgreSQL: invariants 1, 2, 5 and 6, delayed labels, and
//! that it actually learns.

use std::time::Duration;

use olps::learner::{LearnerConfig, ModelKind, OptimizerKind};
use rand::{Rng, SeedableRng};

use crate::common::*;

const OPTIMIZERS: [(OptimizerKind, f64); 6] = [
    (OptimizerKind::Sgd, 0.02),
    (OptimizerKind::Adagrad, 0.5),
    (OptimizerKind::Rmsprop, 0.01),
    (OptimizerKind::Adam, 0.05),
    (OptimizerKind::Ftrl, 0.5),
    (OptimizerKind::Auto, 0.02),
];

fn config(optimizer: OptimizerKind, learning_rate: f64) -> LearnerConfig {
    LearnerConfig {
        optimizer,
        learning_rate,
        l2: 1e-4,
        l1: if optimizer == OptimizerKind::Ftrl {
            1e-3
        } else {
            0.0
        },
        ..LearnerConfig::default()
    }
}

#[tokio::test]
async fn stream_through_postgres_equals_learner_in_memory_for_every_optimizer() {
    let db = TestDb::new().await;
    let linear_rows = seed_stream();
    let logistic_rows = sparse_stream(1_500, 6, 40, true, 7);
    for (optimizer, rate) in OPTIMIZERS {
        for (kind, rows) in [
            (ModelKind::Linear, &linear_rows),
            (ModelKind::Logistic, &logistic_rows),
        ] {
            let name = format!("{optimizer}-{kind}");
            let model = create_model(&db.pool, &name, kind, config(optimizer, rate)).await;
            insert_stream(&db.pool, model.model_id, rows).await;
            // An odd batch size so batch edges fall everywhere.
            let stats = drain(&db.pool, 97).await;
            assert_eq!(stats.examples as usize, rows.len(), "{name}");
            let expected = learn_in_memory(&model, rows);
            assert_params_equal(&db.pool, model.model_id, &expected).await;
            let version = assert_linear_history(&db.pool, model.model_id).await;
            assert_eq!(
                version,
                rows.len().div_ceil(97) as i64,
                "{name}: one version per batch"
            );
        }
    }
}

/// The worker writes a parameter it holds as an update and one it lacks as an insert, without
/// probing the table (src/params.rs). A row removed by hand, outside a version, must then fail the
/// batch as a whole, not lose the update: the worker drops its cache, reads the table again and
/// learns the same rows on what the table holds, dead-lettering nothing.
#[tokio::test]
async fn a_parameter_row_changed_by_hand_fails_the_batch_and_the_retry_learns_from_the_table() {
    use olps::worker::{Worker, WorkerConfig};
    use tokio_util::sync::CancellationToken;

    let (db, model) = TestDb::with_model("by-hand", ModelKind::Linear).await;
    let rows = seed_stream();
    let (first, second) = rows[..600].split_at(300);
    // The second part also touches a parameter the worker has never seen, inserted by hand.
    let second: Vec<Row> = second
        .iter()
        .map(|(features, label)| {
            let mut features = features.clone();
            features.push(("by_hand".to_string(), 0.5));
            (features, *label)
        })
        .collect();
    let mut worker = Worker::new(
        db.pool.clone(),
        WorkerConfig {
            batch_size: 50,
            poll_interval: Duration::from_millis(20),
            until_empty: true,
            ..Default::default()
        },
    );
    insert_stream(&db.pool, model.model_id, first).await;
    let stats = worker.run(CancellationToken::new()).await.unwrap();
    assert_eq!((stats.examples, stats.failures), (300, 0));

    // By hand, with no new version: x2 removed, by_hand added.
    let removed =
        sqlx::query("DELETE FROM model_parameters WHERE model_id = $1 AND parameter_id = 'x2'")
            .bind(model.model_id)
            .execute(&db.pool)
            .await
            .unwrap();
    assert_eq!(removed.rows_affected(), 1);
    sqlx::query(
        "INSERT INTO model_parameters (model_id, parameter_id, current_value, version)
         VALUES ($1, 'by_hand', 0.25, 0)",
    )
    .bind(model.model_id)
    .execute(&db.pool)
    .await
    .unwrap();
    let version_before = current_version(&db.pool, model.model_id).await;
    let hand = olps::params::load(&db.pool, model.model_id, &["by_hand"])
        .await
        .unwrap();
    assert_eq!(hand.len(), 1);

    insert_stream(&db.pool, model.model_id, &second).await;
    let stats = worker.run(CancellationToken::new()).await.unwrap();
    assert_eq!(stats.examples, 300, "every row of the second part learned");
    assert_eq!(stats.dead, 0, "nothing dead-lettered: {stats:?}");
    assert!(
        stats.failures >= 1,
        "the first batch after the change must fail, not write over a missing row: {stats:?}"
    );

    // What the worker should have learned: the table as the hand left it, then the second part.
    let mut expected = learn_in_memory(&model, first);
    expected.params.remove("x2");
    expected.params.extend(hand);
    for (features, label) in &second {
        let example = olps::learner::Example::new(features.clone(), *label, 1.0).unwrap();
        expected.learn(&example);
    }
    assert_params_equal(&db.pool, model.model_id, &expected).await;
    // Exactly once: every event applied by one version, none twice.
    let (applied, versions): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT applied_version) FROM feedback_events
         WHERE model_id = $1 AND processed AND applied_version > $2",
    )
    .bind(model.model_id)
    .bind(version_before)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(applied, 300);
    assert_eq!(versions, 6, "batches of 50");
    // x2's history restarts at the version that re-created it, from no old value.
    let restarted: Option<f64> = sqlx::query_scalar(
        "SELECT old_value FROM parameter_updates
         WHERE model_id = $1 AND parameter_id = 'x2' AND model_version = $2",
    )
    .bind(model.model_id)
    .bind(version_before + 1)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(restarted, None);
}

#[tokio::test]
async fn learns_seed_stream_and_separable_stream_with_defaults() {
    let (db, linear) = TestDb::with_model("seed", ModelKind::Linear).await;
    let rows = seed_stream();
    insert_stream(&db.pool, linear.model_id, &rows).await;
    drain(&db.pool, 100).await;
    // Prequential loss: each example's squared error before it was learned, summed per version.
    let (examples, loss): (i64, f64) = sqlx::query_as(
        "SELECT sum(examples)::int8, sum(loss_sum) FROM (
             SELECT examples, loss_sum FROM model_versions WHERE model_id = $1
             ORDER BY model_version DESC LIMIT 5) last",
    )
    .bind(linear.model_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(examples, 500);
    let mse = loss / examples as f64;
    assert!(
        mse < 0.1,
        "prequential MSE over the last 500 examples: {mse}"
    );

    // Separable, unscaled logistic stream.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let rows: Vec<Row> = (0..4_000)
        .map(|_| {
            let a: f64 = rng.gen_range(-15.0..15.0);
            let b: f64 = rng.gen_range(-10.0..10.0);
            let label = if 2.0 * a - 3.0 * b + 0.5 > 0.0 {
                1.0
            } else {
                0.0
            };
            (vec![("a".to_string(), a), ("b".to_string(), b)], label)
        })
        .collect();
    let logistic = create_model(
        &db.pool,
        "sep",
        ModelKind::Logistic,
        LearnerConfig::default(),
    )
    .await;
    insert_stream(&db.pool, logistic.model_id, &rows).await;
    drain(&db.pool, 100).await;
    let (examples, correct): (i64, i64) = sqlx::query_as(
        "SELECT sum(examples)::int8, sum(correct)::int8 FROM model_versions WHERE model_id = $1",
    )
    .bind(logistic.model_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(examples, 4_000);
    let accuracy = correct as f64 / examples as f64;
    assert!(accuracy > 0.95, "prequential accuracy {accuracy}");
}

#[tokio::test]
async fn poison_rows_are_dead_lettered_and_the_batch_is_applied() {
    let (db, model) = TestDb::with_model("clf", ModelKind::Logistic).await;
    let id = model.model_id;
    let good = |i: i32| {
        format!(
            "('{id}', 'good-{i}', 'explicit', {}, 1.0, '{{\"features\": {{\"a\": {i}}}}}')",
            i % 2
        )
    };
    let poison: [(&str, &str); 8] = [
        (
            &format!("('{id}', 'p1', 'explicit', 1, 1.0, '{{\"features\": {{\"a\": \"x\"}}}}')"),
            "not a number",
        ),
        (
            &format!("('{id}', 'p2', 'explicit', 'NaN', 1.0, '{{\"features\": {{\"a\": 1}}}}')"),
            "NaN",
        ),
        (
            &format!(
                "('{id}', 'p3', 'explicit', 'Infinity', 1.0, '{{\"features\": {{\"a\": 1}}}}')"
            ),
            "inf",
        ),
        (
            &format!("('{id}', 'p4', 'explicit', 2.0, 1.0, '{{\"features\": {{\"a\": 1}}}}')"),
            "between 0 and 1",
        ),
        (
            &format!(
                "('{}', 'p5', 'explicit', 1, 1.0, '{{\"features\": {{\"a\": 1}}}}')",
                uuid::Uuid::new_v4()
            ),
            "unknown model",
        ),
        (
            &format!("('{id}', 'p6', 'explicit', 1, 1.0, '{{}}')"),
            "no features",
        ),
        (
            &format!("('{id}', 'p7', 'explicit', 1, 1.0, '{{\"features\": [1, 2]}}')"),
            "not an object",
        ),
        (
            &format!("('{id}', 'p8', 'explicit', 1, 'NaN', '{{\"features\": {{\"a\": 1}}}}')"),
            "confidence",
        ),
    ];
    let mut values: Vec<String> = Vec::new();
    for i in 0..10 {
        values.push(good(i));
        if let Some((p, _)) = poison.get(i as usize) {
            values.push(p.to_string());
        }
    }
    sqlx::query(&format!(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, confidence, metadata) VALUES {}",
        values.join(", ")
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let stats = drain(&db.pool, 1000).await;
    assert_eq!((stats.examples, stats.dead), (10, 8), "{stats:?}");
    let dead: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT e.entity_id, q.dead_reason, e.processed FROM feedback_queue q
         JOIN feedback_events e ON e.model_id = q.model_id AND e.id = q.feedback_id
         WHERE q.status = 'dead' ORDER BY e.entity_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(dead.len(), 8);
    for ((entity, reason, processed), (_, needle)) in dead.iter().zip(poison.iter()) {
        assert!(
            reason.contains(needle),
            "{entity}: reason {reason:?} should mention {needle}"
        );
        assert!(
            !processed,
            "{entity}: a dead-lettered event stays unprocessed"
        );
    }
    let (version, seen): (i64, i64) =
        sqlx::query_as("SELECT version, examples_seen FROM models WHERE model_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((version, seen), (1, 10));
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM feedback_queue WHERE status = 'pending'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(pending, 0, "the queue kept draining");
    // The applied batch equals the learner over the good rows alone.
    let rows: Vec<Row> = (0..10)
        .map(|i| (vec![("a".to_string(), i as f64)], (i % 2) as f64))
        .collect();
    assert_params_equal(&db.pool, id, &learn_in_memory(&model, &rows)).await;
}

#[tokio::test]
async fn delayed_labels_train_on_the_latest_logged_prediction() {
    let (db, model) = TestDb::with_model("delayed", ModelKind::Logistic).await;
    let id = model.model_id;
    sqlx::query(
        "INSERT INTO prediction_log (model_id, entity_id, features, prediction, model_version) VALUES
         ($1, 'u1', '{\"old\": 1}', 0.5, 0),
         ($1, 'u1', '{\"amount\": 3.5, \"country=US\": 1}', 0.5, 0),
         ($1, 'u2', '{\"amount\": -1}', 0.5, 0)",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    // Labels without features (the documented SQL insert, minus the features).
    sqlx::query(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value)
         VALUES ($1, 'u1', 'explicit', 1), ($1, 'u2', 'explicit', 0), ($1, 'u3', 'explicit', 1)",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    let stats = drain(&db.pool, 100).await;
    assert_eq!(
        (stats.examples, stats.dead),
        (2, 1),
        "u3 has no logged prediction"
    );
    let rows: Vec<Row> = vec![
        (
            vec![("amount".into(), 3.5), ("country=US".into(), 1.0)],
            1.0,
        ),
        (vec![("amount".into(), -1.0)], 0.0),
    ];
    assert_params_equal(&db.pool, id, &learn_in_memory(&model, &rows)).await;
    let reason: String =
        sqlx::query_scalar("SELECT dead_reason FROM feedback_queue WHERE status = 'dead'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(reason.contains("u3"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_over_three_models_keep_lines_and_match_a_single_worker() {
    let db = TestDb::new().await;
    let mut models = Vec::new();
    for (i, optimizer) in [OptimizerKind::Adam, OptimizerKind::Sgd, OptimizerKind::Ftrl]
        .into_iter()
        .enumerate()
    {
        let rate = OPTIMIZERS.iter().find(|o| o.0 == optimizer).unwrap().1;
        let kind = if i == 1 {
            ModelKind::Linear
        } else {
            ModelKind::Logistic
        };
        let model = create_model(&db.pool, &format!("m{i}"), kind, config(optimizer, rate)).await;
        let rows = sparse_stream(3_000, 8, 200, kind == ModelKind::Logistic, 100 + i as u64);
        insert_stream(&db.pool, model.model_id, &rows).await;
        models.push((model, rows));
    }
    let workers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(run_worker(db.pool.clone(), 50, Duration::from_millis(10))))
        .collect();
    let mut total = 0;
    let mut busy_workers = 0;
    for w in workers {
        let stats = w.await.unwrap();
        total += stats.examples;
        busy_workers += (stats.batches > 0) as usize;
    }
    assert_eq!(total, 9_000, "every event applied exactly once");
    assert!(busy_workers >= 2, "workers spread over models");
    for (model, rows) in &models {
        assert_linear_history(&db.pool, model.model_id).await;
        assert_params_equal(&db.pool, model.model_id, &learn_in_memory(model, rows)).await;
    }
    let unprocessed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM feedback_events WHERE NOT processed")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(unprocessed, 0);
}

#[tokio::test]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let db = TestDb::new().await;
    let settings = config(OptimizerKind::Adagrad, 0.5);
    let model = create_model(&db.pool, "killme", ModelKind::Linear, settings).await;
    let rows = sparse_stream(20_000, 10, 500, false, 3);
    insert_stream(&db.pool, model.model_id, &rows).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    // Fixed batches and the default adaptive ones (each restart starts small and grows) in turn.
    let spawn = |until_empty: bool, adaptive: bool| {
        let batches: &[&str] = if adaptive {
            &["--min-batch", "10", "--max-batch", "250"]
        } else {
            &["--batch-size", "250"]
        };
        let args = [&["--poll-interval-ms", "20"][..], batches].concat();
        spawn_quiet_worker(&db.url, &args, until_empty)
    };
    let applied = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM feedback_events WHERE processed")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    let mut kills = 0;
    for round in 0..6 {
        let mut child = spawn(false, round % 2 == 1);
        let before = applied().await;
        // Kill once it has made progress (or after a bounded wait), at a random moment.
        let wait = Duration::from_millis(rng.gen_range(50..400));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        tokio::time::sleep(wait).await;
        while applied().await == before && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..60))).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        kills += 1;
        if applied().await == 20_000 {
            break;
        }
    }
    assert!(kills >= 2);
    let status = spawn(true, true).wait().unwrap();
    assert!(status.success());
    assert_eq!(applied().await, 20_000);
    let (queue, versioned): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM feedback_queue),
                (SELECT sum(examples)::int8 FROM model_versions WHERE model_id = $1)",
    )
    .bind(model.model_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (queue, versioned),
        (0, 20_000),
        "no queue rows left; each event counted once"
    );
    // Each event applied by exactly one version, and the versions are a line.
    let unattributed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM feedback_events e LEFT JOIN model_versions v
           ON v.model_id = e.model_id AND v.model_version = e.applied_version
         WHERE v.model_version IS NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(unattributed, 0);
    assert_linear_history(&db.pool, model.model_id).await;
    // Exactly once and in order: the result equals one uninterrupted pass in memory.
    assert_params_equal(&db.pool, model.model_id, &learn_in_memory(&model, &rows)).await;
}

/// Adaptive batching (the default of `olps worker`): batch sizes follow the backlog — small from
/// a shallow queue, doubling under a backlog up to the maximum, small again after a burst — and
/// whatever the sizes, every event is applied once, each batch is one version, the history is
/// linear and the parameters equal the learner's in memory bit for bit.
#[tokio::test]
async fn adaptive_batches_vary_with_the_backlog_and_change_nothing_learned() {
    use olps::worker::batching::AdaptiveBatching;
    use olps::worker::{BatchOutcome, Worker, WorkerConfig};

    let db = TestDb::new().await;
    let model = create_model(
        &db.pool,
        "adaptive",
        ModelKind::Logistic,
        config(OptimizerKind::Adam, 0.05),
    )
    .await;
    let id = model.model_id;
    let rows = sparse_stream(1_269, 6, 60, true, 23);
    // A budget no batch here comes near: the sizes depend on the backlog alone.
    let bounds = AdaptiveBatching {
        min: 3,
        max: 150,
        budget: Duration::from_secs(3600),
    };
    let mut worker = Worker::new(
        db.pool.clone(),
        WorkerConfig {
            models: vec![id],
            adaptive: Some(bounds),
            ..WorkerConfig::default()
        },
    );
    let mut applied = Vec::new();
    // A trickle (shallow queue), a large burst (a backlog), then a small burst.
    for phase in [&rows[..20], &rows[20..1_229], &rows[1_229..]] {
        insert_stream(&db.pool, id, phase).await;
        loop {
            match worker.run_batch(id).await.unwrap() {
                BatchOutcome::Applied { examples, dead, .. } => {
                    assert_eq!(dead, 0);
                    applied.push(examples as i64);
                }
                BatchOutcome::Empty => break,
                other => panic!("unexpected batch outcome {other:?}"),
            }
        }
    }

    // The sizes the worker chose, as the versions recorded them.
    let sizes: Vec<i64> = sqlx::query_scalar(
        "SELECT examples::int8 FROM model_versions WHERE model_id = $1 ORDER BY model_version",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(sizes, applied, "one version per applied batch");
    assert_eq!(sizes.iter().sum::<i64>(), rows.len() as i64);
    // From the minimum, doubling while claims come back full; a claim that empties the queue
    // sets the next limit to twice what it found: 20 rows (3, 6, then the 11 left); the burst
    // of 1,209 from twice 11 up to the maximum (22 … 150), ending with the 5 left; the last
    // 40 rows from twice 5 (10, 20, then the 10 left).
    let mut expected_sizes = vec![3, 6, 11, 22, 44, 88];
    expected_sizes.extend([150; 7]);
    expected_sizes.extend([5, 10, 20, 10]);
    assert_eq!(sizes, expected_sizes);

    // Exactly once: every event processed by a version, none pending, none dead.
    let (processed, unapplied, queued): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE processed),
                count(*) FILTER (WHERE applied_version IS NULL),
                (SELECT count(*) FROM feedback_queue WHERE model_id = $1)
         FROM feedback_events WHERE model_id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((processed, unapplied, queued), (rows.len() as i64, 0, 0));
    let expected = learn_in_memory(&model, &rows);
    assert_params_equal(&db.pool, id, &expected).await;
    let version = assert_linear_history(&db.pool, id).await;
    assert_eq!(version, sizes.len() as i64);
}

#[test]
fn worker_batch_flags_choose_fixed_or_adaptive_batches() {
    use clap::Parser;
    let parse = |args: &[&str]| {
        olps::cli::Cli::try_parse_from(std::iter::once("olps").chain(args.iter().copied()))
    };
    let worker = |args: &[&str]| match parse(args).expect("parses").command {
        olps::cli::Command::Worker(w) => w,
        other => panic!("parsed as {other:?}"),
    };
    let defaults = worker(&["worker"]);
    assert_eq!(defaults.batch_size, None, "adaptive by default");
    assert_eq!(
        (
            defaults.min_batch,
            defaults.max_batch,
            defaults.batch_budget_ms
        ),
        (1000, 20_000, 1000)
    );
    let fixed = worker(&["worker", "--batch-size", "250"]);
    assert_eq!(fixed.batch_size, Some(250));
    let bounded = worker(&["worker", "--max-batch", "5000", "--batch-budget-ms", "100"]);
    assert_eq!((bounded.max_batch, bounded.batch_budget_ms), (5000, 100));
    // A fixed size and adaptive bounds contradict each other: refused, naming both.
    let err = parse(&["worker", "--batch-size", "250", "--max-batch", "5000"])
        .expect_err("conflicting flags")
        .to_string();
    assert!(
        err.contains("--batch-size") && err.contains("--max-batch"),
        "{err}"
    );
    assert!(parse(&["worker", "--min-batch", "0"]).is_err());
}
