//! Shadow (challenger) models (issue 19, part 2): a challenger receives each event its champion
//! learns exactly once and in the champion's order (also across a failed batch and a SIGKILLed
//! worker), learns bit for bit what the learner in memory learns from that stream, is compared
//! with the champion over the same events (the route, `sql/challengers.sql` and a hand
//! computation agree), and can be promoted: the champion then holds its parameters bit for bit,
//! and a rollback past the promotion restores the old ones bit for bit.

use std::collections::HashMap;
use std::time::Duration;

use olps::feedback::FeedbackEvent;
use olps::learner::{Example, Learner, LearnerConfig, ModelKind, OptimizerKind, ParamState};
use olps::models::Model;
use olps::shadow::links;
use olps::worker::{BatchOutcome, Worker, WorkerConfig};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::*;

fn settings(optimizer: OptimizerKind, learning_rate: f64) -> LearnerConfig {
    LearnerConfig {
        optimizer,
        learning_rate,
        ..LearnerConfig::default()
    }
}

/// Models "champ" and "chall" of one kind, with their settings (not linked yet).
async fn champ_and_chall(
    pool: &sqlx::PgPool,
    kind: ModelKind,
    champion: LearnerConfig,
    challenger: LearnerConfig,
) -> (Model, Model) {
    (
        create_model(pool, "champ", kind, champion).await,
        create_model(pool, "chall", kind, challenger).await,
    )
}

/// Row `i` as an event: explicit, implicit and a custom type in turn (three priorities).
fn event(i: usize, (features, label): &Row) -> FeedbackEvent {
    FeedbackEvent {
        id: None,
        entity_id: format!("e{i}"),
        feedback_type: ["explicit", "implicit", "click"][i % 3].into(),
        feedback_value: *label,
        confidence: 1.0,
        metadata: json!({ "features": features.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>() }),
        timestamp: None,
        prediction_id: None,
    }
}

