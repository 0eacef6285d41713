//! Prediction ids and delayed labels by prediction id (issue 19, part 1), against a real
//! PostgreSQL: every prediction returns an id and is logged with it; a label naming it trains
//! on exactly that prediction's features (not the entity's latest); a label that arrives before
//! its prediction is logged waits and then trains; one whose prediction never comes is
//! dead-lettered at the deadline with its reason; retention counts the predictions that expire
//! without a label; the label delay is in /metrics.

use std::collections::HashSet;
use std::time::Duration;

use olps::learner::ModelKind;
use olps::serving::ServingConfig;
use olps::worker::{Worker, WorkerConfig, WorkerStats};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::*;

fn features_json(features: &[(String, f64)]) -> Value {
    Value::Object(
        features
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect(),
    )
}

fn f(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// A worker until the queue has no pending row, with the given label wait. Retention is left
/// to the tests (the worker's own run would race them).
async fn drain_waiting(pool: &PgPool, label_wait: Duration) -> WorkerStats {
    let config = WorkerConfig {
        batch_size: 100,
        poll_interval: Duration::from_millis(20),
        until_empty: true,
        label_wait,
        retention_every: None,
        ..Default::default()
    };
    Worker::new(pool.clone(), config)
        .run(CancellationToken::new())
        .await
        .unwrap()
}

async fn wait_logged(pool: &PgPool, ids: &[Uuid]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM prediction_log WHERE prediction_id = ANY($1)")
                .bind(ids)
                .fetch_one(pool)
                .await
                .unwrap();
        if n == ids.len() as i64 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the prediction log wrote {n} of {} predictions",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn queue_status(pool: &PgPool, feedback_id: Uuid) -> (String, Option<String>, bool) {
    sqlx::query_as(
        "SELECT q.status, q.dead_reason, e.processed FROM feedback_queue q
         JOIN feedback_events e ON e.model_id = q.model_id AND e.id = q.feedback_id
         WHERE q.feedback_id = $1",
    )
    .bind(feedback_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The value of one sample line of a Prometheus text document (0 when absent).
fn sample(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn labels_naming_a_prediction_train_on_exactly_its_features() {
    let (db, model) = TestDb::with_model("pid-exact", ModelKind::Logistic).await;
    let service = Service::start(&db.pool, ServingConfig::default()).await;
    let first = f(&[("amount", 3.5), ("country=US", 1.0)]);
    let second = f(&[("amount", -1.0), ("hour", 0.25)]);
    // Two predictions for the same entity: the label names the first one, which is not the
    // entity's latest (the path without an id would take `second`).
    let (status, one) = service
        .post(
            "/v1/models/pid-exact/predict",
            &json!({"features": features_json(&first), "entity_id": "u1"}),
        )
        .await;
    assert_eq!(status, 200, "{one}");
    let first_id = Uuid::parse_str(one["prediction_id"].as_str().unwrap()).unwrap();
    let batch_rows = [
        second.clone(),
        f(&[("amount", 7.0)]),
        f(&[("amount", 0.5), ("hour", 1.0)]),
    ];
    let instances: Vec<Value> = batch_rows
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"features": features_json(r), "entity_id": if i == 0 { "u1".to_string() } else { format!("b{i}") }}))
        .collect();
    let (status, batch) = service
        .post(
            "/v1/models/pid-exact/predict",
            &json!({"instances": instances}),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    let batch_ids: Vec<Uuid> = batch["prediction_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| Uuid::parse_str(v.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(batch_ids.len(), 3);
    let distinct: HashSet<Uuid> = batch_ids.iter().chain([&first_id]).copied().collect();
    assert_eq!(distinct.len(), 4, "every prediction has its own id");
    let mut all = batch_ids.clone();
    all.push(first_id);
    wait_logged(&db.pool, &all).await;
    // Logged with its id, its prediction and version.
    let (entity, prediction, logged_version): (String, f64, i64) = sqlx::query_as(
        "SELECT entity_id, prediction, model_version FROM prediction_log WHERE prediction_id = $1",
    )
    .bind(first_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(entity, "u1");
    assert_eq!(
        prediction.to_bits(),
        one["prediction"].as_f64().unwrap().to_bits()
    );
    assert_eq!(logged_version, 0);

    let before = olps::metrics::render(&db.pool).await;
    let delay_count = "olps_label_delay_seconds_count{model=\"pid-exact\"}";
    let count_before = sample(&before, delay_count);
    // The label for the first prediction over HTTP, without features; the label for the third
    // instance of the batch as a plain SQL row naming its id.
    let (status, accepted) = service
        .post(
            "/v1/models/pid-exact/feedback",
            &json!({"entity_id": "u1", "feedback_type": "explicit", "feedback_value": 1,
                    "prediction_id": first_id.to_string()}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    sqlx::query(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, prediction_id)
         VALUES ($1, 'b2', 'explicit', 0, $2)",
    )
    .bind(model.model_id)
    .bind(batch_ids[2])
    .execute(&db.pool)
    .await
    .unwrap();
    let stats = drain_waiting(&db.pool, Duration::from_secs(600)).await;
    assert_eq!((stats.examples, stats.dead), (2, 0), "{stats:?}");
    // Exactly the learner over the two named predictions' features, in queue order.
    let expected = learn_in_memory(&model, &[(first, 1.0), (batch_rows[2].clone(), 0.0)]);
    assert_params_equal(&db.pool, model.model_id, &expected).await;
    // Those two log rows, and only they, are marked labeled.
    let labeled: Vec<Uuid> = sqlx::query_scalar(
        "SELECT prediction_id FROM prediction_log
         WHERE model_id = $1 AND labeled_at IS NOT NULL ORDER BY prediction_id",
    )
    .bind(model.model_id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut want = vec![first_id, batch_ids[2]];
    want.sort();
    assert_eq!(labeled, want);
    // Both label delays observed.
    let after = olps::metrics::render(&db.pool).await;
    assert_eq!(sample(&after, delay_count) - count_before, 2.0, "{after}");
}

#[tokio::test]
async fn the_entity_path_still_takes_the_latest_prediction() {
    // A label without a prediction id keeps the behaviour of before (the delayed-label tests
    // of serving.rs and worker.rs cover it at length): the latest logged prediction of the entity.
    let (db, model) = TestDb::with_model("pid-entity", ModelKind::Logistic).await;
    sqlx::query(
        "INSERT INTO prediction_log (model_id, entity_id, features, prediction, model_version) VALUES
         ($1, 'u1', '{\"old\": 1}', 0.5, 0), ($1, 'u1', '{\"new\": 2}', 0.5, 0)",
    )
    .bind(model.model_id)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value)
         VALUES ($1, 'u1', 'explicit', 1)",
    )
    .bind(model.model_id)
    .execute(&db.pool)
    .await
    .unwrap();
    let stats = drain_waiting(&db.pool, Duration::from_secs(600)).await;
    assert_eq!((stats.examples, stats.dead), (1, 0));
    let expected = learn_in_memory(&model, &[(f(&[("new", 2.0)]), 1.0)]);
    assert_params_equal(&db.pool, model.model_id, &expected).await;
}

#[tokio::test]
async fn a_label_that_arrives_before_its_prediction_is_logged_waits_then_trains() {
    let (db, model) = TestDb::with_model("pid-early", ModelKind::Linear).await;
    let prediction_id = Uuid::new_v4();
    let feedback_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO feedback_events (model_id, id, entity_id, feedback_type, feedback_value, prediction_id)
         VALUES ($1, $2, 'late', 'explicit', 2.5, $3)",
    )
    .bind(model.model_id)
    .bind(feedback_id)
    .bind(prediction_id)
    .execute(&db.pool)
    .await
    .unwrap();
    let stats = drain_waiting(&db.pool, Duration::from_secs(600)).await;
    assert_eq!((stats.examples, stats.dead), (0, 0), "{stats:?}");
    let (status, reason, processed) = queue_status(&db.pool, feedback_id).await;
    assert_eq!(
        (status.as_str(), reason, processed),
        ("waiting", None, false),
        "set aside, not dead-lettered, not learned"
    );
    assert_eq!(current_version(&db.pool, model.model_id).await, 0);
    let metrics = olps::metrics::render(&db.pool).await;
    assert_eq!(
        sample(&metrics, "olps_queue_waiting_labels{model=\"pid-early\"}"),
        1.0
    );

    // The prediction is logged now (as the service's writer would, late).
    sqlx::query(
        "INSERT INTO prediction_log (model_id, entity_id, features, prediction, model_version, prediction_id)
         VALUES ($1, 'late', '{\"x\": 1.5, \"y\": -2}', 0, 0, $2)",
    )
    .bind(model.model_id)
    .bind(prediction_id)
    .execute(&db.pool)
    .await
    .unwrap();
    let stats = drain_waiting(&db.pool, Duration::from_secs(600)).await;
    assert_eq!((stats.examples, stats.dead), (1, 0), "{stats:?}");
    let processed: bool = sqlx::query_scalar("SELECT processed FROM feedback_events WHERE id = $1")
        .bind(feedback_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(processed);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM feedback_queue WHERE model_id = $1")
        .bind(model.model_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "learned once, its queue row gone");
    let expected = learn_in_memory(&model, &[(f(&[("x", 1.5), ("y", -2.0)]), 2.5)]);
    assert_params_equal(&db.pool, model.model_id, &expected).await;
    assert_linear_history(&db.pool, model.model_id).await;
}

#[tokio::test]
async fn a_label_whose_prediction_never_comes_is_dead_lettered_at_the_deadline() {
    let (db, model) = TestDb::with_model("pid-never", ModelKind::Linear).await;
    let never = Uuid::new_v4();
    let (waits, wrong_entity) = (Uuid::new_v4(), Uuid::new_v4());
    let logged_for_other = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO prediction_log (model_id, entity_id, features, prediction, model_version, prediction_id)
         VALUES ($1, 'someone-else', '{\"x\": 1}', 0, 0, $2)",
    )
    .bind(model.model_id)
    .bind(logged_for_other)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO feedback_events (model_id, id, entity_id, feedback_type, feedback_value, prediction_id)
         VALUES ($1, $2, 'u', 'explicit', 1, $3), ($1, $4, 'u', 'explicit', 1, $5)",
    )
    .bind(model.model_id)
    .bind(waits)
    .bind(never)
    .bind(wrong_entity)
    .bind(logged_for_other)
    .execute(&db.pool)
    .await
    .unwrap();
    let wait = Duration::from_millis(1500);
    let stats = drain_waiting(&db.pool, wait).await;
    assert_eq!((stats.examples, stats.dead), (0, 1), "{stats:?}");
    // A prediction made for another entity: refused at once, naming both entities.
    let (status, reason, _) = queue_status(&db.pool, wrong_entity).await;
    assert_eq!(status, "dead");
    let reason = reason.unwrap();
    assert!(
        reason.contains("someone-else") && reason.contains("'u'"),
        "{reason}"
    );
    assert_eq!(queue_status(&db.pool, waits).await.0, "waiting");

    tokio::time::sleep(wait + Duration::from_millis(200)).await;
    let stats = drain_waiting(&db.pool, wait).await;
    assert_eq!((stats.examples, stats.dead), (0, 1), "{stats:?}");
    let (status, reason, processed) = queue_status(&db.pool, waits).await;
    assert_eq!(status, "dead");
    assert!(
        !processed,
        "a dead letter stays unprocessed (kept, requeueable)"
    );
    let reason = reason.unwrap();
    assert!(
        reason.starts_with("prediction_id:")
            && reason.contains(&never.to_string())
            && reason.contains("not logged within"),
        "{reason}"
    );
    assert_eq!(current_version(&db.pool, model.model_id).await, 0);
    let metrics = olps::metrics::render(&db.pool).await;
    assert_eq!(
        sample(
            &metrics,
            "olps_dead_letters{model=\"pid-never\",reason=\"prediction_id\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert!(sample(&metrics, "olps_labels_waited_total{outcome=\"expired\"}") >= 1.0);
}

#[tokio::test]
async fn predictions_that_expire_without_a_label_are_counted() {
    let (db, model) = TestDb::with_model("pid-expire", ModelKind::Linear).await;
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    // Four old predictions (older than the default 90-day keep).
    for (i, id) in ids.iter().enumerate() {
        sqlx::query(
            "INSERT INTO prediction_log (model_id, entity_id, features, prediction, model_version,
                                         prediction_id, logged_at)
             VALUES ($1, $2, '{\"x\": 1}', 0, 0, $3, now() - interval '100 days')",
        )
        .bind(model.model_id)
        .bind(format!("e{i}"))
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    // One is labeled and learned; one has a label still unprocessed (not learned yet: kept).
    sqlx::query(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, prediction_id)
         VALUES ($1, 'e0', 'explicit', 1, $2)",
    )
    .bind(model.model_id)
    .bind(ids[0])
    .execute(&db.pool)
    .await
    .unwrap();
    let stats = drain_waiting(&db.pool, Duration::from_secs(600)).await;
    assert_eq!(stats.examples, 1);
    sqlx::query(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, prediction_id)
         VALUES ($1, 'e1', 'explicit', 1, $2)",
    )
    .bind(model.model_id)
    .bind(ids[1])
    .execute(&db.pool)
    .await
    .unwrap();

    let mut conn = db.pool.acquire().await.unwrap();
    let report = olps::retention::run_model(
        &mut conn,
        model.model_id,
        olps::retention::Limits::UNBOUNDED,
        false,
    )
    .await
    .unwrap();
    drop(conn);
    assert_eq!(report.deleted("prediction_log"), 3, "{report:?}");
    assert_eq!(
        report.unlabeled_predictions, 2,
        "e2 and e3 expired without a label; e0 was labeled"
    );
    let kept: Vec<Uuid> =
        sqlx::query_scalar("SELECT prediction_id FROM prediction_log WHERE model_id = $1")
            .bind(model.model_id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        kept,
        vec![ids[1]],
        "the prediction a pending label names stays"
    );
    let metrics = olps::metrics::render(&db.pool).await;
    assert_eq!(
        sample(
            &metrics,
            "olps_predictions_expired_unlabeled{model=\"pid-expire\"}"
        ),
        2.0
    );
    // The pending label still trains on its prediction.
    let stats = drain_waiting(&db.pool, Duration::from_secs(600)).await;
    assert_eq!((stats.examples, stats.dead), (1, 0));
}

#[tokio::test]
async fn a_bad_prediction_id_is_refused_and_stores_nothing() {
    let (db, _) = TestDb::with_model("pid-bad", ModelKind::Linear).await;
    let service = Service::start(&db.pool, ServingConfig::default()).await;
    for (bad, needle) in [
        (
            json!("not-a-uuid"),
            "must be the UUID a prediction returned",
        ),
        (json!(42), "a UUID string"),
    ] {
        let (status, body) = service
            .post(
                "/v1/models/pid-bad/feedback",
                &json!({"events": [
                    {"entity_id": "a", "feedback_type": "explicit", "feedback_value": 1, "features": {"x": 1}},
                    {"entity_id": "b", "feedback_type": "explicit", "feedback_value": 1, "prediction_id": bad}]}),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("events[1].prediction_id") && message.contains(needle),
            "{message}"
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM feedback_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "a batch with one bad event stores nothing");
}
