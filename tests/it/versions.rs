//! Snapshots, rollback, point-in-time reads and history retention against a real PostgreSQL:
//! invariant 4 (rollback is bit for bit, is a version of its own, and roll-forward works), with
//! invariants 1 and 2 holding across rollbacks while workers drain.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use olps::learner::{Example, Learner, LearnerConfig, ModelKind, OptimizerKind, ParamState};
use olps::timeline::error::TimelineError;
use olps::timeline::history::HistoryFilter;
use olps::timeline::reconstruct::{self, At, Lookup, ReadPlan};
use olps::timeline::rollback::{self, RollbackPlan, RollbackTarget};
use olps::timeline::snapshots::{self, SnapshotKind, SnapshotPolicy};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::common::*;

/// A row of `olps_parameters_at`.
type SqlParameterRow = (String, f64, f64, f64, i64, f64, f64, i64);

/// A model as it was right after a version committed.
#[derive(Debug, Clone)]
struct Recorded {
    params: State,
    examples_seen: i64,
}

impl Stored for Recorded {
    async fn load(pool: &PgPool, id: Uuid) -> Recorded {
        let params = State::load(pool, id).await;
        let examples_seen: i64 =
            sqlx::query_scalar("SELECT examples_seen FROM models WHERE model_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        Recorded {
            params,
            examples_seen,
        }
    }
}

async fn rollback_to(pool: &PgPool, id: Uuid, target: RollbackTarget) -> rollback::RollbackOutcome {
    committed::rollback(pool, id, &target).await.unwrap()
}

/// Equal bit for bit, where a parameter in its initial state counts as absent (a rollback zeroes
/// the parameters that did not exist at its target).
fn assert_equivalent(what: &str, got: &State, want: &State) {
    let zero = ParamState::default();
    for name in got.keys().chain(want.keys()) {
        let g = got.get(name).unwrap_or(&zero);
        let w = want.get(name).unwrap_or(&zero);
        assert_eq!(
            state_bits(g),
            state_bits(w),
            "{what}: parameter {name}: got {g:?}, want {w:?}"
        );
    }
}

/// The same parameters, bit for bit.
fn assert_exact(what: &str, got: &State, want: &State) {
    let mut g: Vec<&String> = got.keys().collect();
    let mut w: Vec<&String> = want.keys().collect();
    g.sort();
    w.sort();
    assert_eq!(g, w, "{what}: parameter sets differ");
    assert_equivalent(what, got, want);
}

async fn assert_model_equals(pool: &PgPool, id: Uuid, want: &Recorded, what: &str) {
    let got = Recorded::load(pool, id).await;
    assert_equivalent(what, &got.params, &want.params);
    assert_eq!(
        got.examples_seen, want.examples_seen,
        "{what}: examples_seen"
    );
}

/// The model-level learner state (drift detectors) now equals the one recorded with `version`.
async fn assert_learner_state_of(pool: &PgPool, id: Uuid, version: i64) {
    let (now, then): (Value, Option<Value>) = sqlx::query_as(
        "SELECT m.learner_state,
                (SELECT v.learner_state FROM model_versions v
                 WHERE v.model_id = $1 AND v.model_version = $2)
         FROM models m WHERE m.model_id = $1",
    )
    .bind(id)
    .bind(version)
    .fetch_one(pool)
    .await
    .unwrap();
    let then = then.unwrap_or_else(|| json!({}));
    let parse =
        |v: &Value| -> olps::learner::ModelState { serde_json::from_value(v.clone()).unwrap() };
    assert_eq!(
        parse(&now),
        parse(&then),
        "learner state of version {version}"
    );
}

fn pit_state(read: &reconstruct::ParametersAt) -> State {
    read.parameters
        .iter()
        .map(|p| (p.parameter_id.clone(), p.state()))
        .collect()
}

const PLANS: [ReadPlan; 4] = [
    ReadPlan::Auto,
    ReadPlan::Forward,
    ReadPlan::Backward(Lookup::Indexed),
    ReadPlan::Backward(Lookup::Hashed),
];

fn adam_standardized() -> LearnerConfig {
    LearnerConfig {
        optimizer: OptimizerKind::Adam,
        learning_rate: 0.05,
        standardize: true,
        l2: 1e-4,
        ..LearnerConfig::default()
    }
}