async fn link(pool: &PgPool, champion: &Model, challenger: &Model) {
    let champion = olps::models::find(pool, &champion.name).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    links::add(&mut tx, &champion, challenger, "test")
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// A model's learned events in its order: (id, features as JSON text, label, prequential
/// prediction, prequential loss). Features of a delayed label come from the prediction it names.
type Learned = Vec<(Uuid, String, f64, f64, f64)>;

async fn learned(pool: &PgPool, model_id: Uuid) -> Learned {
    sqlx::query_as(
        "SELECT e.id, coalesce(e.metadata -> 'features', p.features)::text, e.feedback_value,
                e.prequential_prediction, e.prequential_loss
         FROM feedback_events e
         LEFT JOIN prediction_log p
             ON p.model_id = e.model_id AND p.prediction_id = e.prediction_id
         WHERE e.model_id = $1 AND e.processed
         ORDER BY e.applied_version, e.applied_position",
    )
    .bind(model_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The learner in memory over `events` in their order, and each step's (prediction, loss).
fn in_memory(model: &Model, events: &Learned) -> (Learner, Vec<(f64, f64)>) {
    let mut learner = Learner::new(model.kind, model.settings.clone());
    let steps = events
        .iter()
        .map(|(_, features, label, _, _)| {
            let features = olps::worker::examples::features_from_json(features, "f").unwrap();
            let step = learner.learn(&Example::new(features, *label, 1.0).unwrap());
            (step.prediction, step.loss)
        })
        .collect();
    (learner, steps)
}

/// The model's learned stream is what the learner in memory learns, bit for bit: parameters,
/// state, and each event's stored prequential prediction and loss.
async fn assert_learned_in_memory(pool: &PgPool, model: &Model, events: &Learned) {
    let (learner, steps) = in_memory(model, events);
    assert_params_equal(pool, model.model_id, &learner).await;
    for ((id, _, _, prediction, loss), (p, l)) in events.iter().zip(&steps) {
        assert_eq!(
            (prediction.to_bits(), loss.to_bits()),
            (p.to_bits(), l.to_bits()),
            "event {id} of '{}': stored prequential prediction and loss",
            model.name
        );
    }
}

fn ids(events: &[(Uuid, String, f64, f64, f64)]) -> Vec<Uuid> {
    events.iter().map(|e| e.0).collect()
}

async fn worker_for(pool: &PgPool, models: Vec<Uuid>, batch: i64) {
    let config = WorkerConfig {
        batch_size: batch,
        models,
        until_empty: true,
        poll_interval: Duration::from_millis(20),
        ..Default::default()
    };
    Worker::new(pool.clone(), config)
        .run(CancellationToken::new())
        .await
        .unwrap();
}

/// Logs a prediction of `model` for `entity` with `features` (as the service would), returning
/// its id.
async fn log_prediction(pool: &PgPool, model_id: Uuid, entity: &str, features: &Value) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO prediction_log (model_id, entity_id, features, prediction, model_version)
         VALUES ($1, $2, $3, 0.5, 0) RETURNING prediction_id",
    )
    .bind(model_id)
    .bind(entity)
    .bind(features)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_challenger_learns_each_champion_event_once_in_the_champions_order() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let champion = create_model(pool, "champ", ModelKind::Linear, LearnerConfig::default()).await;
    let challenger = create_model(
        pool,
        "chall",
        ModelKind::Linear,
        settings(OptimizerKind::Adam, 0.02),
    )
    .await;
    // A challenger of the challenger gets the events through the challenger's batches.
    let second = create_model(
        pool,
        "chall-2",
        ModelKind::Linear,
        settings(OptimizerKind::Adagrad, 0.3),
    )
    .await;
    let rows = seed_stream();
    let events: Vec<FeedbackEvent> = rows[..900]
        .iter()
        .enumerate()
        .map(|(i, r)| event(i, r))
        .collect();

    // Learned before the link: not copied.
    olps::feedback::insert(pool, champion.model_id, &events[..150])
        .await
        .unwrap();
    drain(pool, 64).await;
    let before_link = learned(pool, champion.model_id).await.len();
    assert_eq!(before_link, 150);
    link(pool, &champion, &challenger).await;
    link(pool, &challenger, &second).await;

    // Three priorities, arriving in chunks while the worker drains in between: the champion's
    // order is not the order of arrival. Some labels come as delayed labels by prediction id
    // (no features of their own): the copies must carry the features the champion used.
    for (c, chunk) in events[150..].chunks(150).enumerate() {
        let mut chunk = chunk.to_vec();
        for (j, e) in chunk.iter_mut().enumerate().filter(|(j, _)| j % 7 == 3) {
            let entity = format!("delayed-{c}-{j}");
            let id =
                log_prediction(pool, champion.model_id, &entity, &e.metadata["features"]).await;
            e.entity_id = entity;
            e.prediction_id = Some(id);
            e.metadata = json!({"source": "label service"});
        }
        olps::feedback::insert(pool, champion.model_id, &chunk)
            .await
            .unwrap();
        // The challengers fall behind by many batches: their queues hold copies of several
        // champion batches, each in the champion's priority order.
        worker_for(pool, vec![champion.model_id], 64).await;
    }
    drain(pool, 64).await;

    let champ = learned(pool, champion.model_id).await;
    let chall = learned(pool, challenger.model_id).await;
    let chall2 = learned(pool, second.model_id).await;
    assert_eq!(champ.len(), 900);
    let after_link = &champ[before_link..];
    // Exactly once, in the champion's order, each link down the chain.
    assert_eq!(ids(&chall), ids(after_link), "challenger: events or order");
    assert_eq!(
        ids(&chall2),
        ids(&chall),
        "second challenger: events or order"
    );
    let stored: (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT id) FROM feedback_events WHERE model_id = $1",
    )
    .bind(challenger.model_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        (750, 750),
        "each event stored once for the challenger"
    );
    // Each model learned exactly what the learner in memory learns from its stream.
    assert_learned_in_memory(pool, &champion, &champ).await;
    assert_learned_in_memory(pool, &challenger, &chall).await;
    assert_learned_in_memory(pool, &second, &chall2).await;
    assert_linear_history(pool, challenger.model_id).await;

    // After the link is removed nothing more is copied.
    let mut tx = pool.begin().await.unwrap();
    links::remove(&mut tx, &champion, &challenger)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    olps::feedback::insert(pool, champion.model_id, &events[..10])
        .await
        .unwrap();
    drain(pool, 64).await;
    assert_eq!(learned(pool, challenger.model_id).await.len(), 750);
}

