//! Nothing wedges (issue 13, the worker and learner side): a batch the database refuses is split
//! until the rows that cause it are set aside and the rest is applied once; a model whose stored
//! state is unreadable stops only itself; the labels the worker writes cannot collide with a
//! user's.

use std::collections::BTreeMap;
use std::time::Duration;

use olps::learner::drift::Adaptation;
use olps::learner::{Example, Learner, LearnerConfig, ModelKind};
use olps::timeline::error::TimelineError;
use olps::worker::{BatchOutcome, Worker, WorkerConfig};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::*;

/// A counter of olps' process-wide metrics registry (0 when absent).
fn counter(name: &str, labels: &[(&str, &str)]) -> f64 {
    olps::metrics::global()
        .registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .filter(|metric| {
            labels.iter().all(|(k, v)| {
                metric
                    .get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|metric| metric.get_counter().get_value())
        .sum()
}

/// Drains the queue with an in-process worker, as `olps worker --until-empty` would.
async fn drain_with(pool: &PgPool, config: WorkerConfig) -> olps::worker::WorkerStats {
    let config = WorkerConfig {
        until_empty: true,
        poll_interval: Duration::from_millis(20),
        ..config
    };
    tokio::time::timeout(
        Duration::from_secs(120),
        Worker::new(pool.clone(), config).run(CancellationToken::new()),
    )
    .await
    .expect("the queue drains: no model retries a failing batch forever")
    .unwrap()
}

async fn dead_letters(pool: &PgPool, model: Uuid) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT e.entity_id, q.dead_reason FROM feedback_queue q
         JOIN feedback_events e ON e.model_id = q.model_id AND e.id = q.feedback_id
         WHERE q.model_id = $1 AND q.status = 'dead' ORDER BY q.seq",
    )
    .bind(model)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_batch_the_database_refuses_is_split_until_the_failing_rows_are_set_aside() {
    let name = "isolation-poison";
    let (db, model) = TestDb::with_model(name, ModelKind::Linear).await;
    let pool = &db.pool;
    // A failure no check of the worker anticipates: the database refuses the parameter `poison`.
    sqlx::query(
        "ALTER TABLE model_parameters ADD CONSTRAINT no_poison CHECK (parameter_id <> 'poison')",
    )
    .execute(pool)
    .await
    .unwrap();
    let mut rows = sparse_stream(600, 3, 30, false, 21);
    let poisoned = [0usize, 37, 38, 250, 599];
    for &i in &poisoned {
        rows[i].0.push(("poison".to_string(), 1.0));
        rows[i].0.sort_by(|a, b| a.0.cmp(&b.0));
    }
    insert_stream(pool, model.model_id, &rows).await;
    let set_aside_before = counter("olps_worker_rows_set_aside_total", &[("model", name)]);

    let stats = drain_with(
        pool,
        WorkerConfig {
            batch_size: 97,
            ..WorkerConfig::default()
        },
    )
    .await;

    // The rows that fail are set aside with the database's own message ...
    let dead = dead_letters(pool, model.model_id).await;
    let expected: Vec<String> = poisoned.iter().map(|i| format!("e{i}")).collect();
    assert_eq!(
        dead.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
        expected
    );
    for (entity, reason) in &dead {
        assert!(
            reason.contains(
                "new row for relation \"model_parameters\" violates check constraint \"no_poison\""
            ) && reason.contains("SQLSTATE 23514"),
            "{entity}: {reason}"
        );
    }
    assert_eq!(
        counter("olps_worker_rows_set_aside_total", &[("model", name)]) - set_aside_before,
        poisoned.len() as f64
    );
    // ... after a bounded number of attempts: about log2(97) per bad row.
    assert!(
        stats.failures >= poisoned.len() as u64 && stats.failures <= 8 * poisoned.len() as u64,
        "failed attempts: {}",
        stats.failures
    );
    // Every other row is applied exactly once, in queue order, one version per applied claim.
    let good: Vec<Row> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| !poisoned.contains(i))
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(stats.examples as usize, good.len());
    let (applied, unapplied): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE applied_version IS NOT NULL AND processed),
                count(*) FILTER (WHERE applied_version IS NULL AND NOT processed)
         FROM feedback_events WHERE model_id = $1",
    )
    .bind(model.model_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (applied, unapplied),
        (good.len() as i64, poisoned.len() as i64)
    );
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM feedback_queue WHERE status = 'pending'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(pending, 0);
    let version = assert_linear_history(pool, model.model_id).await;
    let (examples, batches): (i64, i64) = sqlx::query_as(
        "SELECT sum(examples)::int8, count(*) FROM model_versions WHERE model_id = $1",
    )
    .bind(model.model_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(examples as usize, good.len());
    assert_eq!(
        (batches, version),
        (stats.batches as i64, stats.batches as i64)
    );
    // And the model is bit for bit the learner in memory over the good rows.
    assert_params_equal(pool, model.model_id, &learn_in_memory(&model, &good)).await;
}

