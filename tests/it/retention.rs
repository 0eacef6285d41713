//! Retention (`olps retention`, the worker's maintenance): each table is trimmed per the model's
//! policy, and what a snapshot, a point-in-time read inside the kept horizon or a pending delayed
//! label needs is kept.
//!
//! The scenario backdates rows instead of waiting: versions 1..=5 and everything they made are
//! about 100 days old, versions 6..=8 are new, so the default policy (versions 90 days, auto
//! snapshots 30, feedback 30, dead letters 90, prediction log 90, drift events 365) cuts
//! through the middle of each table.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use olps::learner::{LearnerConfig, ModelKind};
use olps::retention::{self, Limits};
use olps::timeline::error::TimelineError;
use olps::timeline::reconstruct::{At, ParametersAt};
use olps::timeline::rollback::RollbackTarget;
use olps::timeline::snapshots::{self, SnapshotKind};
use olps::worker::{Worker, WorkerConfig};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::committed;
use crate::common::*;

/// A worker without maintenance or retention, until the queue is empty: the tests apply
/// retention themselves, at the moment they choose.
async fn drain_only(pool: &PgPool, batch_size: i64) {
    let config = WorkerConfig {
        batch_size,
        poll_interval: Duration::from_millis(20),
        until_empty: true,
        maintenance_check: None,
        retention_every: None,
        ..Default::default()
    };
    Worker::new(pool.clone(), config)
        .run(CancellationToken::new())
        .await
        .unwrap();
}

async fn exec(pool: &PgPool, sql: &str, model_id: Uuid) {
    sqlx::query(sql).bind(model_id).execute(pool).await.unwrap();
}

/// SQL for `column` moved `days` earlier, in UTC: Citus refuses an UPDATE that calls a STABLE
/// function on a column (`timestamptz - interval` is STABLE; `timestamp - interval` and the
/// conversions from and to UTC are IMMUTABLE).
fn days_earlier(column: &str, days: u32) -> String {
    format!("({column} AT TIME ZONE 'UTC' - interval '{days} days') AT TIME ZONE 'UTC'")
}