#[tokio::test]
async fn a_failed_batch_and_a_killed_worker_copy_each_event_exactly_once() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let (champion, challenger) = champ_and_chall(
        pool,
        ModelKind::Logistic,
        settings(OptimizerKind::Sgd, 0.1),
        settings(OptimizerKind::Adam, 0.05),
    )
    .await;
    link(pool, &champion, &challenger).await;
    // The champion's second batch fails once, after its copy was made (at the version row): the
    // whole batch, copy included, is rolled back, and applied again later.
    for sql in [
        "CREATE SEQUENCE test_fail_once".to_string(),
        format!(
            "CREATE FUNCTION test_fail_once() RETURNS TRIGGER AS $$
             BEGIN
                 IF NEW.model_id = '{}' AND NEW.model_version = 2 THEN
                     IF nextval('test_fail_once') = 1 THEN
                         RAISE EXCEPTION 'test: this batch fails once';
                     END IF;
                 END IF;
                 RETURN NEW;
             END $$ LANGUAGE plpgsql",
            champion.model_id
        ),
        "CREATE TRIGGER test_fail_once BEFORE INSERT ON model_versions
         FOR EACH ROW EXECUTE FUNCTION test_fail_once()"
            .to_string(),
    ] {
        sqlx::query(&sql).execute(pool).await.unwrap();
    }
    let rows = sparse_stream(6_000, 6, 200, true, 7);
    let events: Vec<FeedbackEvent> = rows.iter().enumerate().map(|(i, r)| event(i, r)).collect();
    olps::feedback::insert(pool, champion.model_id, &events[..300])
        .await
        .unwrap();
    let copies = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM feedback_events WHERE model_id = $1")
            .bind(challenger.model_id)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    let mut worker = Worker::new(
        pool.clone(),
        WorkerConfig {
            batch_size: 100,
            models: vec![champion.model_id],
            ..Default::default()
        },
    );
    assert!(matches!(
        worker.run_batch(champion.model_id).await.unwrap(),
        BatchOutcome::Applied { version: 1, .. }
    ));
    assert_eq!(copies().await, 100, "the first batch copied");
    let failed = worker.run_batch(champion.model_id).await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(copies().await, 100, "the rolled-back batch copied nothing");
    worker_for(pool, vec![champion.model_id], 100).await;
    assert_eq!(copies().await, 300);

    // Workers (the olps binary) killed at random moments while both models learn the rest.
    for chunk in events[300..].chunks(1_000) {
        olps::feedback::insert(pool, champion.model_id, chunk)
            .await
            .unwrap();
    }
    let spawn = |until_empty: bool| {
        let args = ["--poll-interval-ms", "20", "--batch-size", "200"];
        spawn_quiet_worker(&db.url, &args, until_empty)
    };
    let applied = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM feedback_events WHERE processed")
            .fetch_one(pool)
            .await
            .unwrap()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    for _ in 0..4 {
        let mut child = spawn(false);
        let before = applied().await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..300))).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while applied().await == before && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..60))).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
    }
    assert!(spawn(true).wait().unwrap().success());

    let champ = learned(pool, champion.model_id).await;
    let chall = learned(pool, challenger.model_id).await;
    assert_eq!(champ.len(), 6_000);
    assert_eq!(
        ids(&chall),
        ids(&champ),
        "the challenger: each event once, in order"
    );
    assert_learned_in_memory(pool, &champion, &champ).await;
    assert_learned_in_memory(pool, &challenger, &chall).await;
    for model in [&champion, &challenger] {
        assert_linear_history(pool, model.model_id).await;
    }
}

/// Mean of the losses and share of correct sides of 0.5, by hand.
fn hand(steps: &[(f64, f64)], labels: &[f64]) -> (f64, f64) {
    let loss = steps.iter().map(|s| s.1).sum::<f64>() / steps.len() as f64;
    let correct = steps
        .iter()
        .zip(labels)
        .filter(|((p, _), y)| (*p >= 0.5) == (**y >= 0.5))
        .count();
    (loss, correct as f64 / steps.len() as f64)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test]