#[tokio::test]
async fn rollback_and_roll_forward_restore_parameters_and_optimizer_state_bit_for_bit() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let model = create_model(pool, "inv4", ModelKind::Logistic, adam_standardized()).await;
    let id = model.model_id;
    // Features f0..f39 first, then f0..f59: parameters are born after version 6.
    let mut rows = sparse_stream(300, 5, 40, true, 1);
    rows.extend(sparse_stream(400, 5, 60, true, 2));
    let mut recorded = BTreeMap::new();
    recorded.insert(0, Recorded::load(pool, id).await);

    insert_stream(pool, id, &rows[..300]).await;
    step_all(pool, id, 50, &mut recorded).await;
    assert_eq!(current_version(pool, id).await, 6);
    let snap = committed::create_snapshot(pool, id, Some("v6"))
        .await
        .unwrap();
    assert_eq!(
        (
            snap.model_version,
            snap.parameter_count,
            snap.examples_seen,
            snap.kind.as_str()
        ),
        (6, recorded[&6].params.len() as i64, 300, "manual")
    );
    insert_stream(pool, id, &rows[300..600]).await;
    step_all(pool, id, 50, &mut recorded).await;
    assert_eq!(current_version(pool, id).await, 12);
    // Every state column is exercised.
    let s = &recorded[&12].params;
    assert!(s.values().any(|p| p.m != 0.0) && s.values().any(|p| p.v != 0.0));
    assert!(s.values().any(|p| p.mean != 0.0) && s.values().any(|p| p.m2 != 0.0));

    // Back to the snapshot: a new version with rollback history rows.
    let out = rollback_to(pool, id, RollbackTarget::Snapshot("v6".into())).await;
    assert_eq!(
        (out.version, out.previous_version, out.rolled_back_to),
        (13, 12, 6)
    );
    assert_eq!(out.snapshot_id, Some(snap.snapshot_id));
    assert!(out.parameters_changed > 0);
    assert_model_equals(pool, id, &recorded[&6], "rollback to snapshot v6").await;
    assert_learner_state_of(pool, id, 6).await;
    let (kind, to, changed): (String, Option<i64>, i32) = sqlx::query_as(
        "SELECT kind, rolled_back_to, parameters_changed FROM model_versions
         WHERE model_id = $1 AND model_version = 13",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (kind.as_str(), to, changed as i64),
        ("rollback", Some(6), out.parameters_changed)
    );
    let rows_13: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM parameter_updates
         WHERE model_id = $1 AND model_version = 13 AND update_type = 'rollback'",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        rows_13, out.parameters_changed,
        "one history row per changed parameter"
    );
    // Parameters born after version 6 were zeroed, not deleted.
    let born_later = recorded[&12]
        .params
        .keys()
        .filter(|k| !recorded[&6].params.contains_key(*k))
        .count() as i64;
    assert!(
        born_later > 0,
        "the fixture should create parameters after version 6"
    );
    assert_eq!(out.parameters_zeroed, born_later);
    assert_eq!(
        Recorded::load(pool, id).await.params.len(),
        recorded[&12].params.len()
    );
    assert_linear_history(pool, id).await;

    // Roll forward to the latest learned version.
    let out = rollback_to(pool, id, RollbackTarget::Version(12)).await;
    assert_eq!(out.version, 14);
    assert_model_equals(pool, id, &recorded[&12], "roll forward to 12").await;
    assert_learner_state_of(pool, id, 12).await;

    // A version without a snapshot, by every plan, equals one with.
    for (to, lookup, plan) in [
        (9, Lookup::Indexed, "incremental-indexed"),
        (2, Lookup::Hashed, "incremental-hashed"),
        (11, Lookup::Indexed, "incremental-indexed"),
        (5, Lookup::Hashed, "incremental-hashed"),
    ] {
        let target = RollbackTarget::Version(to);
        let out = committed::rollback_with(pool, id, &target, RollbackPlan::Incremental(lookup))
            .await
            .unwrap();
        assert_eq!(out.plan, plan);
        assert_model_equals(
            pool,
            id,
            &recorded[&to],
            &format!("rollback to {to}, {plan}"),
        )
        .await;
    }
    let out = committed::rollback_with(pool, id, &RollbackTarget::Version(3), RollbackPlan::Full)
        .await
        .unwrap();
    assert_eq!(out.plan, "full");
    assert_model_equals(pool, id, &recorded[&3], "rollback to 3, full").await;
    let out = committed::rollback_with(pool, id, &RollbackTarget::Version(12), RollbackPlan::Full)
        .await
        .unwrap();
    assert_model_equals(pool, id, &recorded[&12], "roll forward to 12, full").await;
    // Rolling to the state we are in changes nothing but still makes a version.
    let again = rollback_to(pool, id, RollbackTarget::Version(out.version)).await;
    assert_eq!(
        (again.parameters_changed, again.version),
        (0, out.version + 1)
    );
    // A rollback version is a valid target too: version 13 held version 6's state.
    rollback_to(pool, id, RollbackTarget::Version(13)).await;
    assert_model_equals(pool, id, &recorded[&6], "rollback to 13 (= 6)").await;
    // Version 0: nothing learned.
    let out = rollback_to(pool, id, RollbackTarget::Version(0)).await;
    assert_eq!(out.examples_seen, 0);
    assert_model_equals(pool, id, &recorded[&0], "rollback to 0").await;
    assert_learner_state_of(pool, id, 0).await;
    assert_linear_history(pool, id).await;

    // Learning continues from the rolled-back state: back to 6, then new feedback equals the
    // learner over rows 0..300 followed by the new rows.
    let out = rollback_to(
        pool,
        id,
        RollbackTarget::Snapshot(snap.snapshot_id.to_string()),
    )
    .await;
    assert_model_equals(pool, id, &recorded[&6], "rollback to 6 by UUID").await;
    insert_stream(pool, id, &rows[600..]).await;
    let stats = drain(pool, 30).await;
    assert_eq!(stats.examples, 100);
    let replay: Vec<Row> = rows[..300].iter().chain(&rows[600..]).cloned().collect();
    let expected = learn_in_memory(&model, &replay);
    let now = Recorded::load(pool, id).await;
    assert_equivalent("learning after rollback", &now.params, &expected.params);
    assert_eq!(now.examples_seen, expected.examples_seen);
    assert!(current_version(pool, id).await > out.version);
    assert_linear_history(pool, id).await;

    // Errors: nothing changes.
    let before = current_version(pool, id).await;
    for (target, expect) in [
        (RollbackTarget::Version(before + 1), "does not exist"),
        (RollbackTarget::Version(-1), "0 or more"),
        (RollbackTarget::Snapshot("nope".into()), "not found"),
        (
            RollbackTarget::Snapshot(Uuid::new_v4().to_string()),
            "not found",
        ),
    ] {
        let err = committed::rollback(pool, id, &target).await.unwrap_err();
        assert!(err.to_string().contains(expect), "{target:?}: {err}");
    }
    assert!(matches!(
        committed::rollback(pool, Uuid::new_v4(), &RollbackTarget::Version(0)).await,
        Err(TimelineError::Model(_))
    ));
    assert_eq!(current_version(pool, id).await, before);
}