async fn count(pool: &PgPool, sql: &str, model_id: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(model_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every parameter's state as bits, by name: equal means bit-identical.
fn bits(read: &ParametersAt) -> BTreeMap<String, ([u64; 6], i64)> {
    read.parameters
        .iter()
        .map(|p| {
            (
                p.parameter_id.clone(),
                (state_bits(&p.state()), p.last_changed_version),
            )
        })
        .collect()
}

async fn log_prediction(pool: &PgPool, model_id: Uuid, entity: &str, features: Value, age: &str) {
    sqlx::query(&format!(
        "INSERT INTO prediction_log (model_id, entity_id, features, prediction, model_version, logged_at)
         VALUES ($1, $2, $3, 0.5, 1, now() - interval '{age}')"
    ))
    .bind(model_id)
    .bind(entity)
    .bind(features)
    .execute(pool)
    .await
    .unwrap();
}

/// An event the worker dead-letters (a feature that is not a number).
async fn bad_event(pool: &PgPool, model_id: Uuid, entity: &str) {
    sqlx::query(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, metadata)
         VALUES ($1, $2, 'explicit', 1.0, '{\"features\": {\"x\": \"abc\"}}')",
    )
    .bind(model_id)
    .bind(entity)
    .execute(pool)
    .await
    .unwrap();
}

struct Scenario {
    db: TestDb,
    model_id: Uuid,
    name: String,
    /// The model read at versions 2 and 5..=8 before retention.
    before: BTreeMap<i64, ParametersAt>,
    /// A moment when version 3 was in force (inside what retention removes).
    during_v3: DateTime<Utc>,
    /// The model one day ago (version 5, inside the kept horizon), read before retention.
    one_day_ago: ParametersAt,
    history_above_5: i64,
}

/// Versions 1..=5 (about 100 days old; a manual snapshot at 2, two automatic ones at 4), a
/// dead letter of then, predictions of then, two drift events (400 and 10 days old), versions
/// 6..=8 (new), a new dead letter and a pending delayed label for an entity last predicted 95
/// days ago.
async fn scenario(prefix: &str) -> Scenario {
    let db = TestDb::new().await;
    let name = unique_name(prefix);
    let model = create_model(&db.pool, &name, ModelKind::Linear, LearnerConfig::default()).await;
    let id = model.model_id;
    let pool = &db.pool;
    let rows = sparse_stream(160, 3, 12, false, 7);
    insert_stream(pool, id, &rows[..40]).await;
    drain_only(pool, 20).await;
    committed::create_snapshot(pool, id, Some("keep-me"))
        .await
        .unwrap();
    insert_stream(pool, id, &rows[40..80]).await;
    drain_only(pool, 20).await;
    // Two automatic snapshots at version 4: one of the policy's, one the worker takes before a
    // drift adaptation.
    let mut tx = pool.begin().await.unwrap();
    for label in [None, Some("olps:before-adaptation-v4")] {
        snapshots::copy(&mut tx, id, 4, 80, label, SnapshotKind::Auto)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    insert_stream(pool, id, &rows[80..100]).await;
    bad_event(pool, id, "bad-old").await;
    drain_only(pool, 20).await;
    assert_eq!(current_version(pool, id).await, 5);

    // Everything so far is about 100 days old; version V was made V hours after the start (in
    // UTC, for Citus: see `days_earlier`).
    exec(
        pool,
        "UPDATE model_versions
         SET created_at = (now() AT TIME ZONE 'UTC' - interval '100 days'
                           + model_version * interval '1 hour') AT TIME ZONE 'UTC'
         WHERE model_id = $1",
        id,
    )
    .await;
    exec(
        pool,
        "UPDATE parameter_updates
         SET timestamp = (now() AT TIME ZONE 'UTC' - interval '100 days'
                          + model_version * interval '1 hour') AT TIME ZONE 'UTC'
         WHERE model_id = $1",
        id,
    )
    .await;
    for sql in [
        format!(
            "UPDATE feedback_events SET timestamp = {} WHERE model_id = $1",
            days_earlier("timestamp", 100)
        ),
        format!(
            "UPDATE feedback_queue SET dead_at = {}, created_at = {} WHERE model_id = $1",
            days_earlier("dead_at", 100),
            days_earlier("created_at", 100)
        ),
        format!(
            "UPDATE snapshots SET created_at = {} WHERE model_id = $1",
            days_earlier("created_at", 100)
        ),
        "INSERT INTO drift_events (model_id, model_version, detector, statistic, threshold,
                                   at_example, adaptation, detected_at)
         VALUES ($1, 3, 'adwin', 1, 0.5, 60, 'boost', now() - interval '400 days'),
                ($1, 5, 'adwin', 1, 0.5, 100, 'boost', now() - interval '10 days')"
            .to_string(),
    ] {
        exec(pool, &sql, id).await;
    }
    log_prediction(
        pool,
        id,
        "pend",
        serde_json::json!({"f1": 1.5, "f2": -0.5}),
        "100 days",
    )
    .await;
    log_prediction(
        pool,
        id,
        "pend",
        serde_json::json!({"f1": 2.0, "f3": 1.0}),
        "95 days",
    )
    .await;
    log_prediction(pool, id, "gone", serde_json::json!({"f1": 1.0}), "100 days").await;
    log_prediction(pool, id, "fresh", serde_json::json!({"f4": 1.0}), "1 day").await;

    insert_stream(pool, id, &rows[100..160]).await;
    bad_event(pool, id, "bad-new").await;
    drain_only(pool, 20).await;
    assert_eq!(current_version(pool, id).await, 8);
    // The delayed label: no features, so the worker takes those of the latest prediction.
    exec(
        pool,
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, metadata)
         VALUES ($1, 'pend', 'explicit', 0.25, NULL)",
        id,
    )
    .await;

    let mut before = BTreeMap::new();
    for v in [2, 5, 6, 7, 8] {
        before.insert(
            v,
            committed::parameters_at(pool, id, At::Version(v))
                .await
                .unwrap(),
        );
    }
    let start: DateTime<Utc> =
        sqlx::query_scalar("SELECT now() - interval '100 days' + interval '3.5 hours'")
            .fetch_one(pool)
            .await
            .unwrap();
    let one_day_ago: DateTime<Utc> = sqlx::query_scalar("SELECT now() - interval '1 day'")
        .fetch_one(pool)
        .await
        .unwrap();
    let one_day = committed::parameters_at(pool, id, At::Time(one_day_ago))
        .await
        .unwrap();
    assert_eq!(one_day.version, 5);
    let history_above_5 = count(
        pool,
        "SELECT count(*) FROM parameter_updates WHERE model_id = $1 AND model_version > 5",
        id,
    )
    .await;
    Scenario {
        db,
        model_id: id,
        name,
        before,
        during_v3: start,
        one_day_ago: one_day,
        history_above_5,
    }
}