#[tokio::test]
async fn transient_failures_are_told_apart_from_failures_the_rows_may_cause() {
    let db = TestDb::new().await;
    let error = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            olps::worker::WorkerError::from(sqlx::query(sql).execute(&pool).await.unwrap_err())
        }
    };
    // The rows may cause these: split the batch.
    for sql in ["SELECT 1 / 0", "SELECT 'x'::int", "SELECT '1e400'::float8"] {
        assert!(!error(sql).await.is_transient(), "{sql}");
    }
    // These say nothing about the rows: retry them as they are.
    for sql in [
        "SELECT pg_terminate_backend(pg_backend_pid())",
        "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'serialization_failure'; END $$",
        "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'deadlock_detected'; END $$",
    ] {
        assert!(error(sql).await.is_transient(), "{sql}");
    }
}

#[tokio::test]
async fn a_model_with_unreadable_state_fails_alone_and_the_others_keep_working() {
    let app = spawn_app().await;
    let pool = app.pool().clone();
    let broken_state = app.create_model("unreadable-state", "linear").await;
    let broken_settings = app.create_model("unreadable-settings", "linear").await;
    let healthy = app.create_model("readable", "linear").await;
    let rows = sparse_stream(200, 3, 10, false, 4);
    for id in [broken_state, broken_settings, healthy] {
        insert_stream(&pool, id, &rows).await;
    }
    sqlx::query(r#"UPDATE models SET learner_state = '{"drift": null}' WHERE model_id = $1"#)
        .bind(broken_state)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(r#"UPDATE models SET settings = '"garbage"' WHERE model_id = $1"#)
        .bind(broken_settings)
        .execute(&pool)
        .await
        .unwrap();

    // The worker drains every other model and leaves the broken ones' feedback queued.
    let stats = drain_with(&pool, WorkerConfig::default()).await;
    assert_eq!(stats.examples, 200);
    assert_eq!(current_version(&pool, healthy).await, 1);
    for id in [broken_state, broken_settings] {
        let (pending, version): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM feedback_queue WHERE model_id = $1 AND status = 'pending'),
                    (SELECT version FROM models WHERE model_id = $1)",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            (pending, version),
            (200, 0),
            "the broken model's feedback is kept"
        );
    }

    // Only the broken models' routes fail, with their own code; listing works.
    let (status, body) = app.get("/v1/models").await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["readable"]);
    for name in ["unreadable-state", "unreadable-settings"] {
        for (path, body) in [
            (format!("/v1/models/{name}"), None),
            (
                format!("/v1/models/{name}/predict"),
                Some(serde_json::json!({"features": {"f1": 1}})),
            ),
        ] {
            let (status, answer) = match &body {
                None => app.get(&path).await,
                Some(body) => app.post(&path, body).await,
            };
            assert_eq!(status, 500, "{path}: {answer}");
            assert_eq!(
                answer["error"]["code"], "model_state_unreadable",
                "{answer}"
            );
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("model '{name}'")),
                "{answer}"
            );
        }
    }
    let (status, answer) = app.get("/v1/models/readable").await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = app
        .post(
            "/v1/models/readable/predict",
            &serde_json::json!({"features": {"f1": 1}}),
        )
        .await;
    assert_eq!((status, &answer["version"]), (200, &serde_json::json!(1)));

    // The command line lists every model, the broken ones marked.
    let cli = Cli::new(&app.db.url);
    let (args, out) = cli.run("model list").await;
    let listing = stdout(&out);
    assert!(out.status.success(), "{}", describe(&args, &out));
    for (name, status) in [
        ("readable", "active"),
        ("unreadable-state", "unreadable"),
        ("unreadable-settings", "unreadable"),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.contains(name) && l.trim_end().ends_with(status)),
            "{name} {status}:\n{listing}"
        );
    }
    assert!(stderr(&out).contains("is unreadable"), "{}", stderr(&out));
    let json: serde_json::Value =
        serde_json::from_str(&cli.ok("model list --format json").await).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);

    // Repaired, the model learns its kept feedback, once.
    sqlx::query("UPDATE models SET learner_state = '{}' WHERE model_id = $1")
        .bind(broken_state)
        .execute(&pool)
        .await
        .unwrap();
    let stats = drain_with(
        &pool,
        WorkerConfig {
            models: vec![broken_state],
            ..WorkerConfig::default()
        },
    )
    .await;
    assert_eq!(stats.examples, 200);
    assert_eq!(current_version(&pool, broken_state).await, 1);
}

