//! The queue under load (issue 15): lower priorities are not starved by a flood of higher ones
//! (the fair-share rule of `worker::queue::claim`, with its documented bound), and the queue's
//! generations are truncated while an old snapshot is held, with every event applied once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use olps::citus::Topology;
use olps::learner::{LearnerConfig, ModelKind};
use olps::worker::queue::{lower_level_share, LOWER_LEVEL_SPACING};
use olps::worker::{BatchOutcome, Worker, WorkerConfig};
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::*;

/// Inserts `n` events of one type (plain SQL, one statement) and returns their ids.
async fn feed(pool: &PgPool, model: Uuid, kind: &str, n: usize, tag: &str) -> Vec<Uuid> {
    sqlx::query_scalar(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, metadata)
         SELECT $1, $3 || '-' || i, $2, (i % 7)::float8 / 7,
                jsonb_build_object('features', jsonb_build_object('x', (i % 5)::float8, 'y', 1))
         FROM generate_series(1, $4) AS i
         RETURNING id",
    )
    .bind(model)
    .bind(kind)
    .bind(tag)
    .bind(n as i32)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Pending rows of `model` with this priority that are ahead of the event `id` in its level.
async fn ahead_in_level(pool: &PgPool, model: Uuid, id: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM feedback_queue q, feedback_queue me
         WHERE me.model_id = $1 AND me.feedback_id = $2
           AND q.model_id = $1 AND q.status = 'pending' AND q.priority = me.priority
           AND (q.created_at, q.seq) < (me.created_at, me.seq)",
    )
    .bind(model)
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Every event of the model applied at most once: `examples_seen` equals the processed events,
/// and no processed event still has a queue row.
async fn assert_applied_once(pool: &PgPool, model: Uuid) -> i64 {
    let (seen, processed, processed_queued): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT examples_seen FROM models WHERE model_id = $1),
                (SELECT count(*) FROM feedback_events WHERE model_id = $1 AND processed),
                (SELECT count(*) FROM feedback_events e JOIN feedback_queue q
                   ON q.model_id = e.model_id AND q.feedback_id = e.id
                 WHERE e.model_id = $1 AND e.processed)",
    )
    .bind(model)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        seen, processed,
        "examples learned = events marked processed"
    );
    assert_eq!(
        processed_queued, 0,
        "a processed event still has a queue row"
    );
    processed
}

/// The documented bound: a row with `ahead` rows of its level ahead of it is claimed within
/// ceil((ahead + 1) / share) claims that start after it is committed.
fn bound(limit: i64, ahead: i64) -> i64 {
    let share = lower_level_share(limit, 3).expect("claim large enough for three levels");
    (ahead + 1 + share - 1) / share
}