/// Row counts of every table retention touches, for the model.
async fn table_counts(pool: &PgPool, model_id: Uuid) -> BTreeMap<&'static str, i64> {
    let mut out = BTreeMap::new();
    for table in retention::TABLES {
        out.insert(
            table,
            count(
                pool,
                &format!("SELECT count(*) FROM {table} WHERE model_id = $1"),
                model_id,
            )
            .await,
        );
    }
    out
}

/// The version line and history that remain form a line from the floor on: versions
/// floor..=current without gaps, each parameter's first kept history row continues from the
/// floor snapshot, each later row from the one before, and the current value is the last one.
async fn assert_kept_history_is_a_line(pool: &PgPool, model_id: Uuid) {
    let (current, floor): (i64, i64) =
        sqlx::query_as("SELECT version, history_pruned_through FROM models WHERE model_id = $1")
            .bind(model_id)
            .fetch_one(pool)
            .await
            .unwrap();
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT model_version FROM model_versions WHERE model_id = $1 AND model_version >= $2
         ORDER BY 1",
    )
    .bind(model_id)
    .bind(floor)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(versions, (floor..=current).collect::<Vec<_>>());
    let broken: i64 = sqlx::query_scalar(
        "WITH floor AS (
             SELECT p.parameter_id, p.value FROM snapshot_parameters p
             WHERE p.model_id = $1 AND p.snapshot_id = (
                 SELECT snapshot_id FROM snapshots WHERE model_id = $1 AND model_version = $2
                 ORDER BY created_at LIMIT 1)
         ), chain AS (
             SELECT u.parameter_id, u.old_value, u.new_value,
                    lag(u.new_value) OVER w AS prev, row_number() OVER w AS rn
             FROM parameter_updates u WHERE u.model_id = $1
             WINDOW w AS (PARTITION BY u.parameter_id ORDER BY u.model_version)
         )
         SELECT count(*) FROM chain c LEFT JOIN floor f ON f.parameter_id = c.parameter_id
         WHERE (c.rn = 1 AND c.old_value IS DISTINCT FROM f.value)
            OR (c.rn > 1 AND c.old_value IS DISTINCT FROM c.prev)",
    )
    .bind(model_id)
    .bind(floor)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        broken, 0,
        "a history row does not continue the one before it"
    );
    let stale: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM model_parameters p
         JOIN LATERAL (SELECT new_value FROM parameter_updates u
                       WHERE u.model_id = p.model_id AND u.parameter_id = p.parameter_id
                       ORDER BY u.model_version DESC LIMIT 1) last ON TRUE
         WHERE p.model_id = $1 AND p.current_value IS DISTINCT FROM last.new_value",
    )
    .bind(model_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        stale, 0,
        "a current value differs from its last history row"
    );
}