#[tokio::test]
async fn a_users_label_never_collides_with_the_labels_the_worker_writes() {
    const BATCH: usize = 100;
    let db = TestDb::new().await;
    let pool = &db.pool;
    let rows = seed_stream();
    // The version whose batch adapts to a drift, from the learner in memory.
    let config = LearnerConfig::default();
    let mut learner = Learner::new(ModelKind::Linear, config.clone());
    let drift_version = rows
        .chunks(BATCH)
        .position(|chunk| {
            for (features, label) in chunk {
                learner.learn(&Example::new(features.clone(), *label, 1.0).unwrap());
            }
            learner
                .take_drift_events()
                .iter()
                .any(|e| e.adaptation != Adaptation::None)
        })
        .expect("the seed stream drifts") as i64
        + 1;

    let model = create_model(pool, "labels", ModelKind::Linear, config).await;
    let id = model.model_id;
    // A user takes, first, the label the worker used to give its snapshot before that drift.
    let taken = format!("auto-before-adaptation-v{drift_version}");
    committed::create_snapshot(pool, id, Some(&taken))
        .await
        .unwrap();
    insert_stream(pool, id, &rows).await;
    let mut recorded: BTreeMap<i64, State> = BTreeMap::new();
    step_all(pool, id, BATCH as i64, &mut recorded).await;
    assert_eq!(
        assert_linear_history(pool, id).await,
        (rows.len() / BATCH) as i64
    );
    assert_params_equal(pool, id, &learn_in_memory(&model, &rows)).await;

    // The worker's snapshot lives in its own namespace; the user's is untouched.
    let snapshots: Vec<(Option<String>, String, i64)> = committed::list_snapshots(pool, id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.label, s.kind.to_string(), s.model_version))
        .collect();
    assert!(
        snapshots.contains(&(Some(taken.clone()), "manual".into(), 0)),
        "{snapshots:?}"
    );
    let system = format!("olps:before-adaptation-v{drift_version}");
    assert!(
        snapshots.contains(&(Some(system.clone()), "auto".into(), drift_version - 1)),
        "{snapshots:?}"
    );
    // A user cannot create a label in that namespace: not through olps ...
    for label in [
        format!("olps:before-adaptation-v{}", drift_version + 100),
        "OLPS:mine".to_string(),
    ] {
        match committed::create_snapshot(pool, id, Some(&label)).await {
            Err(TimelineError::InvalidArgument(m)) => assert!(m.contains("reserved"), "{m}"),
            other => panic!("{label}: {other:?}"),
        }
    }
    // ... nor by SQL.
    let refused = sqlx::query(
        "INSERT INTO snapshots (model_id, model_version, label) VALUES ($1, 0, 'olps:mine')",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("snapshots_system_label"),
        "{refused}"
    );
    // The system's snapshot is a rollback target by its label.
    let target = olps::timeline::rollback::RollbackTarget::Snapshot(system);
    committed::rollback(pool, id, &target).await.unwrap();
}