#[tokio::test]
async fn a_flood_of_explicit_feedback_does_not_starve_implicit_or_other_feedback() {
    let (db, model) = TestDb::with_model("fair-share", ModelKind::Linear).await;
    let model = model.model_id;
    const LIMIT: i64 = 10;
    let config = WorkerConfig {
        batch_size: LIMIT,
        models: vec![model],
        maintenance_check: None,
        ..WorkerConfig::default()
    };
    let mut worker = Worker::new(db.pool.clone(), config);
    // Explicit feedback three times faster than the worker drains it (30 per 10-row batch),
    // implicit and other feedback now and then. (event id, version when it was committed,
    // rows of its level ahead of it then).
    let mut low: Vec<(Uuid, &str, i64, i64)> = Vec::new();
    let mut explicit_backlog = Vec::new();
    for step in 0..60 {
        feed(&db.pool, model, "explicit", 30, &format!("x{step}")).await;
        if step % 3 == 0 {
            for kind in ["implicit", "click"] {
                let id = feed(&db.pool, model, kind, 1, &format!("{kind}{step}")).await[0];
                let version = current_version(&db.pool, model).await;
                let ahead = ahead_in_level(&db.pool, model, id).await;
                low.push((id, kind, version, ahead));
            }
        }
        let outcome = worker.run_batch(model).await.unwrap();
        assert!(
            matches!(outcome, BatchOutcome::Applied { examples, .. } if examples == LIMIT as usize),
            "step {step}: {outcome:?}"
        );
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM feedback_queue q JOIN feedback_events e
               ON e.model_id = q.model_id AND e.id = q.feedback_id
             WHERE q.model_id = $1 AND q.status = 'pending' AND e.feedback_type = 'explicit'",
        )
        .bind(model)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        explicit_backlog.push(pending);
    }
    // The flood is real: the explicit backlog only grew.
    assert!(
        explicit_backlog.windows(2).all(|w| w[1] > w[0]) && explicit_backlog[59] > 1000,
        "explicit backlog: {explicit_backlog:?}"
    );
    let applied: HashMap<Uuid, Option<i64>> =
        sqlx::query_as("SELECT id, applied_version FROM feedback_events WHERE model_id = $1")
            .bind(model)
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let mut worst = 0;
    for (id, kind, version, ahead) in &low {
        let waited = applied[id]
            .unwrap_or_else(|| panic!("{kind} event {id} never applied under the flood"))
            - version;
        assert!(
            waited <= bound(LIMIT, *ahead),
            "{kind} event {id} waited {waited} batches, bound {} ({ahead} ahead)",
            bound(LIMIT, *ahead)
        );
        worst = worst.max(waited);
    }
    assert_eq!(worst, 1, "each was claimed by the very next batch");
    assert_applied_once(&db.pool, model).await;
    assert_linear_history(&db.pool, model).await;
}