#[tokio::test]
async fn the_default_policy_trims_each_table_and_keeps_what_is_still_needed() {
    let s = scenario("ret-defaults").await;
    let (pool, id) = (&s.db.pool, s.model_id);
    let before = table_counts(pool, id).await;

    // Small batches, so every table takes several; as the worker's role, whose grants must
    // cover all of it.
    let limits = Limits {
        batch_rows: 7,
        max_batches: None,
    };
    let role = crate::roles::LoginRole::new(&s.db, "olps_worker").await;
    let worker_pool = role.pool(&s.db).await;
    let reports = retention::run_now(&worker_pool, &[id], limits, false)
        .await
        .unwrap();
    worker_pool.close().await;
    let r = &reports[0];
    assert!(r.complete, "{:?}", r.notes);
    let after = table_counts(pool, id).await;
    for table in retention::TABLES {
        // The run's floor snapshot is new: a header and the model's parameters at version 5.
        let added = match table {
            "snapshots" => 1,
            "snapshot_parameters" => s.before[&5].parameters.len() as i64,
            _ => 0,
        };
        assert_eq!(
            before[table] - after[table] + added,
            r.deleted(table),
            "{table}: the report says what was deleted"
        );
    }

    // prediction_log: the old rows go, except the latest prediction of the entity whose
    // delayed label is pending; the fresh one stays.
    let logged: Vec<(String, Value)> = sqlx::query_as(
        "SELECT entity_id, features FROM prediction_log WHERE model_id = $1 ORDER BY entity_id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        logged,
        vec![
            ("fresh".to_string(), serde_json::json!({"f4": 1.0})),
            (
                "pend".to_string(),
                serde_json::json!({"f1": 2.0, "f3": 1.0})
            ),
        ]
    );
    // feedback: the 100 old processed events and the old dead letter's event go; the new ones,
    // the new dead letter's and the pending one stay.
    assert_eq!(r.deleted("feedback_events"), 101);
    let kept: Vec<(String, bool)> = sqlx::query_as(
        "SELECT entity_id, processed FROM feedback_events
         WHERE model_id = $1 AND NOT processed ORDER BY entity_id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        kept,
        vec![("bad-new".to_string(), false), ("pend".to_string(), false)]
    );
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM feedback_events WHERE model_id = $1 AND processed",
            id
        )
        .await,
        60
    );
    // Dead letters: the old one goes, the new one stays, the pending row stays.
    assert_eq!(r.deleted("feedback_queue"), 1);
    let queue: Vec<(String, String)> = sqlx::query_as(
        "SELECT e.entity_id, q.status FROM feedback_queue q
         JOIN feedback_events e ON e.model_id = q.model_id AND e.id = q.feedback_id
         WHERE q.model_id = $1 ORDER BY 1",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        queue,
        vec![
            ("bad-new".to_string(), "dead".to_string()),
            ("pend".to_string(), "pending".to_string())
        ]
    );
    // Drift events: the one of 400 days ago goes.
    let drift: Vec<i64> =
        sqlx::query_scalar("SELECT model_version FROM drift_events WHERE model_id = $1 ORDER BY 1")
            .bind(id)
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(drift, vec![5]);

    // Versions: the floor moved to version 5 (in force 90 days ago) with a snapshot of it; the
    // history at or below it is gone, the rest untouched; version rows below it are gone except
    // the one the manual snapshot refers to.
    let floor = r.floor.as_ref().expect("the floor moved");
    assert_eq!(
        (floor.previous, floor.version, floor.snapshot_taken),
        (0, 5, true)
    );
    let snaps: Vec<(i64, Option<String>, String)> = sqlx::query_as(
        "SELECT model_version, label, kind FROM snapshots WHERE model_id = $1 ORDER BY 1",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        snaps,
        vec![
            (2, Some("keep-me".into()), "manual".into()),
            (5, Some("olps:retention-floor-v5".into()), "auto".into()),
        ],
        "the automatic snapshots of 100 days ago went, the manual one and the floor stay"
    );
    assert_eq!(r.deleted("snapshots"), 2);
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM parameter_updates WHERE model_id = $1 AND model_version <= 5",
            id
        )
        .await,
        0
    );
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM parameter_updates WHERE model_id = $1 AND model_version > 5",
            id
        )
        .await,
        s.history_above_5
    );
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT model_version FROM model_versions WHERE model_id = $1 ORDER BY 1",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(versions, vec![2, 5, 6, 7, 8]);
    assert_kept_history_is_a_line(pool, id).await;

    // Reads inside the kept horizon are exact, bit for bit, by version and by time; a time
    // whose version is gone is refused, not answered with another version.
    for v in 5..=8 {
        let read = committed::parameters_at(pool, id, At::Version(v))
            .await
            .unwrap();
        assert_eq!(bits(&read), bits(&s.before[&v]), "version {v}");
    }
    let read = committed::parameters_at(pool, id, At::Time(Utc::now() - chrono::Duration::days(1)))
        .await
        .unwrap();
    assert_eq!(read.version, 5);
    assert_eq!(bits(&read), bits(&s.one_day_ago));
    match committed::parameters_at(pool, id, At::Time(s.during_v3)).await {
        Err(TimelineError::Unreachable { .. }) => {}
        other => panic!("a read at a time whose version is gone: {other:?}"),
    }
    match committed::parameters_at(pool, id, At::Version(4)).await {
        Err(TimelineError::Unreachable { .. }) => {}
        other => panic!("version 4 is below the floor: {other:?}"),
    }

    // The pending delayed label still finds its prediction (the latest one) and is learned.
    drain_only(pool, 20).await;
    let (processed, applied): (bool, Option<i64>) = sqlx::query_as(
        "SELECT processed, applied_version FROM feedback_events
         WHERE model_id = $1 AND entity_id = 'pend'",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(processed, "the delayed label was dead-lettered");
    assert_eq!(applied, Some(9));
    let changed: Vec<String> = sqlx::query_scalar(
        "SELECT parameter_id FROM parameter_updates WHERE model_id = $1 AND model_version = 9
         ORDER BY parameter_id COLLATE \"C\"",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(changed, vec!["__intercept__", "f1", "f3"]);

    // The manual snapshot is still restorable bit for bit.
    let rolled = committed::rollback(pool, id, &RollbackTarget::Snapshot("keep-me".into()))
        .await
        .unwrap();
    assert_eq!((rolled.rolled_back_to, rolled.version), (2, 10));
    let now = committed::parameters_at(pool, id, At::Current)
        .await
        .unwrap();
    let present: BTreeMap<_, _> = bits(&now)
        .into_iter()
        .filter(|(_, (state, _))| state.iter().any(|b| *b != 0))
        .map(|(k, (state, _))| (k, state))
        .collect();
    let at_2: BTreeMap<_, _> = bits(&s.before[&2])
        .into_iter()
        .map(|(k, (state, _))| (k, state))
        .collect();
    assert_eq!(
        present, at_2,
        "the rollback restored the snapshot bit for bit"
    );
    assert_kept_history_is_a_line(pool, id).await;

    // What it deleted is in retention_stats and /metrics; a second run finds nothing to do.
    let text = olps::metrics::render(pool).await;
    let line = format!(
        "olps_retention_rows_deleted{{model=\"{}\",table=\"prediction_log\"}} 2",
        s.name
    );
    assert!(text.contains(&line), "{line} not in:\n{text}");
    assert!(text.contains(&format!(
        "olps_retention_last_run_timestamp_seconds{{model=\"{}\"}}",
        s.name
    )));
    // A second run: the delayed label is learned now, so its prediction goes too; nothing else.
    let again = retention::run_now(pool, &[id], limits, false)
        .await
        .unwrap();
    let expected: Vec<(String, i64)> = retention::TABLES
        .iter()
        .map(|t| (t.to_string(), i64::from(*t == "prediction_log")))
        .collect();
    assert_eq!(again[0].deleted, expected);
    assert!(again[0].floor.is_none());
    let logged: Vec<String> =
        sqlx::query_scalar("SELECT entity_id FROM prediction_log WHERE model_id = $1")
            .bind(id)
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(logged, vec!["fresh"]);
}

#[tokio::test]
async fn a_dry_run_deletes_nothing_and_counts_what_the_run_deletes() {
    let s = scenario("ret-dry").await;
    let (pool, id) = (&s.db.pool, s.model_id);
    let cli = Cli::new(&s.db.url);
    let before = table_counts(pool, id).await;
    let horizon = models_horizon(pool, id).await;

    let out = cli
        .ok(&format!(
            "retention run --model {} --dry-run --format json",
            s.name
        ))
        .await;
    let dry: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        table_counts(pool, id).await,
        before,
        "the dry run deleted rows"
    );
    assert_eq!(models_horizon(pool, id).await, horizon);
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM retention_stats WHERE model_id = $1",
            id
        )
        .await,
        0,
        "a dry run is not a run"
    );
    assert_eq!(dry[0]["dry_run"], true);
    assert_eq!(dry[0]["floor"]["version"], 5);
    assert_eq!(dry[0]["floor"]["snapshot_taken"], true);

    let out = cli
        .ok(&format!("retention run --model {} --format json", s.name))
        .await;
    let real: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(real[0]["dry_run"], false);
    let after = table_counts(pool, id).await;
    for table in retention::TABLES {
        let deleted = before[table] - after[table];
        // The run's floor snapshot is new: it adds a header and the model's parameters.
        let added = match table {
            "snapshots" => 1,
            "snapshot_parameters" => s.before[&5].parameters.len() as i64,
            _ => 0,
        };
        let find = |report: &Value| {
            report[0]["deleted"]
                .as_array()
                .unwrap()
                .iter()
                .find(|pair| pair[0] == table)
                .map(|pair| pair[1].as_i64().unwrap())
                .unwrap()
        };
        assert_eq!(find(&real), deleted + added, "{table}: the run's report");
        assert_eq!(find(&dry), find(&real), "{table}: the dry run's count");
    }
    assert!(after["prediction_log"] < before["prediction_log"]);
}

