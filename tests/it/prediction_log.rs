//! The prediction log keeps up (issue 16, item 5), against a real PostgreSQL: several writers
//! with binary COPY keep each entity's predictions in the order they were made and store the
//! features exactly as the INSERT path did (the text the worker reads back); a label naming its
//! prediction right after predict trains on exactly those features; every record is written or
//! counted as dropped, never silently lost.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use olps::learner::ModelKind;
use olps::serving::{LogConfig, LogMethod, LogRecord, PredictionLog, ServingConfig};
use olps::worker::{Worker, WorkerConfig};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::*;

/// Feature values and names that a lossy encoding would change: extremes of f64, subnormals,
/// digits that need 17 significant places, and names with quotes, backslashes, control
/// characters and multi-byte UTF-8.
fn tricky_features(entity: usize, k: usize) -> Vec<(String, f64)> {
    vec![
        ("a".into(), 0.1),
        ("quote\"d".into(), 1e-300),
        ("back\\slash".into(), 5e-324),
        ("ünïcødé".into(), f64::MAX),
        ("crab 🦀".into(), -2.5e-8),
        ("tab\there\nnewline".into(), 1.0 / 3.0),
        (format!("x{k}"), (entity * k) as f64 * 0.37 - 11.0),
    ]
}

fn record(model_id: Uuid, entity: usize, k: usize, prediction_id: Uuid) -> LogRecord {
    LogRecord {
        model_id,
        entity_id: format!("entity-{entity}"),
        features: tricky_features(entity, k),
        prediction: 1.0 / (entity + k + 3) as f64,
        version: (entity * 1000 + k) as i64,
        prediction_id,
        predicted_at: DateTime::<Utc>::from_timestamp_micros(1_780_000_000_000_000 + k as i64)
            .unwrap(),
    }
}

type LoggedRow = (String, Uuid, String, Value, f64, i64, DateTime<Utc>);