async fn comparison_from_route_sql_and_by_hand_agree() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let (champion, challenger) = champ_and_chall(
        pool,
        ModelKind::Logistic,
        settings(OptimizerKind::Sgd, 0.05),
        settings(OptimizerKind::Adam, 0.05),
    )
    .await;
    let rows = sparse_stream(1_200, 5, 40, true, 3);
    let events: Vec<FeedbackEvent> = rows.iter().enumerate().map(|(i, r)| event(i, r)).collect();
    olps::feedback::insert(pool, champion.model_id, &events[..200])
        .await
        .unwrap();
    drain(pool, 100).await;
    link(pool, &champion, &challenger).await;
    olps::feedback::insert(pool, champion.model_id, &events[200..1_000])
        .await
        .unwrap();
    drain(pool, 100).await;
    // Learned by the champion only (the challenger's worker is behind): not compared yet.
    olps::feedback::insert(pool, champion.model_id, &events[1_000..])
        .await
        .unwrap();
    worker_for(pool, vec![champion.model_id], 100).await;

    // By hand: both learners in memory over the champion's stream, compared on the 800 events
    // both learned.
    let champ = learned(pool, champion.model_id).await;
    let (_, champ_steps) = in_memory(&champion, &champ);
    let both = &champ[200..1_000];
    let (_, chall_steps) = in_memory(&challenger, &both.to_vec());
    let labels: Vec<f64> = both.iter().map(|e| e.2).collect();
    let (champ_loss, champ_acc) = hand(&champ_steps[200..1_000], &labels);
    let (chall_loss, chall_acc) = hand(&chall_steps, &labels);

    let mut service = Service::start(pool, Default::default()).await;
    let (status, metrics) = service.get("/v1/models/champ/metrics").await;
    assert_eq!(status, 200, "{metrics}");
    service.stop().await;
    let route = &metrics["challengers"];
    assert_eq!(route.as_array().unwrap().len(), 1, "{metrics}");
    let route = &route[0];
    let sql = crate::sql::run_sql(&db.url, "challengers.sql", &[("model", "champ".into())]).await;
    assert_eq!(sql.len(), 1);
    let sql = &sql[0];
    assert_eq!(route["challenger"], "chall");
    assert_eq!(sql["challenger"], "chall");
    for (from_route, from_sql) in [
        (route["events"].as_i64(), crate::sql::i(sql, "events")),
        (
            route["not_learned_by_challenger"].as_i64(),
            crate::sql::i(sql, "not_learned_by_challenger"),
        ),
    ] {
        assert_eq!(from_route, Some(from_sql));
    }
    assert_eq!(route["events"], 800);
    assert_eq!(route["not_learned_by_challenger"], 200);
    assert_eq!(route["since_version"], 2);
    for (column, expected) in [
        ("champion_mean_loss", champ_loss),
        ("challenger_mean_loss", chall_loss),
        ("champion_accuracy", champ_acc),
        ("challenger_accuracy", chall_acc),
    ] {
        let (r, s) = (route[column].as_f64().unwrap(), crate::sql::f(sql, column));
        assert!(
            close(r, expected),
            "{column}: route {r}, by hand {expected}"
        );
        assert!(close(s, expected), "{column}: sql {s}, by hand {expected}");
    }
    // The two models really differ (else the comparison proves little).
    assert!(!close(champ_loss, chall_loss));

    // Once the challenger has caught up, every event after the link is compared.
    drain(pool, 100).await;
    let sql = crate::sql::run_sql(&db.url, "challengers.sql", &[("model", "champ".into())]).await;
    assert_eq!(
        (
            crate::sql::i(&sql[0], "events"),
            crate::sql::i(&sql[0], "not_learned_by_challenger")
        ),
        (1_000, 0)
    );
}

async fn params(pool: &PgPool, id: Uuid) -> HashMap<String, [u64; 6]> {
    olps::params::load_all(pool, id)
        .await
        .unwrap()
        .iter()
        .map(|(k, s): (&String, &ParamState)| (k.clone(), state_bits(s)))
        .filter(|(_, bits)| *bits != [0; 6])
        .collect()
}