#[tokio::test]
async fn the_migration_moves_the_workers_old_labels_into_its_namespace() {
    let (db, model) = TestDb::with_model("old-labels", ModelKind::Linear).await;
    let pool = &db.pool;
    sqlx::query("ALTER TABLE snapshots DROP CONSTRAINT snapshots_system_label")
        .execute(pool)
        .await
        .unwrap();
    for (label, kind) in [
        ("auto-before-adaptation-v7", "auto"),
        ("auto-before-adaptation-v9", "manual"),
        ("olps:mine", "manual"),
        ("keep me", "manual"),
    ] {
        sqlx::query(
            "INSERT INTO snapshots (model_id, model_version, label, kind) VALUES ($1, 0, $2, $3)",
        )
        .bind(model.model_id)
        .bind(label)
        .bind(kind)
        .execute(pool)
        .await
        .unwrap();
    }
    let migration = include_str!("../../migrations/V20__nothing_wedges.sql");
    let labels_part = &migration[..migration
        .find("CREATE FUNCTION")
        .expect("the migration creates the statistics function after the labels part")];
    sqlx::raw_sql(labels_part).execute(pool).await.unwrap();
    let labels: Vec<(String, String)> =
        sqlx::query_as("SELECT label, kind FROM snapshots WHERE model_id = $1 ORDER BY label")
            .bind(model.model_id)
            .fetch_all(pool)
            .await
            .unwrap();
    let expected = [
        ("auto-before-adaptation-v9", "manual"),
        ("keep me", "manual"),
        ("olps:before-adaptation-v7", "auto"),
        ("user-olps:mine", "manual"),
    ];
    assert_eq!(
        labels,
        expected
            .iter()
            .map(|(l, k)| (l.to_string(), k.to_string()))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_failed_batch_changes_nothing_and_the_next_claim_is_smaller() {
    let (db, model) = TestDb::with_model("isolation-steps", ModelKind::Linear).await;
    let pool = &db.pool;
    sqlx::query(
        "ALTER TABLE parameter_updates ADD CONSTRAINT no_poison CHECK (parameter_id <> 'poison')",
    )
    .execute(pool)
    .await
    .unwrap();
    let mut rows = sparse_stream(8, 2, 5, false, 3);
    rows[5].0.push(("poison".into(), 1.0));
    insert_stream(pool, model.model_id, &rows).await;
    let config = WorkerConfig {
        batch_size: 8,
        ..WorkerConfig::default()
    };
    let mut worker = Worker::new(pool.clone(), config);
    let mut outcomes = Vec::new();
    loop {
        match worker.run_batch(model.model_id).await {
            Ok(BatchOutcome::Empty) => break,
            Ok(BatchOutcome::Applied { examples, .. }) => {
                outcomes.push(format!("applied {examples}"))
            }
            Ok(other) => outcomes.push(format!("{other:?}")),
            Err(e) => {
                assert!(e.to_string().contains("no_poison"), "{e}");
                // Nothing of a failed attempt is stored.
                assert_eq!(current_version(pool, model.model_id).await as usize, {
                    outcomes.iter().filter(|o| o.starts_with("applied")).count()
                });
                outcomes.push("failed".into());
            }
        }
        assert!(outcomes.len() < 20, "{outcomes:?}");
    }
    // 8 rows, the 6th bad: 8 fail; 4 applied; 4 fail; 2 fail (the 5th and 6th); the 5th
    // applied; the 6th alone fails and is set aside at once; the remaining 2 in one batch.
    assert_eq!(
        outcomes,
        [
            "failed",
            "applied 4",
            "failed",
            "failed",
            "applied 1",
            "DeadOnly { dead: 1 }",
            "applied 2"
        ]
    );
    assert_linear_history(pool, model.model_id).await;
}