#[tokio::test]
async fn point_in_time_reads_equal_every_recorded_version_by_every_plan() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let settings = LearnerConfig {
        optimizer: OptimizerKind::Adagrad,
        learning_rate: 0.5,
        standardize: true,
        ..LearnerConfig::default()
    };
    let model = create_model(pool, "pit", ModelKind::Linear, settings).await;
    let id = model.model_id;
    let rows = sparse_stream(520, 4, 50, false, 2);
    let mut recorded = BTreeMap::new();
    recorded.insert(0, Recorded::load(pool, id).await);
    insert_stream(pool, id, &rows[..160]).await;
    step_all(pool, id, 40, &mut recorded).await; // 1..=4
    committed::create_snapshot(pool, id, Some("four"))
        .await
        .unwrap();
    insert_stream(pool, id, &rows[160..280]).await;
    step_all(pool, id, 40, &mut recorded).await; // 5..=7
    committed::create_snapshot(pool, id, None).await.unwrap();
    let out = rollback_to(pool, id, RollbackTarget::Version(5)).await; // 8
    recorded.insert(out.version, Recorded::load(pool, id).await);
    insert_stream(pool, id, &rows[280..440]).await;
    step_all(pool, id, 40, &mut recorded).await; // 9..=12
    let out = rollback_to(pool, id, RollbackTarget::Version(10)).await; // 13
    recorded.insert(out.version, Recorded::load(pool, id).await);
    insert_stream(pool, id, &rows[440..]).await;
    step_all(pool, id, 40, &mut recorded).await; // 14, 15
    let current = current_version(pool, id).await;
    assert_eq!(current, 15);
    assert_eq!(
        recorded.keys().copied().collect::<Vec<_>>(),
        (0..=current).collect::<Vec<_>>()
    );

    for (&version, want) in &recorded {
        for plan in PLANS {
            let read = committed::parameters_at_with(pool, id, At::Version(version), plan)
                .await
                .unwrap();
            assert_eq!((read.model_id, read.version), (id, version));
            let what = format!("version {version}, {plan:?}");
            assert_exact(&what, &pit_state(&read), &want.params);
            let names: Vec<&str> = read
                .parameters
                .iter()
                .map(|p| p.parameter_id.as_str())
                .collect();
            let mut sorted = names.clone();
            sorted.sort_unstable();
            assert_eq!(names, sorted, "{what}: ordered by parameter_id");
            assert!(read
                .parameters
                .iter()
                .all(|p| p.last_changed_version <= version));
        }
    }
    let now = committed::parameters_at(pool, id, At::Current)
        .await
        .unwrap();
    assert_eq!(now.version, current);
    assert_exact("current", &pit_state(&now), &recorded[&current].params);

    // By time: the latest version created at or before the moment.
    let created: Vec<(i64, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT model_version, created_at FROM model_versions WHERE model_id = $1 ORDER BY 1",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    for (version, at) in &created {
        let expected = created
            .iter()
            .filter(|(_, t)| t <= at)
            .map(|(v, _)| *v)
            .max()
            .unwrap();
        let read = committed::parameters_at(pool, id, At::Time(*at))
            .await
            .unwrap();
        assert_eq!(
            read.version, expected,
            "at the creation of version {version}"
        );
        assert_exact("by time", &pit_state(&read), &recorded[&expected].params);
    }
    let before_all = created[0].1 - chrono::Duration::seconds(1);
    let read = committed::parameters_at(pool, id, At::Time(before_all))
        .await
        .unwrap();
    assert_eq!((read.version, read.parameters.len()), (0, 0));

    // Bad versions.
    assert!(matches!(
        committed::parameters_at(pool, id, At::Version(current + 1)).await,
        Err(TimelineError::VersionNotFound { requested, current: c }) if requested == current + 1 && c == current
    ));
    assert!(matches!(
        committed::parameters_at(pool, id, At::Version(-1)).await,
        Err(TimelineError::InvalidArgument(m)) if m.contains("version")
    ));

    // The analysts' function agrees.
    for (&version, want) in &recorded {
        let rows: Vec<SqlParameterRow> = sqlx::query_as("SELECT * FROM olps_parameters_at($1, $2)")
            .bind(id)
            .bind(version)
            .fetch_all(pool)
            .await
            .unwrap();
        let got: State = rows
            .into_iter()
            .map(|r| {
                let s = ParamState {
                    value: r.1,
                    m: r.2,
                    v: r.3,
                    count: r.4,
                    mean: r.5,
                    m2: r.6,
                };
                (r.0, s)
            })
            .collect();
        assert_exact(
            &format!("olps_parameters_at({version})"),
            &got,
            &want.params,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollbacks_while_two_workers_drain_keep_the_line_and_apply_each_event_once() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let settings = LearnerConfig {
        optimizer: OptimizerKind::Adagrad,
        learning_rate: 0.3,
        ..LearnerConfig::default()
    };
    let model = create_model(pool, "busy", ModelKind::Linear, settings).await;
    let id = model.model_id;
    let rows = sparse_stream(4_000, 6, 120, false, 9);
    insert_stream(pool, id, &rows).await;
    let workers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(run_worker(pool.clone(), 20, Duration::from_millis(5))))
        .collect();
    // Roll back three times while they learn: back 4 versions, back to 2, and forward again.
    let mut rollbacks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut wait_for = 8;
    for step in 0..3 {
        while current_version(pool, id).await < wait_for {
            assert!(Instant::now() < deadline, "workers made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let now = current_version(pool, id).await;
        let target = match step {
            0 => now - 4,
            1 => 2,
            _ => rollbacks.first().map(|(v, _): &(i64, i64)| v - 1).unwrap(),
        };
        let out = rollback_to(pool, id, RollbackTarget::Version(target)).await;
        rollbacks.push((out.version, target));
        wait_for = out.version + 6;
    }
    let mut applied = 0;
    for w in workers {
        applied += w.await.unwrap().examples;
    }
    assert_eq!(applied, 4_000, "every event applied once");
    let current = assert_linear_history(pool, id).await;

    // The versions, replayed in memory: a learned version continues from the previous one with
    // the next `examples` events of the stream; a rollback version is its target's state.
    let versions: Vec<(i64, String, i32, Option<i64>)> = sqlx::query_as(
        "SELECT model_version, kind, examples, rolled_back_to FROM model_versions
         WHERE model_id = $1 ORDER BY model_version",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    let recorded_rollbacks: Vec<(i64, i64)> = versions
        .iter()
        .filter(|v| v.1 == "rollback")
        .map(|v| (v.0, v.3.unwrap()))
        .collect();
    assert_eq!(recorded_rollbacks, rollbacks);
    let mut states = vec![Learner::new(model.kind, model.settings.clone())];
    let mut cursor = 0;
    for (version, kind, examples, to) in &versions {
        let next = if kind == "rollback" {
            states[to.unwrap() as usize].clone()
        } else {
            let mut learner = states[*version as usize - 1].clone();
            for (features, label) in &rows[cursor..cursor + *examples as usize] {
                learner.learn(&Example::new(features.clone(), *label, 1.0).unwrap());
            }
            cursor += *examples as usize;
            learner
        };
        states.push(next);
    }
    assert_eq!(
        cursor, 4_000,
        "the learned versions cover the stream once, in order"
    );
    let now = Recorded::load(pool, id).await;
    assert_equivalent(
        "after the run",
        &now.params,
        &states[current as usize].params,
    );
    assert_eq!(now.examples_seen, states[current as usize].examples_seen);
    for (version, target) in &rollbacks {
        let read = committed::parameters_at(pool, id, At::Version(*version))
            .await
            .unwrap();
        assert_equivalent(
            &format!("rollback version {version}"),
            &pit_state(&read),
            &states[*target as usize].params,
        );
    }
    let (unprocessed, misattributed, queued): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM feedback_events WHERE NOT processed),
                (SELECT count(*) FROM feedback_events e LEFT JOIN model_versions v
                   ON v.model_id = e.model_id AND v.model_version = e.applied_version
                 WHERE v.kind IS DISTINCT FROM 'gradient'),
                (SELECT count(*) FROM feedback_queue)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((unprocessed, misattributed, queued), (0, 0, 0));
}

#[tokio::test]
async fn prune_deletes_only_history_a_snapshot_covers_and_says_what_it_kept() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let model = create_model(pool, "prune", ModelKind::Logistic, adam_standardized()).await;
    let id = model.model_id;
    let rows = sparse_stream(400, 4, 40, true, 4);
    let mut recorded = BTreeMap::new();
    recorded.insert(0, Recorded::load(pool, id).await);
    insert_stream(pool, id, &rows[..160]).await;
    step_all(pool, id, 40, &mut recorded).await; // 1..=4
    let s4 = committed::create_snapshot(pool, id, Some("four"))
        .await
        .unwrap();
    insert_stream(pool, id, &rows[160..280]).await;
    step_all(pool, id, 40, &mut recorded).await; // 5..=7
    let s7 = committed::create_snapshot(pool, id, Some("seven"))
        .await
        .unwrap();
    insert_stream(pool, id, &rows[280..]).await;
    step_all(pool, id, 40, &mut recorded).await; // 8..=10
    let created_9: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT created_at FROM model_versions WHERE model_id = $1 AND model_version = 9",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    let total = count("SELECT count(*) FROM parameter_updates WHERE model_id = $1").await;
    let through_7 =
        count("SELECT count(*) FROM parameter_updates WHERE model_id = $1 AND model_version <= 7")
            .await;
    let of_8 =
        count("SELECT count(*) FROM parameter_updates WHERE model_id = $1 AND model_version = 8")
            .await;

    // Before the first snapshot: nothing to delete, and it says why.
    let early = recorded_time(pool, id, 2).await;
    let report = committed::prune(pool, id, early, false).await.unwrap();
    assert_eq!((report.deleted_rows, report.pruned_through), (0, 0));
    assert!(
        report.notes[0].contains("no snapshot"),
        "{:?}",
        report.notes
    );

    let dry = committed::prune(pool, id, created_9, true).await.unwrap();
    assert_eq!(
        (
            dry.deleted_rows,
            dry.pruned_through,
            dry.last_version_before
        ),
        (through_7, 7, 8)
    );
    assert_eq!(
        count("SELECT count(*) FROM parameter_updates WHERE model_id = $1").await,
        total
    );

    let report = committed::prune(pool, id, created_9, false).await.unwrap();
    assert_eq!(report.floor_snapshot, Some(s7.snapshot_id));
    assert_eq!(
        (report.deleted_rows, report.kept_rows_before),
        (through_7, of_8)
    );
    assert_eq!(
        (report.unreachable, report.unreachable_except.clone()),
        (Some((1, 6)), vec![4])
    );
    let notes = report.notes.join("\n");
    assert!(notes.contains("kept") && notes.contains("8..=8"), "{notes}");
    assert_eq!(
        count("SELECT count(*) FROM parameter_updates WHERE model_id = $1").await,
        total - through_7
    );

    // Reachable: the floor and later (by every plan), and version 4 through its own snapshot.
    for version in [4, 7, 8, 9, 10] {
        for plan in PLANS {
            let read = committed::parameters_at_with(pool, id, At::Version(version), plan)
                .await
                .unwrap();
            assert_exact(
                &format!("pruned, v{version} {plan:?}"),
                &pit_state(&read),
                &recorded[&version].params,
            );
        }
    }
    assert_exact(
        "v0",
        &pit_state(
            &committed::parameters_at(pool, id, At::Version(0))
                .await
                .unwrap(),
        ),
        &recorded[&0].params,
    );
    for version in [1, 5, 6] {
        match committed::parameters_at(pool, id, At::Version(version)).await {
            Err(TimelineError::Unreachable {
                pruned_through: 7,
                snapshot_versions,
                ..
            }) => {
                assert_eq!(snapshot_versions, vec![4])
            }
            other => panic!("version {version}: {other:?}"),
        }
        assert!(matches!(
            committed::rollback(pool, id, &RollbackTarget::Version(version)).await,
            Err(TimelineError::Unreachable { .. })
        ));
    }
    let sql_err = sqlx::query("SELECT * FROM olps_parameters_at($1, 5)")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap_err();
    assert!(
        sql_err.to_string().contains("no longer reachable"),
        "{sql_err}"
    );

    // Rollbacks across the pruned range still work where reachable.
    let out = rollback_to(pool, id, RollbackTarget::Snapshot("four".into())).await;
    assert_eq!(out.plan, "full");
    assert_model_equals(
        pool,
        id,
        &recorded[&4],
        "rollback to pruned-over snapshot 4",
    )
    .await;
    rollback_to(pool, id, RollbackTarget::Version(8)).await;
    assert_model_equals(pool, id, &recorded[&8], "rollback to 8").await;
    rollback_to(pool, id, RollbackTarget::Version(10)).await;
    assert_model_equals(pool, id, &recorded[&10], "roll forward to 10").await;

    // The remaining history is still a chain after the floor, and current is the last row.
    let broken: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT old_value, lag(new_value) OVER w AS prev, row_number() OVER w AS rn
             FROM parameter_updates WHERE model_id = $1
             WINDOW w AS (PARTITION BY parameter_id ORDER BY model_version)) t
         WHERE rn > 1 AND old_value IS DISTINCT FROM prev",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(broken, 0);

    // The floor snapshot cannot be deleted; the other one can (and its version goes with it).
    match committed::delete_snapshot(pool, id, "seven").await {
        Err(TimelineError::SnapshotInUse {
            snapshot_id,
            version: 7,
        }) => {
            assert_eq!(snapshot_id, s7.snapshot_id)
        }
        other => panic!("{other:?}"),
    }
    committed::delete_snapshot(pool, id, &s4.snapshot_id.to_string())
        .await
        .unwrap();
    assert!(matches!(
        committed::parameters_at(pool, id, At::Version(4)).await,
        Err(TimelineError::Unreachable { .. })
    ));
    // Pruning again to the same moment finds nothing more to delete.
    let again = committed::prune(pool, id, created_9, false).await.unwrap();
    assert_eq!((again.deleted_rows, again.pruned_through), (0, 7));
    assert!(
        again.notes[0].contains("already pruned"),
        "{:?}",
        again.notes
    );
}