async fn model_row(pool: &PgPool, id: Uuid) -> (i64, Value, Value) {
    sqlx::query_as("SELECT examples_seen, learner_state, settings FROM models WHERE model_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn promotion_then_rollback_is_bit_identical() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let (champion, challenger) = champ_and_chall(
        pool,
        ModelKind::Linear,
        settings(OptimizerKind::Sgd, 0.01),
        settings(OptimizerKind::Adam, 0.05),
    )
    .await;
    // The champion knows features the challenger never sees: promoted, they are zeroed.
    let early = sparse_stream(100, 4, 30, false, 1);
    insert_stream(pool, champion.model_id, &early).await;
    drain(pool, 50).await;
    link(pool, &champion, &challenger).await;
    let rows = sparse_stream(600, 4, 20, false, 2);
    let events: Vec<FeedbackEvent> = rows.iter().enumerate().map(|(i, r)| event(i, r)).collect();
    olps::feedback::insert(pool, champion.model_id, &events[..400])
        .await
        .unwrap();
    drain(pool, 100).await;
    let before = current_version(pool, champion.model_id).await;
    let champion_before = params(pool, champion.model_id).await;
    let row_before = model_row(pool, champion.model_id).await;

    // Promoted over HTTP; predictions by the champion's name then answer with the challenger's
    // parameters.
    let mut service = Service::start(pool, Default::default()).await;
    let (status, promoted) = service
        .post("/v1/models/champ/challengers/chall/promote", &json!({}))
        .await;
    assert_eq!(status, 200, "{promoted}");
    assert_eq!(promoted["version"], before + 1);
    assert_eq!(promoted["challenger"], "chall");
    assert!(
        promoted["parameters_zeroed"].as_i64().unwrap() > 0,
        "{promoted}"
    );
    assert!(
        promoted["settings_changed"]
            .as_array()
            .unwrap()
            .contains(&json!("optimizer")),
        "{promoted}"
    );
    assert_eq!(
        params(pool, champion.model_id).await,
        params(pool, challenger.model_id).await,
        "the champion holds the challenger's parameters, bit for bit"
    );
    assert_eq!(
        model_row(pool, champion.model_id).await,
        model_row(pool, challenger.model_id).await,
        "examples seen, learner state and settings"
    );
    let features = json!({"f1": 0.5, "f7": -1.25, "f13": 2.0});
    let (_, by_champion) = service
        .post("/v1/models/champ/predict", &json!({"features": features}))
        .await;
    let (_, by_challenger) = service
        .post("/v1/models/chall/predict", &json!({"features": features}))
        .await;
    assert_eq!(by_champion["version"], before + 1, "{by_champion}");
    assert_eq!(
        by_champion["prediction"].as_f64().unwrap().to_bits(),
        by_challenger["prediction"].as_f64().unwrap().to_bits()
    );
    service.stop().await;

    // Recorded: the version, who and when, the settings change.
    let (kind, source): (String, String) = sqlx::query_as(
        "SELECT kind, source FROM model_versions WHERE model_id = $1 AND model_version = $2",
    )
    .bind(champion.model_id)
    .bind(before + 1)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(kind, "promotion");
    assert!(source.starts_with("promotion of 'chall'"), "{source}");
    let (who, version): (String, i64) = sqlx::query_as(
        "SELECT promoted_by, challenger_version FROM model_promotions WHERE model_id = $1",
    )
    .bind(champion.model_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(who.starts_with("token "), "{who}");
    assert_eq!(version, current_version(pool, challenger.model_id).await);
    let changes = olps::settings::history(pool, champion.model_id)
        .await
        .unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].model_version, before + 1);

    // Both keep learning the same events: the same state, bit for bit.
    olps::feedback::insert(pool, champion.model_id, &events[400..])
        .await
        .unwrap();
    drain(pool, 100).await;
    assert_eq!(
        params(pool, champion.model_id).await,
        params(pool, challenger.model_id).await
    );

    // A point-in-time read before the promotion, and a rollback past it: the old parameters,
    // example count and learner state, bit for bit.
    let at_before = crate::common::committed::parameters_at(
        pool,
        champion.model_id,
        olps::timeline::reconstruct::At::Version(before),
    )
    .await
    .unwrap();
    let read: HashMap<String, [u64; 6]> = at_before
        .parameters
        .iter()
        .map(|p| (p.parameter_id.clone(), state_bits(&p.state())))
        .filter(|(_, bits)| *bits != [0; 6])
        .collect();
    assert_eq!(read, champion_before);
    crate::common::committed::rollback(
        pool,
        champion.model_id,
        &olps::timeline::rollback::RollbackTarget::Version(before),
    )
    .await
    .unwrap();
    assert_eq!(params(pool, champion.model_id).await, champion_before);
    let row_after = model_row(pool, champion.model_id).await;
    assert_eq!((&row_after.0, &row_after.1), (&row_before.0, &row_before.1));
    assert_linear_history(pool, champion.model_id).await;
}