async fn models_horizon(pool: &PgPool, id: Uuid) -> (i64, i64) {
    sqlx::query_as("SELECT version, history_pruned_through FROM models WHERE model_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_policy_is_shown_set_and_validated() {
    let db = TestDb::new().await;
    let name = unique_name("ret-policy");
    create_model(&db.pool, &name, ModelKind::Linear, LearnerConfig::default()).await;
    let cli = Cli::new(&db.url);
    let shown: Value = serde_json::from_str(
        &cli.ok(&format!("retention show --model {name} --format json"))
            .await,
    )
    .unwrap();
    assert_eq!(shown["source"], "default");
    assert_eq!(
        shown["policy"],
        serde_json::json!({"prediction_log": "90d", "feedback": "30d", "dead_letters": "90d",
                           "versions": "90d", "drift_events": "365d", "auto_snapshots": "30d",
                           "manual_snapshots": "forever"})
    );

    for (args, says) in [
        (
            format!("--model {name} --versions 0d"),
            "'0d' is not a retention horizon",
        ),
        (
            format!("--model {name} --versions abc"),
            "'abc' is not a retention horizon",
        ),
        (
            format!("--model {name} --feedback 1y"),
            "'1y' is not a retention horizon",
        ),
        (
            format!("--model {name} --drift-events 101000d"),
            "at most 100 years",
        ),
        (format!("--model {name}"), "--prediction-log"),
        (
            "--model no-such-model --versions 1d".to_string(),
            "no-such-model",
        ),
    ] {
        let err = cli.fails(&format!("retention set {args}")).await;
        assert!(err.contains(says), "retention set {args}: {err}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM retention_policies")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "a refused change stored something");

    // Only the parts given change.
    cli.ok(&format!(
        "retention set --model {name} --prediction-log 14d --dead-letters forever"
    ))
    .await;
    cli.ok(&format!("retention set --model {name} --versions 1d12h"))
        .await;
    let shown: Value = serde_json::from_str(
        &cli.ok(&format!("retention show --model {name} --format json"))
            .await,
    )
    .unwrap();
    assert_eq!(shown["source"], "set");
    assert_eq!(
        shown["policy"],
        serde_json::json!({"prediction_log": "14d", "feedback": "30d", "dead_letters": "forever",
                           "versions": "1d12h", "drift_events": "365d", "auto_snapshots": "30d",
                           "manual_snapshots": "forever"})
    );
    let (keep, dead): (f64, Option<f64>) = sqlx::query_as(
        "SELECT extract(epoch FROM prediction_log_keep)::float8,
                extract(epoch FROM dead_letters_keep)::float8 FROM retention_policies",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((keep, dead), (14.0 * 86_400.0, None));
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'retention-policy.set' AND actor = 'cli'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(audited, 2);

    // Back to the defaults.
    cli.ok(&format!("retention set --model {name} --defaults"))
        .await;
    let shown: Value = serde_json::from_str(
        &cli.ok(&format!("retention show --model {name} --format json"))
            .await,
    )
    .unwrap();
    assert_eq!(shown["source"], "default");
    assert_eq!(shown["policy"]["dead_letters"], "90d");
}

#[tokio::test]
async fn the_worker_applies_each_models_policy() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let trimmed_name = unique_name("ret-worker");
    let trimmed = create_model(
        pool,
        &trimmed_name,
        ModelKind::Linear,
        LearnerConfig::default(),
    )
    .await
    .model_id;
    let kept = create_model(
        pool,
        &unique_name("ret-kept"),
        ModelKind::Linear,
        LearnerConfig::default(),
    )
    .await
    .model_id;
    // The second model keeps its prediction log forever.
    let mut conn = pool.acquire().await.unwrap();
    let mut policy = retention::RetentionPolicy::default();
    policy.set(retention::Part::PredictionLog, None);
    retention::set_policy(&mut conn, kept, &policy)
        .await
        .unwrap();
    drop(conn);
    for model in [trimmed, kept] {
        for i in 0..5 {
            log_prediction(
                pool,
                model,
                &format!("old-{i}"),
                serde_json::json!({"a": 1.0}),
                "91 days",
            )
            .await;
        }
        log_prediction(pool, model, "new", serde_json::json!({"a": 1.0}), "1 hour").await;
    }

    let config = WorkerConfig {
        poll_interval: Duration::from_millis(20),
        maintenance_check: Some(Duration::from_millis(50)),
        retention_every: Some(Duration::from_secs(3_600)),
        ..Default::default()
    };
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let (pool, stop) = (pool.clone(), stop.clone());
        async move { Worker::new(pool, config).run(stop).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Both models' runs recorded (a run records what it deleted when it ends).
        let runs: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT model_id) FROM retention_stats WHERE model_id = ANY($1)",
        )
        .bind(vec![kept, trimmed])
        .fetch_one(pool)
        .await
        .unwrap();
        let left = count(
            pool,
            "SELECT count(*) FROM prediction_log WHERE model_id = $1",
            trimmed,
        )
        .await;
        if runs == 2 && left == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not apply retention within 30 s ({left} rows left)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    worker.await.unwrap().unwrap();
    let entities: Vec<String> =
        sqlx::query_scalar("SELECT entity_id FROM prediction_log WHERE model_id = $1")
            .bind(trimmed)
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(entities, vec!["new"]);
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM prediction_log WHERE model_id = $1",
            kept
        )
        .await,
        6,
        "the model whose policy keeps its log forever lost rows"
    );
    let text = olps::metrics::render(pool).await;
    let line = format!(
        "olps_retention_rows_deleted{{model=\"{trimmed_name}\",table=\"prediction_log\"}} 5"
    );
    assert!(text.contains(&line), "{line} not in:\n{text}");
}