#[tokio::test]
async fn a_shallow_queue_keeps_the_documented_order_and_a_deep_one_shares_each_claim() {
    let (db, model) = TestDb::with_model("shares", ModelKind::Linear).await;
    let model = model.model_id;
    // Inserted oldest priority last, so insertion order and queue order differ.
    feed(&db.pool, model, "click", 5, "c").await;
    feed(&db.pool, model, "implicit", 5, "i").await;
    feed(&db.pool, model, "explicit", 5, "x").await;
    let mut tx = db.pool.begin().await.unwrap();
    let rows = olps::worker::queue::claim(&mut tx, model, 100)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let priorities: Vec<f64> = rows.iter().map(|r| r.priority).collect();
    let mut expected = vec![1.0; 5];
    expected.extend([0.5; 5]);
    expected.extend([0.3; 5]);
    assert_eq!(
        priorities, expected,
        "all of a shallow queue, in queue order"
    );

    // Deep: 200 explicit ahead. A 24-row claim takes the documented share of each lower level,
    // its oldest rows, and a smaller claim takes a subset of a larger one.
    feed(&db.pool, model, "explicit", 200, "y").await;
    let claim = |limit: i64| {
        let pool = db.pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let rows = olps::worker::queue::claim(&mut tx, model, limit)
                .await
                .unwrap();
            tx.rollback().await.unwrap();
            rows
        }
    };
    let big = claim(24).await;
    assert_eq!(big.len(), 24);
    let share = lower_level_share(24, 3).unwrap();
    assert_eq!(share, 2, "(24 - 1 - 2) / (10 + 2) + 1");
    for level in [0.5, 0.3] {
        let taken = big.iter().filter(|r| r.priority == level).count() as i64;
        assert!(
            taken >= share,
            "priority {level}: {taken} rows, share {share}"
        );
        assert!(taken <= 24 / LOWER_LEVEL_SPACING + 1);
    }
    // Within the claim, queue order.
    assert!(big
        .windows(2)
        .all(|w| (-w[0].priority, w[0].created_at, w[0].seq)
            <= (-w[1].priority, w[1].created_at, w[1].seq)));
    for limit in [12, 6, 3, 1] {
        let small = claim(limit).await;
        assert_eq!(small.len() as i64, limit);
        for r in &small {
            assert!(
                big.iter().any(|b| b.queue_id == r.queue_id),
                "claim of {limit} is not within the claim of 24"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_live_flood_every_implicit_event_waits_within_the_bound() {
    let (db, model) = TestDb::with_model("live-flood", ModelKind::Linear).await;
    let model = model.model_id;
    const LIMIT: i64 = 20;
    let cancel = CancellationToken::new();
    let worker = {
        let (pool, cancel) = (db.pool.clone(), cancel.clone());
        tokio::spawn(async move {
            let config = WorkerConfig {
                batch_size: LIMIT,
                models: vec![model],
                poll_interval: Duration::from_millis(10),
                ..WorkerConfig::default()
            };
            Worker::new(pool, config).run(cancel).await.unwrap()
        })
    };
    // 400 explicit events every 20 ms (20,000/s: far beyond a 20-row batch's drain), and an
    // implicit one every 100 ms, for 3 s.
    let started = Instant::now();
    let mut low: Vec<(Uuid, i64, i64)> = Vec::new();
    let mut tick = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        feed(&db.pool, model, "explicit", 400, &format!("x{tick}")).await;
        if tick.is_multiple_of(5) {
            let id = feed(&db.pool, model, "implicit", 1, &format!("i{tick}")).await[0];
            let version = current_version(&db.pool, model).await;
            let ahead = ahead_in_level(&db.pool, model, id).await;
            low.push((id, version, ahead));
        }
        tick += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the worker make the batches the bound allows for the last one, then stop it with the
    // explicit backlog still there.
    let last_version = current_version(&db.pool, model).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while current_version(&db.pool, model).await < last_version + bound(LIMIT, 0) + 2
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    let stats = worker.await.unwrap();
    let explicit_left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM feedback_queue WHERE model_id = $1 AND status = 'pending'",
    )
    .bind(model)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        explicit_left > 10 * LIMIT,
        "the feed must outrun the drain: {explicit_left} pending after {} batches",
        stats.batches
    );
    let mut worst = (0i64, 0.0f64);
    for (id, version, ahead) in &low {
        let (applied, wait_s): (Option<i64>, Option<f64>) = sqlx::query_as(
            "SELECT e.applied_version,
                    extract(epoch FROM v.created_at - e.timestamp)::float8
             FROM feedback_events e
             LEFT JOIN model_versions v
               ON v.model_id = e.model_id AND v.model_version = e.applied_version
             WHERE e.model_id = $1 AND e.id = $2",
        )
        .bind(model)
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let applied = applied.unwrap_or_else(|| panic!("implicit event {id} never applied"));
        // +1: a batch that claimed before the event committed may commit after `version` was
        // read.
        let waited = applied - version;
        assert!(
            waited <= bound(LIMIT, *ahead) + 1,
            "implicit event {id} waited {waited} batches ({ahead} ahead; bound {} + 1)",
            bound(LIMIT, *ahead)
        );
        worst = (worst.0.max(waited), worst.1.max(wait_s.unwrap_or(0.0)));
    }
    eprintln!(
        "{} implicit events under the flood: at most {} batches, {:.3} s",
        low.len(),
        worst.0,
        worst.1
    );
    assert_applied_once(&db.pool, model).await;
}

/// Heap bytes of the queue generations (all of them, or those that are not current); on Citus,
/// of their shards on the worker nodes (the coordinator's tables are empty shells).
async fn generation_bytes(pool: &PgPool, all: bool) -> i64 {
    let size = match Topology::detect(pool).await.unwrap() {
        Topology::Citus => "citus_relation_size",
        Topology::Single => "pg_relation_size",
    };
    sqlx::query_scalar(&format!(
        "SELECT coalesce(sum({size}(('feedback_queue_g' || g)::regclass)), 0)::int8
         FROM generate_series(0, 2) g WHERE $1 OR g <> olps_queue_generation(now())"
    ))
    .bind(all)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_generations_are_truncated_under_a_held_snapshot_and_nothing_is_lost() {
    let db = TestDb::new().await;
    let live = create_model(
        &db.pool,
        "rotating",
        ModelKind::Linear,
        LearnerConfig::default(),
    )
    .await
    .model_id;
    // A model no worker serves: its rows stay pending and must survive every rotation.
    let idle = create_model(
        &db.pool,
        "idle",
        ModelKind::Linear,
        LearnerConfig::default(),
    )
    .await
    .model_id;
    let idle_rows = feed(&db.pool, idle, "implicit", 50, "idle").await;
    let idle_before: Vec<(Uuid, f64, chrono::DateTime<chrono::Utc>, i64)> = sqlx::query_as(
        "SELECT feedback_id, priority, created_at, seq FROM feedback_queue
         WHERE model_id = $1 ORDER BY seq",
    )
    .bind(idle)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    // An analyst's REPEATABLE READ transaction, open for the whole run (it read the events,
    // not the queue).
    let mut analyst = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut analyst)
        .await
        .unwrap();
    let seen_then: i64 = sqlx::query_scalar("SELECT count(*) FROM feedback_events")
        .fetch_one(&mut analyst)
        .await
        .unwrap();

    let cancel = CancellationToken::new();
    let worker = {
        let (pool, cancel) = (db.pool.clone(), cancel.clone());
        tokio::spawn(async move {
            let config = WorkerConfig {
                batch_size: 200,
                models: vec![live],
                poll_interval: Duration::from_millis(20),
                maintenance_check: Some(Duration::from_millis(200)),
                ..WorkerConfig::default()
            };
            Worker::new(pool, config).run(cancel).await.unwrap()
        })
    };
    // 11 s of feedback, over three 5-second generations: each is current, then drained and
    // truncated, and the idle model's generation comes next (within 10 s of its rows).
    let started = Instant::now();
    let mut fed = 0usize;
    let mut tick = 0;
    while started.elapsed() < Duration::from_secs(11) {
        fed += feed(&db.pool, live, "explicit", 50, &format!("t{tick}"))
            .await
            .len();
        tick += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last_generation: i16 = sqlx::query_scalar("SELECT olps_queue_generation(now())")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sqlx::query_scalar::<_, i64>("SELECT examples_seen FROM models WHERE model_id = $1")
        .bind(live)
        .fetch_one(&db.pool)
        .await
        .unwrap()
        < fed as i64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Until the last fed generation is no longer current, and a rotation round after that.
    while sqlx::query_scalar::<_, i16>("SELECT olps_queue_generation(now())")
        .fetch_one(&db.pool)
        .await
        .unwrap()
        == last_generation
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still held: the snapshot saw none of this run's events.
    let seen_now: i64 = sqlx::query_scalar("SELECT count(*) FROM feedback_events")
        .fetch_one(&mut analyst)
        .await
        .unwrap();
    assert_eq!(
        seen_now, seen_then,
        "the analyst's snapshot was held throughout"
    );
    let held: Option<String> = sqlx::query_scalar(
        "SELECT backend_xmin::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    )
    .fetch_one(&mut analyst)
    .await
    .unwrap();
    assert!(held.is_some(), "the analyst holds back the xmin horizon");
    // The heap of the generations; on a loaded machine a rotation attempt may miss its lock
    // and back off, so wait (a bounded time) for the last one, the snapshot still held.
    // The rotation counters are read in the same wait: a missed lock backs off 2, 4, 8 s.
    let bound = fed as f64 * 110.0 / 4.0;
    let deadline = Instant::now() + Duration::from_secs(40);
    let (bytes_during_hold, truncations, moved) = loop {
        let bytes = generation_bytes(&db.pool, true).await;
        let (truncations, moved): (i64, i64) =
            sqlx::query_as("SELECT truncations, moved_rows FROM feedback_queue_rotation")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let done = (bytes as f64) < bound && truncations >= 2 && moved >= idle_rows.len() as i64;
        if done || Instant::now() > deadline {
            break (bytes, truncations, moved);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    sqlx::query("COMMIT").execute(&mut analyst).await.unwrap();
    cancel.cancel();
    worker.await.unwrap();

    assert!(
        truncations >= 2,
        "drained generations were truncated while the snapshot was held ({truncations})"
    );
    assert!(
        moved >= idle_rows.len() as i64,
        "the idle model's rows were moved out of a generation before it was truncated ({moved})"
    );
    // Without rotation the queue's heap would still hold every row deleted during the hold
    // (about 110 bytes each); with it, the generations are back to (nearly) empty files: the
    // idle model's 50 rows and whatever the current generation holds.
    assert!(
        (bytes_during_hold as f64) < bound,
        "{bytes_during_hold} heap bytes in the generations after {fed} events drained"
    );
    // Exactly once: every fed event applied once, versions a line.
    assert_eq!(assert_applied_once(&db.pool, live).await, fed as i64);
    assert_linear_history(&db.pool, live).await;
    // The idle model's rows: all still pending, each once, with its place in queue order.
    let idle_after: Vec<(Uuid, f64, chrono::DateTime<chrono::Utc>, i64)> = sqlx::query_as(
        "SELECT feedback_id, priority, created_at, seq FROM feedback_queue
         WHERE model_id = $1 AND status = 'pending' ORDER BY seq",
    )
    .bind(idle)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(idle_after, idle_before);
    // And they drain once, in order, when a worker serves the model.
    let stats = drain(&db.pool, 1000).await;
    assert_eq!(stats.examples, idle_rows.len() as u64);
    assert_applied_once(&db.pool, idle).await;
}

#[tokio::test]
async fn rotation_gives_up_quickly_on_a_locked_generation_and_backs_off() {
    let db = TestDb::new().await;
    let model = create_model(
        &db.pool,
        "locked",
        ModelKind::Linear,
        LearnerConfig::default(),
    )
    .await
    .model_id;
    // An analyst that read feedback_queue itself: its transaction locks every generation.
    let mut analyst = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut analyst)
        .await
        .unwrap();
    sqlx::query("SELECT count(*) FROM feedback_queue")
        .execute(&mut analyst)
        .await
        .unwrap();
    // Rows applied in the current generation, by a worker without maintenance (so the only
    // rotation attempts are this test's).
    feed(&db.pool, model, "explicit", 10, "a").await;
    let config = WorkerConfig {
        batch_size: 100,
        until_empty: true,
        maintenance_check: None,
        ..WorkerConfig::default()
    };
    let stats = Worker::new(db.pool.clone(), config)
        .run(CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(stats.examples, 10);
    // Wait until the generation written above is no longer current (at most 5 s).
    let written: i16 = sqlx::query_scalar(
        "SELECT olps_queue_generation(max(timestamp)) FROM feedback_events WHERE model_id = $1",
    )
    .bind(model)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    while sqlx::query_scalar::<_, i16>("SELECT olps_queue_generation(now())")
        .fetch_one(&db.pool)
        .await
        .unwrap()
        == written
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let done = olps::worker::maintenance::rotate_queue(&db.pool)
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        done.is_empty(),
        "nothing truncated under the analyst's lock: {done:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the attempt gave up after its lock timeout, not the analyst's transaction ({took:?})"
    );
    let (failures, wait_s): (i32, f64) = sqlx::query_as(
        "SELECT failures, extract(epoch FROM next_attempt_at - now())::float8
         FROM feedback_queue_rotation",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(failures, 1);
    assert!(wait_s > 0.0, "the next attempt backs off");
    // Backing off: a retry before the next attempt is due does not try the lock at all. The
    // first back-off is 1 s, which a loaded machine can spend before the retry below; the due
    // time is moved out so that the retry is surely early (the back-off itself is shown above).
    sqlx::query("UPDATE feedback_queue_rotation SET next_attempt_at = now() + interval '60 s'")
        .execute(&db.pool)
        .await
        .unwrap();
    let done = olps::worker::maintenance::rotate_queue(&db.pool)
        .await
        .unwrap();
    assert!(done.is_empty());
    let failures_after: i32 = sqlx::query_scalar("SELECT failures FROM feedback_queue_rotation")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(failures_after, 1, "an early retry made no attempt");
    sqlx::query("COMMIT").execute(&mut analyst).await.unwrap();
    // Once the analyst is gone and the back-off has passed, the generation is truncated.
    sqlx::query("UPDATE feedback_queue_rotation SET next_attempt_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();
    let done = olps::worker::maintenance::rotate_queue(&db.pool)
        .await
        .unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    let left = generation_bytes(&db.pool, false).await;
    assert_eq!(
        left, 0,
        "the generations that are not current are empty files"
    );
}