#[tokio::test]
async fn bad_links_and_promotions_are_refused_by_name_and_store_nothing() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let mut service = Service::start(pool, Default::default()).await;
    for (name, kind) in [
        ("a", "linear"),
        ("b", "linear"),
        ("c", "linear"),
        ("l", "logistic"),
    ] {
        service.create_model(name, kind).await;
    }
    let (status, body) = service
        .post("/v1/models/a/challengers", &json!({"challenger": "b"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = service
        .post("/v1/models/b/challengers", &json!({"challenger": "c"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let stored = || async {
        sqlx::query_as::<_, (i64, i64, i64)>(
            "SELECT (SELECT count(*) FROM model_challengers),
                    (SELECT count(*) FROM model_promotions),
                    (SELECT coalesce(sum(version), 0)::int8 FROM models)",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let before = stored().await;
    let refused = [
        (
            "a",
            json!({"challenger": "a"}),
            400,
            "cannot be a challenger of itself",
        ),
        (
            "a",
            json!({"challenger": "l"}),
            400,
            "must be of its champion's kind",
        ),
        (
            "a",
            json!({"challenger": "nobody"}),
            404,
            "model 'nobody' not found",
        ),
        (
            "nobody",
            json!({"challenger": "b"}),
            404,
            "model 'nobody' not found",
        ),
        (
            "c",
            json!({"challenger": "b"}),
            409,
            "is already a challenger of 'a'",
        ),
        ("c", json!({"challenger": "a"}), 409, "circle"),
        ("a", json!({"challenger": "b", "extra": 1}), 400, "extra"),
        ("a", json!({}), 400, "challenger"),
    ];
    for (model, body, code, says) in refused {
        let (status, answer) = service
            .post(&format!("/v1/models/{model}/challengers"), &body)
            .await;
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, code, "{model} {body}: {answer}");
        assert!(message.contains(says), "{model} {body}: {message}");
    }
    for (path, code, says) in [
        (
            "/v1/models/a/challengers/c/promote",
            404,
            "is not a challenger of 'a'",
        ),
        (
            "/v1/models/l/challengers/b/promote",
            404,
            "is not a challenger of 'l'",
        ),
        (
            "/v1/models/a/challengers/nobody/promote",
            404,
            "'nobody' not found",
        ),
    ] {
        let (status, answer) = service.post(path, &json!({})).await;
        assert_eq!(status, code, "{path}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{path}: {message}");
    }
    let response = service
        .client
        .delete(format!("{}/v1/models/a/challengers/c", service.base))
        .send()
        .await
        .unwrap();
    let (status, answer) = decode(response).await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(
        stored().await,
        before,
        "nothing stored by a refused request"
    );
    let (status, list) = service.get("/v1/models/a/challengers").await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["challenger_name"], "b");
    service.stop().await;

    // The command line says the same.
    let cli = Cli::new(&db.url);
    let err = cli
        .fails("model challenger add --model a --challenger l")
        .await;
    assert!(err.contains("must be of its champion's kind"), "{err}");
    let out = cli.ok("model challenger list --model a").await;
    assert!(out.contains('b'), "{out}");
    let out = cli
        .ok("model challenger remove --model a --challenger b")
        .await;
    assert!(out.contains("no longer a challenger"), "{out}");
    assert_eq!(stored().await.0, before.0 - 1);
}
