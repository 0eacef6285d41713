//! Replay (issue 19, part 3): `olps model replay --from M --into N [--since T]` trains N on the
//! feedback M learned, in the order M learned it, each event exactly once: N's parameters end bit
//! for bit those of a model trained directly on the same stream.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use olps::feedback::FeedbackEvent;
use olps::learner::{LearnerConfig, ModelKind};
use olps::models::Model;
use olps::replay::{self, ReplayError, ReplayReport};
use olps::worker::{Worker, WorkerConfig};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::*;

fn at(i: usize) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(i as i64)
}

/// Row `i` of a stream as an event: explicit and implicit in turn (two priorities), with its time.
fn event(i: usize, (features, label): &Row) -> FeedbackEvent {
    FeedbackEvent {
        id: None,
        entity_id: format!("e{i}"),
        feedback_type: if i.is_multiple_of(3) {
            "implicit"
        } else {
            "explicit"
        }
        .into(),
        feedback_value: *label,
        confidence: 1.0,
        metadata: json!({ "features": features.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>() }),
        timestamp: Some(at(i)),
        prediction_id: None,
    }
}

async fn run_replay(
    pool: &PgPool,
    from: &Model,
    into: &Model,
    since: Option<DateTime<Utc>>,
) -> Result<ReplayReport, ReplayError> {
    let from = olps::models::find(pool, &from.model_id.to_string()).await?;
    let mut tx = pool.begin().await?;
    let report = replay::replay(&mut tx, &from, into, since).await?;
    tx.commit().await?;
    Ok(report)
}

/// Event ids in the order the model learned them.
async fn learned_order(pool: &PgPool, model_id: Uuid) -> Vec<Uuid> {
    sqlx::query_scalar(
        "SELECT id FROM feedback_events WHERE model_id = $1 AND processed
         ORDER BY applied_version, applied_position",
    )
    .bind(model_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn assert_same_parameters(pool: &PgPool, a: Uuid, b: Uuid) {
    let (pa, pb) = (
        olps::params::load_all(pool, a).await.unwrap(),
        olps::params::load_all(pool, b).await.unwrap(),
    );
    assert_eq!(pa.len(), pb.len());
    for (name, state) in &pa {
        assert_eq!(state_bits(state), state_bits(&pb[name]), "parameter {name}");
    }
    let seen = |id: Uuid| {
        sqlx::query_scalar::<_, i64>("SELECT examples_seen FROM models WHERE model_id = $1")
            .bind(id)
            .fetch_one(pool)
    };
    assert_eq!(seen(a).await.unwrap(), seen(b).await.unwrap());
}

#[tokio::test]
async fn a_replay_learns_the_stream_in_its_order_exactly_once() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let settings = LearnerConfig::default();
    let source = create_model(pool, "replay-source", ModelKind::Linear, settings.clone()).await;
    let direct = create_model(pool, "replay-direct", ModelKind::Linear, settings.clone()).await;
    let target = create_model(pool, "replay-target", ModelKind::Linear, settings.clone()).await;

    // The source and a twin learn the same stream, arriving in several requests of two
    // priorities while the worker drains in between (so the learned order is not the order of
    // arrival: each batch takes the explicit events first).
    let rows = seed_stream();
    let rows = &rows[..700];
    let events: Vec<FeedbackEvent> = rows.iter().enumerate().map(|(i, r)| event(i, r)).collect();
    for chunk in events.chunks(150) {
        olps::feedback::insert(pool, source.model_id, chunk)
            .await
            .unwrap();
        olps::feedback::insert(pool, direct.model_id, chunk)
            .await
            .unwrap();
        drain(pool, 64).await;
    }
    assert_same_parameters(pool, source.model_id, direct.model_id).await;

    let report = run_replay(pool, &source, &target, None).await.unwrap();
    assert_eq!(
        report,
        ReplayReport {
            queued: 700,
            already_there: 0,
            without_features: 0,
            not_applied: 0,
            source_version: current_version(pool, source.model_id).await,
        }
    );
    // Other batch sizes than the source's: the order, not the batching, decides the result.
    drain(pool, 50).await;
    assert_eq!(
        learned_order(pool, target.model_id).await,
        learned_order(pool, source.model_id).await,
        "the target learned the events in the source's order"
    );
    assert_same_parameters(pool, source.model_id, target.model_id).await;
    assert_same_parameters(pool, direct.model_id, target.model_id).await;
    let version = assert_linear_history(pool, target.model_id).await;
    assert_eq!(version, 14);

    // Again: every event is already the target's; nothing is learned twice.
    let again = run_replay(pool, &source, &target, None).await.unwrap();
    assert_eq!((again.queued, again.already_there), (0, 700));
    drain(pool, 50).await;
    assert_eq!(current_version(pool, target.model_id).await, version);
    let copies: i64 =
        sqlx::query_scalar("SELECT count(*) FROM feedback_events WHERE model_id = $1")
            .bind(target.model_id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(copies, 700);

    // --since: only the events from that time on, still in the source's order.
    let later = create_model(pool, "replay-since", ModelKind::Linear, settings).await;
    let report = run_replay(pool, &source, &later, Some(at(500)))
        .await
        .unwrap();
    assert_eq!(report.queued, 200);
    drain(pool, 50).await;
    let expected: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM feedback_events WHERE model_id = $1 AND timestamp >= $2
         ORDER BY applied_version, applied_position",
    )
    .bind(source.model_id)
    .bind(at(500))
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(learned_order(pool, later.model_id).await, expected);
}

#[tokio::test]
async fn replays_that_cannot_work_are_refused_and_what_is_left_out_is_counted() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let settings = LearnerConfig::default();
    let source = create_model(pool, "refuse-source", ModelKind::Linear, settings.clone()).await;
    let logistic = create_model(
        pool,
        "refuse-logistic",
        ModelKind::Logistic,
        settings.clone(),
    )
    .await;
    let other = create_model(pool, "refuse-other", ModelKind::Linear, settings.clone()).await;
    let fresh = create_model(pool, "refuse-fresh", ModelKind::Linear, settings).await;
    let rows = sparse_stream(40, 3, 10, false, 7);
    insert_stream(pool, source.model_id, &rows).await;
    // A delayed label (no features of its own), learned from a logged prediction.
    sqlx::query(
        "INSERT INTO prediction_log (model_id, entity_id, features) VALUES ($1, 'late', '{\"f1\": 1}')",
    )
    .bind(source.model_id)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value)
         VALUES ($1, 'late', 'explicit', 0.5)",
    )
    .bind(source.model_id)
    .execute(pool)
    .await
    .unwrap();
    // The other model learns features the source never saw.
    let unrelated: Vec<Row> = (0..5)
        .map(|i| (vec![("zzz".to_string(), i as f64)], 1.0))
        .collect();
    insert_stream(pool, other.model_id, &unrelated).await;
    drain(pool, 100).await;
    // Pending for the source: not learned yet, so not replayed.
    insert_stream(pool, source.model_id, &rows[..3]).await;

    let err = run_replay(pool, &source, &source, None).await.unwrap_err();
    assert!(matches!(err, ReplayError::SameModel(_)), "{err}");
    let err = run_replay(pool, &source, &logistic, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is linear and model 'refuse-logistic' is logistic"),
        "{err}"
    );
    let err = run_replay(pool, &source, &other, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'refuse-other' has learned features (zzz)"),
        "{err}"
    );
    for model in [&logistic, &other] {
        let stored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM feedback_events WHERE model_id = $1")
                .bind(model.model_id)
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(
            stored,
            if model.model_id == other.model_id {
                5
            } else {
                0
            }
        );
    }

    let report = run_replay(pool, &source, &fresh, None).await.unwrap();
    assert_eq!(report.queued, 40);
    assert_eq!(
        report.without_features, 1,
        "the delayed label is left out, counted"
    );
    assert_eq!(
        report.not_applied, 3,
        "the pending events are left out, counted"
    );
}