/// The model's log rows in the order they were written (`id`).
async fn logged(pool: &PgPool, model_id: Uuid) -> Vec<LoggedRow> {
    sqlx::query_as(
        "SELECT entity_id, prediction_id, features::text, features, prediction, model_version,
                logged_at
         FROM prediction_log WHERE model_id = $1 ORDER BY id",
    )
    .bind(model_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn several_writers_keep_each_entitys_order_and_the_exact_features() {
    let db = TestDb::new().await;
    let (copied, inserted) = (Uuid::new_v4(), Uuid::new_v4());
    const ENTITIES: usize = 40;
    const PER_ENTITY: usize = 25;
    // Entities interleaved, as requests arrive; small batches so that each writer writes many.
    let offered: Vec<(usize, usize, Uuid)> = (0..PER_ENTITY)
        .flat_map(|k| (0..ENTITIES).map(move |e| (e, k, Uuid::new_v4())))
        .collect();
    for (model_id, method, writers) in [
        (copied, LogMethod::Copy, 4),
        (inserted, LogMethod::Insert, 1),
    ] {
        let log = PredictionLog::start(
            db.pool.clone(),
            LogConfig {
                capacity: 10_000,
                batch: 7,
                writers,
                method,
            },
        );
        for &(e, k, id) in &offered {
            assert!(log.offer(record(model_id, e, k, id)), "buffer room for all");
        }
        log.close().await;
        assert_eq!(
            log.counts().snapshot(),
            (offered.len() as u64, 0, 0),
            "{method:?}: every record written, none dropped"
        );
    }

    let by_id: HashMap<Uuid, (usize, usize)> =
        offered.iter().map(|&(e, k, id)| (id, (e, k))).collect();
    let copied_rows = logged(&db.pool, copied).await;
    let inserted_rows = logged(&db.pool, inserted).await;
    assert_eq!(copied_rows.len(), offered.len());
    assert_eq!(inserted_rows.len(), offered.len());

    // Each entity's predictions in the order they were made (k = 0, 1, 2, …).
    let mut order: HashMap<String, Vec<usize>> = HashMap::new();
    for (entity, id, ..) in &copied_rows {
        order.entry(entity.clone()).or_default().push(by_id[id].1);
    }
    assert_eq!(order.len(), ENTITIES);
    for (entity, ks) in &order {
        assert_eq!(
            ks,
            &(0..PER_ENTITY).collect::<Vec<_>>(),
            "{entity}: logged out of order"
        );
    }

    // Every column exactly what was offered, and the same text as the INSERT path stored.
    let inserted_text: HashMap<Uuid, &str> = inserted_rows
        .iter()
        .map(|(_, id, text, ..)| (*id, text.as_str()))
        .collect();
    for (entity, id, text, features, prediction, version, at) in &copied_rows {
        let (e, k) = by_id[id];
        let want = record(copied, e, k, *id);
        assert_eq!(entity, &want.entity_id);
        assert_eq!(prediction.to_bits(), want.prediction.to_bits());
        assert_eq!(*version, want.version);
        assert_eq!(*at, want.predicted_at);
        assert_eq!(
            text, inserted_text[id],
            "the features' text differs between COPY and INSERT"
        );
        let object = features.as_object().expect("an object");
        assert_eq!(object.len(), want.features.len(), "{text}");
        for (name, x) in &want.features {
            let read = object
                .get(name)
                .and_then(Value::as_f64)
                .unwrap_or_else(|| panic!("feature {name:?} missing from {text}"));
            assert_eq!(read.to_bits(), x.to_bits(), "feature {name:?}: {text}");
        }
    }
}

#[tokio::test]
async fn a_label_by_prediction_id_right_after_predict_trains_on_those_features() {
    let (db, model) = TestDb::with_model("plog-label", ModelKind::Logistic).await;
    let mut service = Service::start(&db.pool, ServingConfig::default()).await;
    assert_eq!(ServingConfig::default().log_method, LogMethod::Copy);
    assert!(ServingConfig::default().log_writers > 1);
    // The worker runs throughout, so a label may be claimed before its prediction is logged.
    let cancel = CancellationToken::new();
    let worker = {
        let (pool, cancel) = (db.pool.clone(), cancel.clone());
        tokio::spawn(async move {
            let config = WorkerConfig {
                batch_size: 5,
                poll_interval: Duration::from_millis(10),
                retention_every: None,
                ..Default::default()
            };
            Worker::new(pool, config).run(cancel).await
        })
    };
    // Each entity is predicted twice; the label, sent the moment the first answer arrives,
    // names the first prediction, so the entity's latest would be the wrong features.
    let mut sent: HashMap<Uuid, (Vec<(String, f64)>, f64)> = HashMap::new();
    for i in 0..30usize {
        let entity = format!("u{i}");
        // The tricky names with values a model learns from (f64::MAX would overflow the
        // standardization's running variance).
        let features: Vec<(String, f64)> = tricky_features(i, 1)
            .into_iter()
            .enumerate()
            .map(|(j, (name, _))| (name, ((i * 7 + j) % 5) as f64 * 0.3 - 0.55 + 1e-9 / 3.0))
            .collect();
        let body = json!({"features": Value::Object(features.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
                          "entity_id": entity});
        let (status, answer) = service.post("/v1/models/plog-label/predict", &body).await;
        assert_eq!(status, 200, "{answer}");
        let prediction_id = answer["prediction_id"].as_str().unwrap().to_string();
        let label = (i % 2) as f64;
        let (status, accepted) = service
            .post(
                "/v1/models/plog-label/feedback",
                &json!({"entity_id": entity, "feedback_type": "explicit", "feedback_value": label,
                        "prediction_id": prediction_id}),
            )
            .await;
        assert_eq!(status, 202, "{accepted}");
        let feedback_id = Uuid::parse_str(accepted["ids"][0].as_str().unwrap()).unwrap();
        sent.insert(feedback_id, (features, label));
        let (status, answer) = service
            .post(
                "/v1/models/plog-label/predict",
                &json!({"features": {"other": 1.0}, "entity_id": entity}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }
    // Until every label is applied (a label that came first waits for its prediction, then is
    // put back in the queue).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let applied: Vec<(Uuid, Option<i64>, Option<i32>)> = loop {
        let rows: Vec<(Uuid, Option<i64>, Option<i32>)> = sqlx::query_as(
            "SELECT id, applied_version, applied_position FROM feedback_events
             WHERE model_id = $1 AND processed ORDER BY applied_version, applied_position",
        )
        .bind(model.model_id)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        if rows.len() == sent.len() {
            break rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} labels applied",
            rows.len(),
            sent.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    cancel.cancel();
    worker.await.unwrap().unwrap();
    service.stop().await;
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM feedback_queue WHERE model_id = $1")
        .bind(model.model_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0, "no label dead-lettered or left waiting");
    assert!(applied.iter().all(|(_, v, p)| v.is_some() && p.is_some()));
    // Bit for bit the learner over the named predictions' features, in the order applied.
    let rows: Vec<Row> = applied.iter().map(|(id, ..)| sent[id].clone()).collect();
    let expected = learn_in_memory(&model, &rows);
    assert_params_equal(&db.pool, model.model_id, &expected).await;
    assert_linear_history(&db.pool, model.model_id).await;
}

#[tokio::test]
async fn every_record_is_written_or_counted_as_dropped() {
    let db = TestDb::new().await;
    let model_id = Uuid::new_v4();
    let queue_full = || {
        olps::metrics::global()
            .log_dropped
            .with_label_values(&["queue_full"])
            .get()
    };
    let write_failed = || {
        olps::metrics::global()
            .log_dropped
            .with_label_values(&["write_failed"])
            .get()
    };
    let rows = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM prediction_log WHERE model_id = $1")
            .bind(model_id)
            .fetch_one(&pool)
            .await
            .unwrap() as u64
    };

    // A buffer far too small for a burst: three writers of two records each.
    let (full_before, failed_before) = (queue_full(), write_failed());
    let log = PredictionLog::start(
        db.pool.clone(),
        LogConfig {
            capacity: 6,
            batch: 2,
            writers: 3,
            method: LogMethod::Copy,
        },
    );
    const BURST: u64 = 1_000;
    for i in 0..BURST as usize {
        log.offer(record(model_id, i % 100, i / 100, Uuid::new_v4()));
    }
    log.close().await;
    // Closed: a record offered now is refused and counted too.
    assert!(!log.offer(record(model_id, 0, 99, Uuid::new_v4())));
    let (written, full, failed) = log.counts().snapshot();
    assert!(full > 0, "a buffer of 6 cannot take a burst of 1,000");
    assert_eq!(failed, 0);
    assert_eq!(written + full, BURST + 1, "each record written or counted");
    assert_eq!(rows(db.pool.clone()).await, written);
    // The process-wide metric has them all (other tests of this process may add their own).
    assert!(queue_full() - full_before >= full);

    // A batch the database refuses (a prediction id already logged for the model) is retried,
    // then given up on and counted; the other batches are written.
    let taken = Uuid::new_v4();
    olps::serving::log::write_batch(&db.pool, &[record(model_id, 500, 0, taken)])
        .await
        .unwrap();
    let before = rows(db.pool.clone()).await;
    let log = PredictionLog::start(
        db.pool.clone(),
        LogConfig {
            capacity: 100,
            batch: 1,
            writers: 2,
            method: LogMethod::Copy,
        },
    );
    for i in 0..10 {
        let id = if i == 4 { taken } else { Uuid::new_v4() };
        assert!(log.offer(record(model_id, 600 + i, 0, id)));
    }
    log.close().await;
    assert_eq!(log.counts().snapshot(), (9, 0, 1));
    assert_eq!(rows(db.pool.clone()).await - before, 9);
    assert!(write_failed() - failed_before >= 1);
    assert_eq!(log.counts().dropped_write_failed.load(Ordering::Relaxed), 1);
}