/// Snapshot parameter rows whose snapshot is gone.
async fn orphaned_snapshot_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM snapshot_parameters p
         WHERE NOT EXISTS (SELECT 1 FROM snapshots s
                           WHERE s.model_id = p.model_id AND s.snapshot_id = p.snapshot_id)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn recorded_time(pool: &PgPool, id: Uuid, version: i64) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar(
        "SELECT created_at FROM model_versions WHERE model_id = $1 AND model_version = $2",
    )
    .bind(id)
    .bind(version)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn automatic_snapshots_follow_the_policy_and_keep_the_newest() {
    let (db, model) = TestDb::with_model("auto", ModelKind::Linear).await;
    let pool = &db.pool;
    let id = model.model_id;
    let policy = SnapshotPolicy {
        every_versions: Some(3),
        every_minutes: None,
        keep: Some(2),
    };
    assert_eq!(
        snapshots::set_policy(pool, id, &policy).await.unwrap(),
        policy
    );
    assert_eq!(snapshots::policy(pool, id).await.unwrap(), policy);
    let bad = SnapshotPolicy {
        every_versions: Some(0),
        ..policy
    };
    assert!(matches!(
        snapshots::set_policy(pool, id, &bad).await,
        Err(TimelineError::InvalidArgument(m)) if m.contains("every_versions")
    ));

    let rows = sparse_stream(300, 3, 30, false, 5);
    let mut recorded: BTreeMap<i64, Recorded> = BTreeMap::new();
    insert_stream(pool, id, &rows[..200]).await;
    step_all(pool, id, 20, &mut recorded).await; // 1..=10: snapshots at 3, 6, 9, keeping 2
    let list = committed::list_snapshots(pool, id).await.unwrap();
    let versions: Vec<i64> = list.iter().map(|s| s.model_version).collect();
    assert_eq!(versions, vec![6, 9]);
    for s in &list {
        assert_eq!(s.kind, "auto");
        assert_eq!(s.label, None);
        let read = committed::parameters_at_with(
            pool,
            id,
            At::Version(s.model_version),
            ReadPlan::Forward,
        )
        .await
        .unwrap();
        assert_exact(
            "auto snapshot",
            &pit_state(&read),
            &recorded[&s.model_version].params,
        );
        let copied: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM snapshot_parameters WHERE model_id = $1 AND snapshot_id = $2",
        )
        .bind(id)
        .bind(s.snapshot_id)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(
            (copied, s.parameter_count),
            (recorded[&s.model_version].params.len() as i64, copied)
        );
    }
    // A manual snapshot is never trimmed, and resets the count.
    let manual = committed::create_snapshot(pool, id, Some("mine"))
        .await
        .unwrap();
    assert_eq!(manual.model_version, 10);
    // Nor is a labelled automatic one (the worker's guard takes those before an adaptation).
    let mut tx = pool.begin().await.unwrap();
    snapshots::copy(
        &mut tx,
        id,
        10,
        200,
        Some(&snapshots::before_adaptation_label(11)),
        SnapshotKind::Auto,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // A rollback is a version too: 11 (no snapshot: 1 past the manual one).
    rollback_to(pool, id, RollbackTarget::Version(5)).await;
    insert_stream(pool, id, &rows[200..260]).await;
    step_all(pool, id, 20, &mut recorded).await; // 12, 13 (snapshot), 14
    let versions: Vec<(i64, String, bool)> = committed::list_snapshots(pool, id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.model_version, s.kind.to_string(), s.label.is_some()))
        .collect();
    assert_eq!(
        versions,
        vec![
            (9, "auto".into(), false),
            (10, "manual".into(), true),
            (10, "auto".into(), true),
            (13, "auto".into(), false)
        ]
    );

    // By time: due once the newest snapshot is older than the interval.
    let policy = SnapshotPolicy {
        every_versions: None,
        every_minutes: Some(30),
        keep: None,
    };
    snapshots::set_policy(pool, id, &policy).await.unwrap();
    insert_stream(pool, id, &rows[260..280]).await;
    step_all(pool, id, 20, &mut recorded).await; // 15: not due
    assert_eq!(committed::list_snapshots(pool, id).await.unwrap().len(), 4);
    sqlx::query(
        // Every snapshot 31 minutes old (not `created_at - …`: Citus evaluates no time
        // arithmetic on a column in an UPDATE).
        "UPDATE snapshots SET created_at = now() - interval '31 minutes' WHERE model_id = $1",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
    insert_stream(pool, id, &rows[280..]).await;
    step_all(pool, id, 10, &mut recorded).await; // 16 (due), 17 (not)
    let versions: Vec<i64> = committed::list_snapshots(pool, id)
        .await
        .unwrap()
        .iter()
        .map(|s| s.model_version)
        .collect();
    assert_eq!(versions, vec![9, 10, 10, 13, 16]);
    assert_eq!(
        orphaned_snapshot_rows(pool).await,
        0,
        "trimmed snapshots leave no rows"
    );
    // Off.
    snapshots::set_policy(pool, id, &SnapshotPolicy::default())
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    assert!(snapshots::maybe_auto_snapshot(&mut conn, id, 17)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn history_lists_newest_first_with_filters() {
    let (db, model) = TestDb::with_model("hist", ModelKind::Linear).await;
    let pool = &db.pool;
    let id = model.model_id;
    let rows = seed_stream();
    insert_stream(pool, id, &rows[..200]).await;
    let mut recorded: BTreeMap<i64, Recorded> = BTreeMap::new();
    step_all(pool, id, 50, &mut recorded).await; // 1..=4
    rollback_to(pool, id, RollbackTarget::Version(2)).await; // 5
    let all = committed::updates(pool, id, &HistoryFilter::default())
        .await
        .unwrap();
    let total: i64 =
        sqlx::query_scalar("SELECT count(*) FROM parameter_updates WHERE model_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(all.len() as i64, total);
    assert!(all
        .windows(2)
        .all(|w| (w[0].model_version, &w[1].parameter_id)
            >= (w[1].model_version, &w[0].parameter_id)));
    assert_eq!(all[0].model_version, 5);
    assert_eq!(all[0].update_type, "rollback");
    assert_eq!(all[0].metadata, Some(json!({"rolled_back_to": 2})));

    let x0 = committed::updates(
        pool,
        id,
        &HistoryFilter {
            parameter: Some("x0".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        x0.iter().map(|r| r.model_version).collect::<Vec<_>>(),
        vec![5, 4, 3, 2, 1]
    );
    assert!(x0
        .windows(2)
        .all(|w| w[0].old_value == Some(w[1].new_value)));
    assert_eq!(x0[4].old_value, None);
    let limited = committed::updates(
        pool,
        id,
        &HistoryFilter {
            limit: Some(3),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(limited, all[..3].to_vec());
    let t3 = recorded_time(pool, id, 3).await;
    let t5 = recorded_time(pool, id, 5).await;
    let window = committed::updates(
        pool,
        id,
        &HistoryFilter {
            since: Some(t3),
            until: Some(t5),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let expected: Vec<_> = all
        .iter()
        .filter(|r| r.model_version == 3 || r.model_version == 4)
        .cloned()
        .collect();
    assert_eq!(window, expected);
    for (filter, needle) in [
        (
            HistoryFilter {
                limit: Some(0),
                ..Default::default()
            },
            "limit",
        ),
        (
            HistoryFilter {
                since: Some(t5),
                until: Some(t3),
                ..Default::default()
            },
            "since",
        ),
        (
            HistoryFilter {
                parameter: Some(String::new()),
                ..Default::default()
            },
            "parameter",
        ),
    ] {
        let err = committed::updates(pool, id, &filter).await.unwrap_err();
        assert!(
            matches!(&err, TimelineError::InvalidArgument(m) if m.contains(needle)),
            "{err}"
        );
    }
    assert!(matches!(
        committed::updates(pool, Uuid::new_v4(), &HistoryFilter::default()).await,
        Err(TimelineError::Model(_))
    ));
}

#[tokio::test]
async fn http_snapshots_rollback_parameters_and_updates() {
    let app = spawn_app().await;
    let pool = app.pool().clone();
    let id = app.create_model("web", "logistic").await;
    let m = format!("/v1/models/{id}");
    let events: Vec<Value> = sparse_stream(120, 3, 20, true, 6)
        .into_iter()
        .enumerate()
        .map(|(i, (features, label))| {
            let features: serde_json::Map<String, Value> =
                features.into_iter().map(|(k, v)| (k, json!(v))).collect();
            json!({"entity_id": format!("u{i}"), "feedback_type": "explicit", "feedback_value": label, "features": features})
        })
        .collect();
    let (status, body) = app
        .post(&format!("{m}/feedback"), &json!({"events": events[..60]}))
        .await;
    assert!(status < 300, "{status} {body}");
    drain(&pool, 20).await; // versions 1..=3
    let at_3 = Recorded::load(&pool, id).await;

    // Snapshots.
    let (status, snap) = app
        .post(&format!("{m}/snapshots"), &json!({"label": "first"}))
        .await;
    assert_eq!(status, 201, "{snap}");
    assert_eq!(
        (snap["model_version"].as_i64(), snap["label"].as_str()),
        (Some(3), Some("first"))
    );
    assert_eq!(
        snap["parameter_count"].as_i64(),
        Some(at_3.params.len() as i64)
    );
    assert_eq!(snap["model_id"].as_str(), Some(id.to_string().as_str()));
    let snapshot_id = snap["snapshot_id"].as_str().unwrap().to_string();
    let (status, _) = app.post_raw("/v1/models/web/snapshots", Vec::new()).await;
    assert_eq!(
        status, 201,
        "no body: a snapshot without a label (model by name)"
    );
    for (body, code, needle) in [
        (json!({"label": "first"}), 409, "already exists"),
        (json!({"label": Uuid::new_v4().to_string()}), 400, "label"),
        (json!({"label": ""}), 400, "label"),
        (json!({"labels": "x"}), 400, "labels"),
    ] {
        let (status, err) = app.post(&format!("{m}/snapshots"), &body).await;
        assert_eq!(status, code, "{body}: {err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(needle),
            "{err}"
        );
    }
    let (status, err) = app
        .post_raw(&format!("{m}/snapshots"), b"{not json".to_vec())
        .await;
    assert_eq!(status, 400, "{err}");
    let (status, list) = app.get(&format!("{m}/snapshots")).await;
    assert_eq!(status, 200);
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 2);
    let (status, one) = app.get(&format!("{m}/snapshots/first")).await;
    assert_eq!(
        (status, one["snapshot_id"].as_str()),
        (200, Some(snapshot_id.as_str()))
    );
    let (status, _) = app
        .get(&format!("/v1/models/{}/snapshots", Uuid::new_v4()))
        .await;
    assert_eq!(status, 404);

    let (status, body) = app
        .post(&format!("{m}/feedback"), &json!({"events": events[60..]}))
        .await;
    assert!(status < 300, "{status} {body}");
    drain(&pool, 20).await; // 4..=6

    // Point-in-time reads.
    let (status, now) = app.get(&format!("{m}/parameters")).await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(
        (now["model_id"].as_str(), now["version"].as_i64()),
        (Some(id.to_string().as_str()), Some(6))
    );
    let (status, then) = app.get(&format!("{m}/parameters?version=3")).await;
    assert_eq!((status, then["version"].as_i64()), (200, Some(3)));
    let params = then["parameters"].as_array().unwrap();
    let got: State = params
        .iter()
        .map(|p| {
            let f = |k: &str| p[k].as_f64().unwrap();
            (
                p["parameter_id"].as_str().unwrap().to_string(),
                ParamState {
                    value: f("value"),
                    m: f("opt_m"),
                    v: f("opt_v"),
                    count: p["update_count"].as_i64().unwrap(),
                    mean: f("feature_mean"),
                    m2: f("feature_m2"),
                },
            )
        })
        .collect();
    assert_exact("GET parameters?version=3", &got, &at_3.params);
    assert!(params[0]["last_changed_version"].as_i64().unwrap() <= 3);
    let t = recorded_time(&pool, id, 3).await;
    let (status, by_time) = app
        .get(&format!("{m}/parameters?at={}", urlencode(&t.to_rfc3339())))
        .await;
    assert_eq!(
        (status, by_time["version"].as_i64()),
        (200, Some(3)),
        "{by_time}"
    );
    for (query, code, needle) in [
        ("version=abc", 400, "version"),
        ("version=-1", 400, "version"),
        ("version=7", 404, "does not exist"),
        ("at=yesterday", 400, "at"),
        ("version=1&at=2026-01-01", 400, "either"),
        ("versoin=1", 400, "versoin"),
    ] {
        let (status, err) = app.get(&format!("{m}/parameters?{query}")).await;
        assert_eq!(status, code, "{query}: {err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(needle),
            "{query}: {err}"
        );
    }
    let (status, _) = app.get("/v1/models/nope/parameters").await;
    assert_eq!(status, 404);

    // Updates.
    let (status, ups) = app
        .get(&format!("{m}/updates?parameter=__intercept__&limit=2"))
        .await;
    assert_eq!(status, 200, "{ups}");
    let list = ups["updates"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["model_version"].as_i64(), Some(6));
    assert_eq!(list[0]["old_value"], list[1]["new_value"]);
    let (status, ups) = app
        .get(&format!("{m}/updates?since={}", urlencode(&t.to_rfc3339())))
        .await;
    assert_eq!(status, 200);
    assert!(ups["updates"]
        .as_array()
        .unwrap()
        .iter()
        .all(|u| u["model_version"].as_i64().unwrap() >= 3));
    for (query, needle) in [
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("since=nope", "since"),
        ("until=2020-01-01&since=2021-01-01", "since"),
        ("parmeter=a", "parmeter"),
    ] {
        let (status, err) = app.get(&format!("{m}/updates?{query}")).await;
        assert_eq!(status, 400, "{query}: {err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(needle),
            "{query}: {err}"
        );
    }

    // Bad rollbacks change nothing.
    let history_rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM parameter_updates")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let rows_before = history_rows().await;
    for (body, code) in [
        (json!({}), 400),
        (json!({"to_version": 1, "snapshot": "first"}), 400),
        (json!({"to_version": "one"}), 400),
        (json!({"to_version": -2}), 400),
        (json!({"to_version": 99}), 404),
        (json!({"snapshot": "missing"}), 404),
        (json!({"to": 1}), 400),
    ] {
        let (status, err) = app.post(&format!("{m}/rollback"), &body).await;
        assert_eq!(status, code, "{body}: {err}");
        assert!(err["error"]["message"].is_string(), "{err}");
    }
    let (status, _) = app
        .post(
            &format!("/v1/models/{}/rollback", Uuid::new_v4()),
            &json!({"to_version": 0}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        (current_version(&pool, id).await, history_rows().await),
        (6, rows_before)
    );

    // Rollbacks.
    let (status, out) = app
        .post(&format!("{m}/rollback"), &json!({"snapshot": "first"}))
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        (out["version"].as_i64(), out["rolled_back_to"].as_i64()),
        (Some(7), Some(3))
    );
    assert_eq!(out["snapshot_id"].as_str(), Some(snapshot_id.as_str()));
    assert_model_equals(&pool, id, &at_3, "HTTP rollback to snapshot").await;
    let (status, out) = app
        .post(&format!("{m}/rollback"), &json!({"to_version": 6}))
        .await;
    assert_eq!((status, out["version"].as_i64()), (200, Some(8)));
    assert_linear_history(&pool, id).await;

    // Policy.
    let (status, p) = app.get(&format!("{m}/snapshot-policy")).await;
    assert_eq!(
        (status, p),
        (
            200,
            json!({"every_versions": null, "every_minutes": null, "keep": null})
        )
    );
    let (status, p) = app
        .client
        .put(format!("{}{m}/snapshot-policy", app.base))
        .json(&json!({"every_versions": 5, "keep": 3}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map(|s| (s, ()))
        .unwrap();
    assert_eq!((status, p), (200, ()));
    assert_eq!(
        snapshots::policy(&pool, id).await.unwrap(),
        SnapshotPolicy {
            every_versions: Some(5),
            every_minutes: None,
            keep: Some(3)
        }
    );
    let status = app
        .client
        .put(format!("{}{m}/snapshot-policy", app.base))
        .json(&json!({"every_versions": 0}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(status, 400);

    // Delete.
    let del = |path: String| {
        let client = app.client.clone();
        let url = format!("{}{path}", app.base);
        async move {
            let r = client.delete(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (status, gone) = del(format!("{m}/snapshots/first")).await;
    assert_eq!(
        (status, gone["deleted"]["snapshot_id"].as_str()),
        (200, Some(snapshot_id.as_str()))
    );
    let (status, err) = del(format!("{m}/snapshots/first")).await;
    assert_eq!(status, 404, "{err}");
    let (status, list) = app.get(&format!("{m}/snapshots")).await;
    assert_eq!(
        (status, list["snapshots"].as_array().unwrap().len()),
        (200, 1)
    );
    assert_eq!(
        orphaned_snapshot_rows(&pool).await,
        0,
        "deleted with its parameters"
    );

    // The answers have exactly the documented properties (the OpenAPI schemas mirror the
    // library's types).
    let (_, doc) = app.get("/openapi.json").await;
    let (_, created) = app
        .post(&format!("{m}/snapshots"), &json!({"label": "shape"}))
        .await;
    assert_shape(&doc, "Snapshot", &created);
    let (_, list) = app.get(&format!("{m}/snapshots")).await;
    assert_shape(&doc, "SnapshotList", &list);
    assert_shape(&doc, "Snapshot", &list["snapshots"][0]);
    let (_, read) = app.get(&format!("{m}/parameters?version=3")).await;
    assert_shape(&doc, "ParametersAt", &read);
    assert_shape(&doc, "ParameterAt", &read["parameters"][0]);
    let (_, ups) = app.get(&format!("{m}/updates?limit=1")).await;
    assert_shape(&doc, "ParameterUpdates", &ups);
    assert_shape(&doc, "ParameterUpdate", &ups["updates"][0]);
    let (_, out) = app
        .post(&format!("{m}/rollback"), &json!({"to_version": 3}))
        .await;
    assert_shape(&doc, "RollbackOutcome", &out);
    let (_, policy) = app.get(&format!("{m}/snapshot-policy")).await;
    assert_shape(&doc, "SnapshotPolicy", &policy);
    let (_, gone) = del(format!("{m}/snapshots/shape")).await;
    assert_shape(&doc, "DeletedSnapshot", &gone);
    assert_shape(&doc, "Snapshot", &gone["deleted"]);
}

/// The value's properties are exactly those of the documented schema.
fn assert_shape(doc: &Value, schema: &str, value: &Value) {
    let documented: std::collections::BTreeSet<&String> = doc["components"]["schemas"][schema]
        ["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {schema} is not documented"))
        .keys()
        .collect();
    let served: std::collections::BTreeSet<&String> = value
        .as_object()
        .unwrap_or_else(|| panic!("{schema}: {value} is not an object"))
        .keys()
        .collect();
    assert_eq!(served, documented, "{schema}: {value}");
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn command_line_snapshot_rollback_params_history_and_prune() {
    let (db, model) = TestDb::with_model("cli-model", ModelKind::Linear).await;
    let pool = &db.pool;
    let id = model.model_id;
    let cli = Cli::new(&db.url);
    insert_stream(pool, id, &seed_stream()[..120]).await;
    let mut recorded = BTreeMap::new();
    step_all(pool, id, 40, &mut recorded).await; // 1..=3
    let out = cli
        .ok("snapshot create --model cli-model --label three")
        .await;
    let snapshot_id: Uuid = out.lines().last().unwrap().parse().unwrap();
    let out = cli
        .ok(&format!("snapshot list --model {id} --format json"))
        .await;
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        list[0]["snapshot_id"].as_str(),
        Some(snapshot_id.to_string().as_str())
    );

    insert_stream(pool, id, &seed_stream()[120..200]).await;
    step_all(pool, id, 40, &mut recorded).await; // 4, 5
    let out = cli.ok("rollback --model cli-model --to-version 2").await;
    assert_eq!(out.lines().last().unwrap(), "6");
    assert_model_equals(pool, id, &recorded[&2], "CLI rollback").await;
    let out = cli
        .ok("rollback --model cli-model --snapshot three --format json")
        .await;
    let outcome: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            outcome["version"].as_i64(),
            outcome["rolled_back_to"].as_i64()
        ),
        (Some(7), Some(3))
    );
    let err = cli.fails("rollback --model cli-model").await;
    assert!(err.contains("--to-version"), "{err}");
    let err = cli
        .fails("rollback --model cli-model --to-version 99")
        .await;
    assert!(err.contains("does not exist"), "{err}");

    let out = cli
        .ok("params --model cli-model --version 4 --format csv")
        .await;
    let mut lines = out.lines();
    assert_eq!(
        lines.next().unwrap(),
        "parameter_id,value,opt_m,opt_v,update_count,feature_mean,feature_m2,last_changed_version"
    );
    let got: State = lines
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            let f = |i: usize| c[i].parse::<f64>().unwrap();
            (
                c[0].to_string(),
                ParamState {
                    value: f(1),
                    m: f(2),
                    v: f(3),
                    count: c[4].parse().unwrap(),
                    mean: f(5),
                    m2: f(6),
                },
            )
        })
        .collect();
    assert_exact("olps params --version 4", &got, &recorded[&4].params);
    let out = cli.ok("params --model cli-model --format json").await;
    let now: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(now["version"].as_i64(), Some(7));
    let err = cli.fails("params --model cli-model --at not-a-time").await;
    assert!(err.contains("--at"), "{err}");

    let out = cli
        .ok("history --model cli-model --parameter x1 --format json")
        .await;
    let rows: Value = serde_json::from_str(&out).unwrap();
    let versions: Vec<i64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["model_version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![7, 6, 5, 4, 3, 2, 1]);
    let out = cli.ok("history --model cli-model --limit 3").await;
    assert_eq!(out.lines().count(), 4, "{out}");

    let before = chrono::Utc::now().to_rfc3339();
    let out = cli
        .ok(&format!(
            "history prune --model cli-model --before {before} --dry-run"
        ))
        .await;
    assert!(
        out.contains("would delete") && out.contains("versions 1..=2 would no longer be reachable"),
        "{out}"
    );
    let out = cli
        .ok(&format!(
            "history prune --model cli-model --before {before}"
        ))
        .await;
    assert!(out.contains("deleted"), "{out}");
    let err = cli
        .fails("snapshot delete --model cli-model --snapshot three")
        .await;
    assert!(err.contains("retained history starts"), "{err}");
    let out = cli
        .ok("snapshot policy --model cli-model --every-versions 10")
        .await;
    assert!(out.contains("every_versions 10"), "{out}");
}

/// Timings of snapshot, rollback and point-in-time reads on a synthetic model (not an assertion):
/// `OLPS_TIME_TRAVEL_PARAMS=1000000 cargo test --release --test it -- --ignored --nocapture versions::time_travel_timings`
#[tokio::test]
#[ignore]
async fn time_travel_timings() {
    let db = TestDb::new().await;
    let sizes: Vec<i64> = std::env::var("OLPS_TIME_TRAVEL_PARAMS")
        .unwrap_or_else(|_| "100000".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    for n in sizes {
        let t = olps::bench::time_travel::measure_time_travel(&db.pool, n)
            .await
            .unwrap();
        println!("{}", serde_json::to_string_pretty(&t).unwrap());
    }
}