#[tokio::test]
async fn olps_model_replay_shows_progress_until_learned() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let source = create_model(
        pool,
        "cli-replay-source",
        ModelKind::Linear,
        LearnerConfig::default(),
    )
    .await;
    create_model(
        pool,
        "cli-replay-target",
        ModelKind::Linear,
        LearnerConfig::default(),
    )
    .await;
    insert_stream(pool, source.model_id, &seed_stream()[..300]).await;
    drain(pool, 100).await;

    // A worker keeps running, as `olps up` would.
    let shutdown = CancellationToken::new();
    let mut worker = Worker::new(
        pool.clone(),
        WorkerConfig {
            batch_size: 100,
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        },
    );
    let stop = shutdown.clone();
    let worker = tokio::spawn(async move { worker.run(stop).await });

    let cli = Cli::new(&db.url);
    let (args, out) = cli
        .run("model replay --from cli-replay-source --into cli-replay-target --wait")
        .await;
    assert!(out.status.success(), "{}", describe(&args, &out));
    let (stdout, stderr) = (stdout(&out), stderr(&out));
    assert!(
        stdout.contains("queued 300 events of 'cli-replay-source'"),
        "{stdout}"
    );
    assert!(
        stderr.contains("learned 300/300 replayed events"),
        "{stderr}"
    );
    assert!(
        stdout.contains("'cli-replay-target' is at version 3"),
        "{stdout}"
    );
    shutdown.cancel();
    worker.await.unwrap().unwrap();

    let err = cli
        .fails("model replay --from cli-replay-source --into nobody")
        .await;
    assert!(err.contains("model 'nobody' not found"), "{err}");
    let err = cli
        .fails(
            "model replay --from cli-replay-source --into cli-replay-target --since yesterday-ish",
        )
        .await;
    assert!(err.contains("--since"), "{err}");
}
