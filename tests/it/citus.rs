//! olps on Citus: what only a distributed cluster can show. Run with DATABASE_URL at a Citus
//! coordinator with worker nodes (`.ci/run` starts one with the machine's shared citus-cluster script and
//! runs these with `--ignored citus::`, after the invariant suites against the same coordinator);
//! on a single server they are skipped as ignored, since there is nothing to distribute.

use std::time::{Duration, Instant};

use olps::learner::{LearnerConfig, ModelKind};
use olps::worker::{Worker, WorkerConfig};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::*;

const NEEDS_CITUS: &str = "needs DATABASE_URL at a Citus coordinator";

/// The worker node (host:port) holding the shard of `table` for `model_id`.
async fn node_of(pool: &PgPool, table: &str, model_id: Uuid) -> String {
    sqlx::query_scalar(
        "SELECT s.nodename || ':' || s.nodeport FROM citus_shards s
         WHERE s.shardid = get_shard_id_for_distribution_column($1::regclass, $2)",
    )
    .bind(table)
    .bind(model_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

fn assert_citus(db: &TestDb) {
    assert!(
        db.is_citus(),
        "{NEEDS_CITUS}: DATABASE_URL's database has no citus extension or no worker nodes"
    );
}

#[tokio::test]
#[ignore = "needs DATABASE_URL at a Citus coordinator"]
async fn the_schema_is_distributed_by_model_id_and_colocated() {
    let db = TestDb::new().await;
    assert_citus(&db);
    let tables: Vec<(String, String, Option<String>, i32)> = sqlx::query_as(
        "SELECT table_name::text, citus_table_type, distribution_column, colocation_id
         FROM citus_tables ORDER BY table_name::text",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let kind = |name: &str| {
        tables
            .iter()
            .find(|t| t.0 == name)
            .unwrap_or_else(|| panic!("{name} is not a Citus table: {tables:?}"))
            .clone()
    };
    assert_eq!(kind("models").1, "reference");
    let traffic = [
        "feedback_events",
        "feedback_queue",
        "model_parameters",
        "parameter_updates",
        "prediction_log",
        "model_versions",
        "snapshots",
        "snapshot_parameters",
        "drift_events",
    ];
    let colocation = kind("feedback_events").3;
    for table in traffic {
        let (_, kind, column, colocation_id) = kind(table);
        assert_eq!(kind, "distributed", "{table}");
        assert_eq!(column.as_deref(), Some("model_id"), "{table}");
        assert_eq!(
            colocation_id, colocation,
            "{table} is not colocated with feedback_events"
        );
    }
    // The statement-level NOTIFY trigger cannot work on shards: it is gone; the enqueue trigger
    // stays and runs on the shards.
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT tgname::text FROM pg_trigger
         WHERE tgrelid = 'feedback_events'::regclass AND NOT tgisinternal ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(triggers, vec!["trigger_enqueue_feedback".to_string()]);
    // Migrating again changes nothing and fails on nothing.
    let again = olps::schema::migrate_and_grant(&db.url).await.unwrap();
    assert!(again.applied.is_empty());
}

#[tokio::test]
#[ignore = "needs DATABASE_URL at a Citus coordinator"]
async fn two_models_on_different_nodes_both_learn_exactly_what_the_learner_learns() {
    let db = TestDb::new().await;
    assert_citus(&db);
    // Models until two of them live on different worker nodes (each lands on either of two
    // nodes about half the time; 16 models make a miss a 1-in-32,768 event).
    let mut models = Vec::new();
    for i in 0..16 {
        let model = create_model(
            &db.pool,
            &format!("spread-{i}"),
            ModelKind::Logistic,
            LearnerConfig::default(),
        )
        .await;
        let node = node_of(&db.pool, "feedback_events", model.model_id).await;
        if models.iter().all(|(_, n): &(_, String)| *n != node) {
            models.push((model, node));
        }
        if models.len() == 2 {
            break;
        }
    }
    assert_eq!(models.len(), 2, "16 models all landed on one node");
    // A stationary stream (the seed stream's drift could trip a model's guard and quarantine it).
    let stream: Vec<Row> = (0..2000)
        .map(|i| {
            let x = (i % 17) as f64 / 17.0;
            let y = (i % 29) as f64 / 29.0;
            let features = vec![("x".to_string(), x), ("y".to_string(), y)];
            (features, if x + y > 1.0 { 1.0 } else { 0.0 })
        })
        .collect();
    let (first, second) = stream.split_at(stream.len() / 2);
    insert_stream(&db.pool, models[0].0.model_id, first).await;
    insert_stream(&db.pool, models[1].0.model_id, second).await;
    let stats = drain(&db.pool, 250).await;
    assert_eq!(stats.examples as usize, stream.len());
    for ((model, node), rows) in models.iter().zip([first, second]) {
        // Every table's rows of the model sit on the model's node.
        for table in [
            "feedback_queue",
            "model_parameters",
            "parameter_updates",
            "model_versions",
        ] {
            assert_eq!(
                &node_of(&db.pool, table, model.model_id).await,
                node,
                "{table}"
            );
        }
        assert_params_equal(&db.pool, model.model_id, &learn_in_memory(model, rows)).await;
        let version = assert_linear_history(&db.pool, model.model_id).await;
        assert_eq!(version, (rows.len() as i64 + 249) / 250);
    }
}

/// Waits until `model_id` reaches `version`; returns how long that took.
async fn until_version(pool: &PgPool, model_id: Uuid, version: i64, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = current_version(pool, model_id).await;
        if now >= version {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "version {version} not reached within {within:?} (at {now})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
#[ignore = "needs DATABASE_URL at a Citus coordinator"]
async fn workers_wake_for_http_feedback_by_notification_and_find_sql_rows_by_their_citus_poll() {
    let db = TestDb::new().await;
    assert_citus(&db);
    let model = create_model(
        &db.pool,
        "wake",
        ModelKind::Linear,
        LearnerConfig::default(),
    )
    .await;
    let app = Service::start(&db.pool, Default::default()).await;
    // A poll interval far longer than the wait allowed below, and no shorter one on Citus: only
    // the service's own NOTIFY (the trigger's never reaches the coordinator, and is dropped) can
    // wake the worker in time.
    let shutdown = CancellationToken::new();
    let worker = {
        let pool = db.pool.clone();
        let shutdown = shutdown.clone();
        let config = WorkerConfig {
            poll_interval: Duration::from_secs(30),
            citus_poll_interval: None,
            ..Default::default()
        };
        tokio::spawn(async move { Worker::new(pool, config).run(shutdown).await.unwrap() })
    };
    // Let the worker reach its idle wait (LISTEN registered, first pass done).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for round in 1..=3 {
        let (status, body) = app
            .post(
                "/v1/models/wake/feedback",
                &json!({"events": [{"entity_id": format!("e{round}"), "feedback_type": "explicit",
                                     "feedback_value": round as f64,
                                     "metadata": {"features": {"x": 1.0}}}]}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        until_version(&db.pool, model.model_id, round, Duration::from_secs(10)).await;
    }
    shutdown.cancel();
    worker.await.unwrap();

    // Rows written as plain SQL wake nobody on Citus: the worker's Citus poll interval (the
    // default) finds them, though the poll interval of a single server is 30 s here.
    let shutdown = CancellationToken::new();
    let worker = {
        let pool = db.pool.clone();
        let shutdown = shutdown.clone();
        let config = WorkerConfig {
            poll_interval: Duration::from_secs(30),
            ..Default::default()
        };
        tokio::spawn(async move { Worker::new(pool, config).run(shutdown).await.unwrap() })
    };
    for round in 4..=6 {
        sqlx::query(
            "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, metadata)
             VALUES ($1, $2, 'explicit', $3, '{\"features\": {\"x\": 1}}')",
        )
        .bind(model.model_id)
        .bind(format!("e{round}"))
        .bind(round as f64)
        .execute(&db.pool)
        .await
        .unwrap();
        until_version(&db.pool, model.model_id, round, Duration::from_secs(10)).await;
    }
    shutdown.cancel();
    worker.await.unwrap();
    assert_eq!(assert_linear_history(&db.pool, model.model_id).await, 6);
}

#[tokio::test]
#[ignore = "needs DATABASE_URL at a Citus coordinator"]
async fn planner_settings_of_a_transaction_reach_the_node_of_the_model() {
    let db = TestDb::new().await;
    assert_citus(&db);
    let model = create_model(
        &db.pool,
        "settings-reach",
        ModelKind::Linear,
        LearnerConfig::default(),
    )
    .await
    .model_id;
    sqlx::query(
        "INSERT INTO prediction_log (model_id, entity_id, features) VALUES ($1, 'e', '{}')",
    )
    .bind(model)
    .execute(&db.pool)
    .await
    .unwrap();
    // The setting as the model's node sees it: the column reference keeps Citus from evaluating
    // current_setting() on the coordinator.
    async fn on_the_node(tx: &mut sqlx::PgConnection, model: Uuid) -> String {
        sqlx::query_scalar(
            "SELECT current_setting('enable_hashjoin' || left(entity_id, 0))
             FROM prediction_log WHERE model_id = $1",
        )
        .bind(model)
        .fetch_one(tx)
        .await
        .unwrap()
    }
    // What retention's batches did before: set on the coordinator only.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SELECT set_config('enable_hashjoin', 'off', true)")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(on_the_node(&mut tx, model).await, "on");
    tx.rollback().await.unwrap();

    let sql = olps::citus::Topology::Citus.set_local(&[("enable_hashjoin", "off")]);
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::Executor::execute(&mut *tx, sql.as_str())
        .await
        .unwrap();
    assert_eq!(on_the_node(&mut tx, model).await, "off");
    tx.rollback().await.unwrap();
    // Only for the transaction.
    let mut conn = db.pool.acquire().await.unwrap();
    assert_eq!(on_the_node(&mut conn, model).await, "on");
}
