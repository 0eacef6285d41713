//! Serving against a real PostgreSQL: predictions from one consistent version equal to the
//! learner's own, freshness through notifications and through the fallbacks, delayed labels end
//! to end, the prediction log on shutdown, metrics, request limits, and the OpenAPI document.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use olps::http::AppState;
use olps::learner::{Learner, LearnerConfig, ModelKind};
use olps::serving::ServingConfig;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

fn features_json(features: &[(String, f64)]) -> Value {
    Value::Object(
        features
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect(),
    )
}

fn fast_checks() -> ServingConfig {
    ServingConfig {
        version_check_interval: Duration::from_millis(50),
        ..ServingConfig::default()
    }
}

/// Polls `check` every 20 ms until it returns Some, for at most `seconds`.
async fn eventually<T, F, Fut>(seconds: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn logged_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM prediction_log")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The learner at each requested version: the in-memory learner over the first k rows, where k
/// is the number of examples the versions up to v learned (model_versions.examples).
async fn learners_at_versions(
    pool: &PgPool,
    model: &olps::models::Model,
    rows: &[Row],
    versions: &BTreeSet<i64>,
) -> HashMap<i64, Learner> {
    let per_version: Vec<(i64, i32)> = sqlx::query_as(
        "SELECT model_version, examples FROM model_versions WHERE model_id = $1 ORDER BY model_version",
    )
    .bind(model.model_id)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut examples_upto = BTreeMap::from([(0i64, 0usize)]);
    let mut total = 0usize;
    for (v, n) in per_version {
        total += n as usize;
        examples_upto.insert(v, total);
    }
    let mut learner = Learner::new(model.kind, model.settings.clone());
    let mut learned = 0usize;
    let mut out = HashMap::new();
    for v in versions {
        let k = examples_upto[v];
        for (features, label) in &rows[learned..k] {
            let example = olps::learner::Example::new(features.clone(), *label, 1.0).unwrap();
            learner.learn(&example);
        }
        learned = k;
        out.insert(*v, learner.clone());
    }
    out
}

#[tokio::test]
async fn batch_predictions_during_fast_learning_each_equal_the_learner_at_their_version() {
    let (db, model) = TestDb::with_model("consistent", ModelKind::Logistic).await;
    let rows = sparse_stream(4_000, 5, 30, true, 21);
    insert_stream(&db.pool, model.model_id, &rows).await;
    let service = Service::start(&db.pool, fast_checks()).await;
    // Probe instances: known features, unknown ones, and an empty instance.
    let probes: Vec<Vec<(String, f64)>> = sparse_stream(20, 6, 40, true, 99)
        .into_iter()
        .map(|(f, _)| f)
        .chain(std::iter::once(vec![]))
        .collect();
    let body = json!({"instances": probes.iter().map(|f| json!({"features": features_json(f)})).collect::<Vec<_>>()});
    // Warm the cache at version 0, then learn in small batches (one version each) while asking.
    let (status, first) = service.post("/v1/models/consistent/predict", &body).await;
    assert_eq!(status, 200, "{first}");
    let worker = tokio::spawn(run_worker(db.pool.clone(), 10, Duration::from_millis(10)));
    let mut answers: Vec<(i64, Vec<f64>)> = Vec::with_capacity(1_000);
    let mut last_version = 0;
    // At least 1,000 requests, and on until five versions were seen or the worker is done: on a
    // loaded machine the first batches can land after the 1,000th request.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut seen: BTreeSet<i64> = BTreeSet::new();
    while answers.len() < 1_000
        || (seen.len() < 5 && !worker.is_finished() && std::time::Instant::now() < deadline)
    {
        let (status, answer) = service.post("/v1/models/consistent/predict", &body).await;
        assert_eq!(status, 200, "{answer}");
        let version = answer["version"].as_i64().unwrap();
        assert!(
            version >= last_version,
            "version went back from {last_version} to {version}"
        );
        last_version = version;
        let predictions: Vec<f64> = answer["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect();
        assert_eq!(predictions.len(), probes.len());
        seen.insert(version);
        answers.push((version, predictions));
    }
    let stats = worker.await.unwrap();
    assert_eq!(stats.examples as usize, rows.len());

    let versions: BTreeSet<i64> = answers.iter().map(|(v, _)| *v).collect();
    assert!(
        versions.len() >= 5,
        "the predictions should have seen several versions while the worker learned, saw {versions:?}"
    );
    let learners = learners_at_versions(&db.pool, &model, &rows, &versions).await;
    for (version, predictions) in &answers {
        let learner = &learners[version];
        for (features, got) in probes.iter().zip(predictions) {
            let want = learner.predict(features);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "version {version}: served {got}, the learner at that version predicts {want}"
            );
        }
    }
}

#[tokio::test]
async fn single_prediction_matches_learner_and_explains_unknown_features() {
    let (db, model) = TestDb::with_model("explained", ModelKind::Linear).await;
    let rows = seed_stream();
    insert_stream(&db.pool, model.model_id, &rows[..300]).await;
    drain(&db.pool, 100).await;
    let learner = learn_in_memory(&model, &rows[..300]);
    let service = Service::start(&db.pool, fast_checks()).await;

    let mut features = rows[400].0.clone();
    features.push(("never_seen".into(), 3.5));
    features.push(("also_new".into(), -1.0));
    let (status, answer) = service
        .post(
            &format!("/v1/models/{}/predict", model.model_id),
            &json!({"features": features_json(&features), "explain": true}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["version"], 3);
    let want = learner.predict(&features);
    assert_eq!(
        answer["prediction"].as_f64().unwrap().to_bits(),
        want.to_bits()
    );
    assert_eq!(answer["unknown_features"], 2);
    let contributions = answer["contributions"].as_object().unwrap();
    assert_eq!(contributions.len(), features.len() + 1);
    assert_eq!(contributions["never_seen"], 0.0);
    // The contributions, summed in feature-name order (intercept first), are the margin.
    let mut sum = contributions["__intercept__"].as_f64().unwrap();
    let mut names: Vec<&String> = contributions
        .keys()
        .filter(|k| *k != "__intercept__")
        .collect();
    names.sort();
    for name in names {
        sum += contributions[name].as_f64().unwrap();
    }
    assert_eq!(sum.to_bits(), learner.margin(&features).to_bits());
    // Without explain, no explanation.
    let (_, plain) = service
        .post(
            "/v1/models/explained/predict",
            &json!({"features": features_json(&features)}),
        )
        .await;
    // The prediction, its version and its id (issue 19).
    assert_eq!(plain.as_object().unwrap().len(), 3, "{plain}");
    assert!(plain["prediction_id"].is_string(), "{plain}");
    assert_eq!(plain["prediction"], answer["prediction"]);
}

/// Commits one more version by learning `n` more rows.
async fn learn_more(pool: &PgPool, model: uuid::Uuid, rows: &[Row]) -> i64 {
    insert_stream(pool, model, rows).await;
    drain(pool, 1_000).await;
    current_version(pool, model).await
}

async fn served_version(service: &Service, model: &str) -> i64 {
    let (status, answer) = service
        .post(
            &format!("/v1/models/{model}/predict"),
            &json!({"features": {"x0": 1.0}}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    answer["version"].as_i64().unwrap()
}

async fn listener_pids(pool: &PgPool) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(olps::serving::LISTENER_APP_NAME)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn new_versions_are_served_via_notification_and_after_the_listener_is_killed() {
    let (db, model) = TestDb::with_model("fresh", ModelKind::Linear).await;
    let rows = seed_stream();
    // No periodic check during the test: only the notification path (and the re-check after a
    // reconnection) can bring new versions.
    let service = Service::start(
        &db.pool,
        ServingConfig {
            version_check_interval: Duration::from_secs(3_600),
            ..ServingConfig::default()
        },
    )
    .await;
    assert_eq!(served_version(&service, "fresh").await, 0);
    let pid = eventually(10, "the listener connection", || async {
        listener_pids(&db.pool).await.first().copied()
    })
    .await;

    let v1 = learn_more(&db.pool, model.model_id, &rows[..100]).await;
    assert_eq!(v1, 1);
    eventually(10, "version 1 via notification", || async {
        (served_version(&service, "fresh").await == v1).then_some(())
    })
    .await;

    // Kill the listener's backend; versions committed meanwhile arrive by the re-check after
    // the reconnection (or by notification once it is back).
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(killed);
    let v2 = learn_more(&db.pool, model.model_id, &rows[100..200]).await;
    assert_eq!(v2, 2);
    eventually(10, "version 2 after the listener was killed", || async {
        (served_version(&service, "fresh").await == v2).then_some(())
    })
    .await;
    let new_pid = eventually(10, "a new listener connection", || async {
        listener_pids(&db.pool)
            .await
            .into_iter()
            .find(|p| *p != pid)
    })
    .await;
    assert_ne!(new_pid, pid);
    // And notifications flow again on the new connection.
    let v3 = learn_more(&db.pool, model.model_id, &rows[200..300]).await;
    eventually(10, "version 3 on the new connection", || async {
        (served_version(&service, "fresh").await == v3).then_some(())
    })
    .await;
}

#[tokio::test]
async fn periodic_version_check_serves_new_versions_without_notifications() {
    let (db, model) = TestDb::with_model("polled", ModelKind::Linear).await;
    let rows = seed_stream();
    let service = Service::start(
        &db.pool,
        ServingConfig {
            listen: false,
            ..fast_checks()
        },
    )
    .await;
    assert_eq!(served_version(&service, "polled").await, 0);
    assert!(listener_pids(&db.pool).await.is_empty());
    let v = learn_more(&db.pool, model.model_id, &rows[..150]).await;
    eventually(10, "the new version via the periodic check", || async {
        (served_version(&service, "polled").await == v).then_some(())
    })
    .await;
    let learner = learn_in_memory(&model, &rows[..150]);
    let (_, answer) = service
        .post(
            "/v1/models/polled/predict",
            &json!({"features": features_json(&rows[500].0)}),
        )
        .await;
    assert_eq!(
        answer["prediction"].as_f64().unwrap().to_bits(),
        learner.predict(&rows[500].0).to_bits()
    );
}

#[tokio::test]
async fn incremental_and_full_refresh_give_the_same_model() {
    let (db, model) = TestDb::with_model("refresh", ModelKind::Logistic).await;
    let rows = sparse_stream(1_500, 4, 200, true, 5);
    let cache = std::sync::Arc::new(olps::serving::ModelCache::new(db.pool.clone()));
    let first = cache.get("refresh").await.unwrap();
    assert_eq!(first.version, 0);
    insert_stream(&db.pool, model.model_id, &rows[..700]).await;
    drain(&db.pool, 100).await;
    let outcome = cache.refresh(model.model_id).await.unwrap();
    assert_eq!(outcome, olps::serving::Refresh::Incremental(7));
    insert_stream(&db.pool, model.model_id, &rows[700..]).await;
    drain(&db.pool, 100).await;
    assert_eq!(
        cache.refresh(model.model_id).await.unwrap(),
        olps::serving::Refresh::Incremental(15)
    );
    assert_eq!(
        cache.refresh(model.model_id).await.unwrap(),
        olps::serving::Refresh::UpToDate(15)
    );
    let incremental = cache.cached(model.model_id).unwrap();
    let fresh = olps::serving::ModelCache::new(db.pool.clone());
    let full = fresh.get("refresh").await.unwrap();
    assert_eq!(full.version, 15);
    assert_eq!(incremental.learner.params.len(), full.learner.params.len());
    for (name, state) in &full.learner.params {
        assert_eq!(
            state_bits(state),
            state_bits(&incremental.learner.params[name]),
            "{name}"
        );
    }
    // The old copy is untouched (predictions holding it kept answering from version 0).
    assert_eq!(first.version, 0);
    assert!(first.learner.params.is_empty());
    let expected = learn_in_memory(&model, &rows);
    assert_eq!(full.learner.params.len(), expected.params.len());
    for (name, state) in &expected.params {
        assert_eq!(
            state_bits(state),
            state_bits(&full.learner.params[name]),
            "{name}"
        );
    }
}

#[tokio::test]
async fn delayed_labels_over_http_train_on_the_logged_features() {
    let (db, model) = TestDb::with_model("delayed", ModelKind::Logistic).await;
    let service = Service::start(&db.pool, fast_checks()).await;
    let rows = sparse_stream(60, 5, 25, true, 3);
    // 20 single predictions, then a batch of 40, each with an entity; entity u3 is predicted
    // again later with other features: its label trains on the latest.
    let mut sent = 0;
    for (i, (features, _)) in rows[..20].iter().enumerate() {
        let (status, answer) = service
            .post(
                "/v1/models/delayed/predict",
                &json!({"features": features_json(features), "entity_id": format!("u{i}")}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        sent += 1;
    }
    let instances: Vec<Value> = rows[20..]
        .iter()
        .enumerate()
        .map(|(i, (f, _))| json!({"features": features_json(f), "entity_id": format!("u{}", i + 20)}))
        .collect();
    let (status, answer) = service
        .post(
            "/v1/models/delayed/predict",
            &json!({"instances": instances}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    sent += 40;
    let replacement = vec![("f1".to_string(), 0.25), ("f7".to_string(), -1.5)];
    let (_, answer) = service
        .post(
            "/v1/models/delayed/predict",
            &json!({"features": features_json(&replacement), "entity_id": "u3"}),
        )
        .await;
    sent += 1;
    // The log is written off the request path: wait for it before sending labels.
    eventually(10, "the prediction log", || async {
        (logged_rows(&db.pool).await == sent).then_some(())
    })
    .await;
    let (prediction, version): (f64, i64) = sqlx::query_as(
        "SELECT prediction, model_version FROM prediction_log WHERE entity_id = 'u3' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        prediction.to_bits(),
        answer["prediction"].as_f64().unwrap().to_bits()
    );
    assert_eq!(version, 0);

    // Labels without features, over HTTP.
    let events: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, (_, label))| json!({"entity_id": format!("u{i}"), "feedback_type": "explicit", "feedback_value": label}))
        .collect();
    let (status, accepted) = service
        .post("/v1/models/delayed/feedback", &json!({"events": events}))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let stats = drain(&db.pool, 16).await;
    assert_eq!((stats.examples, stats.dead), (60, 0));

    let mut expected_rows = rows.clone();
    expected_rows[3].0 = replacement;
    let expected = learn_in_memory(&model, &expected_rows);
    assert_params_equal(&db.pool, model.model_id, &expected).await;
}

#[tokio::test]
async fn graceful_shutdown_flushes_the_prediction_log() {
    let (db, _) = TestDb::with_model("flushed", ModelKind::Linear).await;
    let mut service = Service::start(
        &db.pool,
        ServingConfig {
            log_batch: 500,
            ..fast_checks()
        },
    )
    .await;
    let rows = sparse_stream(10_000, 8, 500, false, 8);
    let mut total = 0;
    for round in 0..3 {
        let instances: Vec<Value> = rows
            .iter()
            .enumerate()
            .map(|(i, (f, _))| json!({"features": features_json(f), "entity_id": format!("r{round}-{i}")}))
            .collect();
        let (status, answer) = service
            .post(
                "/v1/models/flushed/predict",
                &json!({"instances": instances}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        total += rows.len() as i64;
    }
    let before = logged_rows(&db.pool).await;
    service.stop().await;
    let after = logged_rows(&db.pool).await;
    eprintln!("logged before shutdown: {before} of {total}; after: {after}");
    assert_eq!(
        after, total,
        "every logged prediction is written by the time serve returns"
    );
}

#[tokio::test]
async fn a_full_log_buffer_drops_and_counts_but_still_answers() {
    let (db, _) = TestDb::with_model("full", ModelKind::Linear).await;
    let mut service = Service::start(
        &db.pool,
        ServingConfig {
            log_capacity: 10,
            log_batch: 5,
            ..fast_checks()
        },
    )
    .await;
    let dropped_before = metric_value(
        &service.text("/metrics").await,
        "olps_prediction_log_dropped_total",
        &[("reason", "queue_full")],
    );
    let instances: Vec<Value> = (0..1_000)
        .map(|i| json!({"features": {"a": i}, "entity_id": format!("e{i}")}))
        .collect();
    let (status, answer) = service
        .post("/v1/models/full/predict", &json!({"instances": instances}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["predictions"].as_array().unwrap().len(), 1_000);
    let text = service.text("/metrics").await;
    service.stop().await;
    let dropped = metric_value(
        &text,
        "olps_prediction_log_dropped_total",
        &[("reason", "queue_full")],
    ) - dropped_before;
    let logged = logged_rows(&db.pool).await;
    assert!(
        dropped > 0.0,
        "a 10-row buffer cannot take 1,000 rows at once"
    );
    assert_eq!(
        logged + dropped as i64,
        1_000,
        "each prediction is logged or counted as dropped"
    );
}

/// The value of one series in a Prometheus text document (0 when absent).
fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        if labels
            .iter()
            .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")))
        {
            return value.trim().parse().unwrap();
        }
    }
    0.0
}

#[tokio::test]
async fn metrics_cover_requests_predictions_feedback_queue_versions_and_the_worker() {
    let (db, model) = TestDb::with_model("observed", ModelKind::Linear).await;
    let service = Service::start(&db.pool, fast_checks()).await;
    let rows = seed_stream();
    insert_stream(&db.pool, model.model_id, &rows[..250]).await;
    drain(&db.pool, 100).await;
    for (features, label) in &rows[250..260] {
        let (status, _) = service
            .post(
                "/v1/models/observed/predict",
                &json!({"features": features_json(features)}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, _) = service
            .post(
                "/v1/models/observed/feedback",
                &json!({"entity_id": "m", "feedback_type": "explicit", "feedback_value": label, "features": features_json(features)}),
            )
            .await;
        assert_eq!(status, 202);
    }
    let (status, _) = service
        .post("/v1/models/observed/feedback", &json!({"entity_id": "m"}))
        .await;
    assert_eq!(status, 422);
    let response = service
        .client
        .get(format!("{}/metrics", service.base))
        .send()
        .await
        .unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    let route = [
        ("route", "/v1/models/{model}/predict"),
        ("method", "POST"),
        ("status", "200"),
    ];
    assert!(value("olps_http_requests_total", &route) >= 10.0, "{text}");
    assert!(value("olps_http_request_duration_seconds_count", &route[..2]) >= 10.0);
    assert!(text.contains("olps_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/models/{model}/predict\",le=\"0.001\"}"));
    let model_label = [("model", "observed")];
    assert_eq!(value("olps_predictions_total", &model_label), 10.0);
    assert_eq!(
        value("olps_feedback_events_accepted_total", &model_label),
        10.0
    );
    assert!(
        value(
            "olps_feedback_requests_rejected_total",
            &[("code", "invalid_feedback")]
        ) >= 1.0
    );
    assert_eq!(value("olps_queue_depth", &model_label), 10.0);
    assert!(value("olps_queue_oldest_pending_age_seconds", &model_label) >= 0.0);
    assert!(text.contains("olps_queue_oldest_pending_age_seconds{model=\"observed\"}"));
    assert_eq!(value("olps_queue_dead_letters", &model_label), 0.0);
    assert_eq!(value("olps_model_version", &model_label), 3.0);
    assert_eq!(value("olps_serving_model_version", &model_label), 3.0);
    assert!(text.contains("olps_model_prequential_loss{model=\"observed\"}"));
    assert_eq!(value("olps_worker_batches_total", &model_label), 3.0);
    assert_eq!(
        value("olps_worker_events_applied_total", &model_label),
        250.0
    );
    assert!(value("olps_worker_loss_sum_total", &model_label) > 0.0);
    for name in [
        "olps_prediction_log_dropped_total",
        "olps_prediction_log_pending",
        "olps_prediction_log_written_total",
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
    }
}

#[tokio::test]
async fn worker_serves_metrics_with_metrics_listen() {
    let (db, model) = TestDb::with_model("worked", ModelKind::Linear).await;
    insert_stream(&db.pool, model.model_id, &seed_stream()[..120]).await;
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let metrics_listen = addr.to_string();
    let args = [
        "worker",
        "--batch-size",
        "50",
        "--metrics-listen",
        &metrics_listen,
    ];
    let mut child = olps_command(None, Some(&db.url), &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let text = eventually(60, "the worker's metrics after draining", || {
        let client = client.clone();
        async move {
            let text = client
                .get(format!("http://{addr}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            (metric_value(
                &text,
                "olps_worker_events_applied_total",
                &[("model", "worked")],
            ) == 120.0)
                .then_some(text)
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        metric_value(&text, "olps_worker_batches_total", &[("model", "worked")]),
        3.0
    );
    assert_eq!(
        metric_value(&text, "olps_queue_depth", &[("model", "worked")]),
        0.0
    );
    assert_eq!(
        metric_value(&text, "olps_model_version", &[("model", "worked")]),
        3.0
    );
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str, mentions: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(mentions),
        "{message:?} should mention {mentions:?}"
    );
}

#[tokio::test]
async fn bad_predict_requests_are_4xx_with_actionable_messages() {
    let (db, _) = TestDb::with_model("strict", ModelKind::Linear).await;
    let service = Service::start(&db.pool, fast_checks()).await;
    let p = "/v1/models/strict/predict";
    let (s, b) = service
        .post("/v1/models/nope/predict", &json!({"features": {}}))
        .await;
    assert_error(s, &b, 404, "not_found", "nope");
    let (s, b) = service.post(p, &json!({})).await;
    assert_error(s, &b, 400, "invalid_request", "features");
    let (s, b) = service.post(p, &json!({"features": {"a": "x"}})).await;
    assert_error(s, &b, 400, "invalid_request", "features.a");
    let (s, b) = service
        .post(p, &json!({"features": {"__intercept__": 1}}))
        .await;
    assert_error(s, &b, 400, "invalid_request", "reserved");
    let (s, b) = service
        .post(p, &json!({"features": {"a": 1}, "bogus": 1}))
        .await;
    assert_error(s, &b, 400, "invalid_request", "bogus");
    let (s, b) = service
        .post(
            p,
            &json!({"features": {"a": 1}, "instances": [{"features": {}}]}),
        )
        .await;
    assert_error(s, &b, 400, "invalid_request", "not both");
    let (s, b) = service.post(p, &json!({"instances": []})).await;
    assert_error(s, &b, 400, "invalid_request", "at least one");
    let (s, b) = service
        .post(
            p,
            &json!({"instances": [{"features": {}}, {"features": {}, "entity_id": ""}]}),
        )
        .await;
    assert_error(s, &b, 400, "invalid_request", "instances[1].entity_id");
    let too_many: Vec<Value> = (0..10_001).map(|_| json!({"features": {}})).collect();
    let (s, b) = service.post(p, &json!({"instances": too_many})).await;
    assert_error(s, &b, 400, "invalid_request", "10000");
    let (s, b) = service
        .client
        .post(format!("{}{p}", service.base))
        .header("content-type", "application/json")
        .body("{\"features\": ")
        .send()
        .await
        .map(|r| async { decode(r).await })
        .unwrap()
        .await;
    assert_error(s, &b, 400, "invalid_request", "not valid JSON");
    let (s, b) = service.get(p).await;
    assert_error(s, &b, 405, "method_not_allowed", "method");
}

#[tokio::test]
async fn a_request_over_the_timeout_is_answered_503_in_the_error_shape() {
    let db = TestDb::new().await;
    let mut state = AppState::new(db.pool.clone());
    state.request_timeout = Duration::from_millis(50);
    let service = Service::start_with(state).await;
    // A body that never arrives keeps the handler waiting past the timeout.
    let addr = service.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let token = service.token.clone().unwrap();
    stream
        .write_all(
            format!("POST /v1/models/m/predict HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"feat").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let text = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer before the client gives up")
            .unwrap();
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response).to_string();
        if n == 0 || text.contains("\"message\"") && text.ends_with('}') {
            break text;
        }
    };
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "timeout", "{body}");
}

// ---- OpenAPI ---------------------------------------------------------------------------------

/// Route paths registered in the HTTP source with plain axum calls (`.route("...")` and the
/// like), which bypass the document; and the paths of `#[utoipa::path]` handlers.
fn routes_in_source() -> (BTreeSet<String>, BTreeSet<String>) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http");
    let mut plain = BTreeSet::new();
    let mut annotated = BTreeSet::new();
    let mut files = vec![std::path::PathBuf::from(dir)];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        for call in [".route(", ".route_service(", ".nest(", ".nest_service("] {
            for (i, _) in source.match_indices(call) {
                let rest = source[i + call.len()..].trim_start();
                if let Some(literal) = rest.strip_prefix('"') {
                    plain.insert(literal.split('"').next().unwrap().to_string());
                }
            }
        }
        for (i, _) in source.match_indices("#[utoipa::path(") {
            let attribute = &source[i..];
            let attribute = &attribute[..attribute.find(")]\n").unwrap_or(attribute.len())];
            if let Some(j) = attribute.find("path = \"") {
                let literal = &attribute[j + 8..];
                annotated.insert(literal.split('"').next().unwrap().to_string());
            }
        }
    }
    (plain, annotated)
}

fn operations(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                out.push((method.to_string(), path.clone()));
            }
        }
    }
    out
}

/// Checks a value against a schema of the document (the subset utoipa emits: $ref, type,
/// properties, required, items, oneOf, allOf, additionalProperties, nullable types).
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.trim_start_matches("#/components/schemas/");
        return conforms(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            conforms(doc, s, value, at)?;
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = one
            .iter()
            .filter(|s| conforms(doc, s, value, at).is_ok())
            .count();
        if matching != 1 {
            return Err(format!(
                "{at}: matches {matching} of oneOf, not exactly one"
            ));
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let ok = types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "number" => value.is_number(),
            "integer" => value.is_i64() || value.is_u64(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => true,
        });
        if !ok {
            return Err(format!("{at}: {value} is not of type {types:?}"));
        }
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if value.get(name).is_none() {
                return Err(format!("{at}: required property {name} missing in {value}"));
            }
        }
    }
    if let (Some(properties), Some(object)) = (
        schema.get("properties").and_then(Value::as_object),
        value.as_object(),
    ) {
        for (name, v) in object {
            match properties.get(name) {
                Some(s) => conforms(doc, s, v, &format!("{at}.{name}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: undocumented property {name}"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, v) in array.iter().enumerate() {
            conforms(doc, items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// Asserts an answer's status is documented for the operation and its body matches the
/// documented schema.
fn assert_documented(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let operation = &doc["paths"][path][method];
    let response = &operation["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} answered {status}, which its documentation does not list: {body}"
    );
    let Some(content) = response["content"].as_object() else {
        return;
    };
    let schema = content
        .get("application/json")
        .map(|c| &c["schema"])
        .unwrap_or(&Value::Null);
    if schema.is_object() {
        if let Err(e) = conforms(doc, schema, body, "body") {
            panic!("{method} {path} {status}: the body does not match its documented shape: {e}\n{body}");
        }
    }
}

#[tokio::test]
async fn openapi_document_lists_every_served_route_and_every_documented_route_is_served() {
    let db = TestDb::new().await;
    let service = Service::start(&db.pool, fast_checks()).await;
    let (status, doc) = service.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let documented = operations(&doc);
    let documented_paths: BTreeSet<String> = documented.iter().map(|(_, p)| p.clone()).collect();

    // Every route registered in the code is in the document. Routes added with plain axum
    // calls (`.route(...)`) bypass it: register them with `routes!(...)` on an OpenApiRouter.
    let (plain, annotated) = routes_in_source();
    let undocumented: Vec<&String> = plain
        .iter()
        .filter(|p| !documented_paths.contains(*p))
        .collect();
    assert!(
        undocumented.is_empty(),
        "routes served but missing from the OpenAPI document: {undocumented:?}; annotate their \
         handlers with #[utoipa::path(...)] and register them with .routes(routes!(...)) on an \
         OpenApiRouter merged in http::api()"
    );
    let unregistered: Vec<&String> = annotated
        .iter()
        .filter(|p| !documented_paths.contains(*p))
        .collect();
    assert!(
        unregistered.is_empty(),
        "annotated handlers not registered with routes!(): {unregistered:?}"
    );
    for required in [
        "/v1/models",
        "/v1/models/{model}",
        "/v1/models/{model}/feedback",
        "/v1/models/{model}/predict",
        "/healthz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(
            documented_paths.contains(required),
            "{required} missing from the document"
        );
    }

    // Every documented operation is served: the router answers it (not its fallback's "no
    // such route" or "method not allowed"), with a documented status and shape.
    for (method, path) in &documented {
        let url = format!(
            "{}{}",
            service.base,
            path.replace("{model}", "no-such-model")
                .replace(['{', '}'], "")
        );
        let request = match method.as_str() {
            "get" => service.client.get(&url),
            "post" => service.client.post(&url).json(&json!({})),
            "put" => service.client.put(&url).json(&json!({})),
            "patch" => service.client.patch(&url).json(&json!({})),
            _ => service.client.delete(&url),
        };
        let (status, body) = decode(request.send().await.unwrap()).await;
        let fallback = status == 405
            || (status == 404
                && body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("no such route")));
        assert!(
            !fallback,
            "{method} {path} is documented but not served: {status} {body}"
        );
        if path != "/metrics" && path != "/openapi.json" {
            assert_documented(&doc, method, path, status, &body);
        }
    }
}

#[tokio::test]
async fn answers_match_their_documented_shapes() {
    let (db, model) = TestDb::with_model("shaped", ModelKind::Logistic).await;
    let service = Service::start(&db.pool, fast_checks()).await;
    let (_, doc) = service.get("/openapi.json").await;
    let check = |method: &str, path: &str, status: u16, body: &Value| {
        assert_documented(&doc, method, path, status, body)
    };
    let models = "/v1/models";
    let one = "/v1/models/{model}";
    let feedback = "/v1/models/{model}/feedback";
    let predict = "/v1/models/{model}/predict";

    let (s, b) = service
        .post(
            models,
            &json!({"name": "other", "kind": "linear", "settings": {"optimizer": "adam"}}),
        )
        .await;
    assert_eq!(s, 201);
    check("post", models, s, &b);
    // The mirror schemas describe exactly what is served.
    let properties = |name: &str| -> BTreeSet<String> {
        doc["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let keys = |v: &Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(
        properties("Model"),
        keys(&b),
        "Model schema vs a served model"
    );
    assert_eq!(
        properties("LearnerConfig"),
        keys(&b["settings"]),
        "LearnerConfig schema vs served settings"
    );
    let (s, b) = service
        .post(models, &json!({"name": "other", "kind": "linear"}))
        .await;
    check("post", models, s, &b);
    assert_eq!(s, 409);
    let (s, b) = service
        .post(models, &json!({"name": "x", "kind": "tree"}))
        .await;
    check("post", models, s, &b);
    assert_eq!(s, 400);
    let (s, b) = service.get(models).await;
    check("get", models, s, &b);
    let (s, b) = service.get(&format!("/v1/models/{}", model.model_id)).await;
    check("get", one, s, &b);
    let (s, b) = service.get("/v1/models/missing").await;
    check("get", one, s, &b);
    assert_eq!(s, 404);

    let (s, b) = service
        .post("/v1/models/shaped/feedback", &json!({"events": [{"entity_id": "a", "feedback_type": "explicit", "feedback_value": 1, "features": {"x": 1}}]}))
        .await;
    assert_eq!(s, 202);
    check("post", feedback, s, &b);
    assert_eq!(properties("Accepted"), keys(&b));
    let (s, b) = service
        .post(
            "/v1/models/shaped/feedback",
            &json!({"entity_id": "a", "feedback_type": "explicit", "feedback_value": 7}),
        )
        .await;
    assert_eq!(s, 422);
    check("post", feedback, s, &b);
    let (s, b) = service
        .post("/v1/models/missing/feedback", &json!({}))
        .await;
    check("post", feedback, s, &b);

    for body in [
        json!({"features": {"x": 1}}),
        json!({"features": {"x": 1, "y": 2}, "explain": true, "entity_id": "e"}),
        json!({"instances": [{"features": {"x": 1}}, {"features": {}, "entity_id": "f"}]}),
        json!({"instances": [{"features": {"x": 1}}], "explain": true}),
    ] {
        let (s, b) = service.post("/v1/models/shaped/predict", &body).await;
        assert_eq!(s, 200, "{b}");
        check("post", predict, s, &b);
    }
    for body in [
        json!({"features": {"x": "1"}}),
        json!({"instances": []}),
        json!([]),
    ] {
        let (s, b) = service.post("/v1/models/shaped/predict", &body).await;
        assert_eq!(s, 400, "{b}");
        check("post", predict, s, &b);
    }
    let (s, b) = service.get("/healthz").await;
    check("get", "/healthz", s, &b);
    // Unknown routes answer in the same error shape.
    let (s, b) = service.get("/v2/nothing").await;
    assert_error(s, &b, 404, "not_found", "no such route");
    assert!(conforms(
        &doc,
        &json!({"$ref": "#/components/schemas/ErrorBody"}),
        &b,
        "body"
    )
    .is_ok());
}

#[tokio::test]
async fn deleted_models_stop_being_served_and_their_name_can_be_reused() {
    let (db, old) = TestDb::with_model("reused", ModelKind::Linear).await;
    insert_stream(&db.pool, old.model_id, &seed_stream()[..100]).await;
    drain(&db.pool, 100).await;
    let service = Service::start(&db.pool, fast_checks()).await;
    assert_eq!(served_version(&service, "reused").await, 1);
    committed::delete_model(&db.pool, old.model_id)
        .await
        .unwrap();
    eventually(10, "the deleted model to be dropped", || async {
        let (status, _) = service
            .post("/v1/models/reused/predict", &json!({"features": {}}))
            .await;
        (status == 404).then_some(())
    })
    .await;
    let (status, _) = service
        .post(
            &format!("/v1/models/{}/predict", old.model_id),
            &json!({"features": {}}),
        )
        .await;
    assert_eq!(status, 404);
    create_model(
        &db.pool,
        "reused",
        ModelKind::Linear,
        LearnerConfig::default(),
    )
    .await;
    assert_eq!(served_version(&service, "reused").await, 0);
}
