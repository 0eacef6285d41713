//! The schema: migrations (twice, concurrently), the documented trigger and view, queue order.

use uuid::Uuid;

use crate::common::TestDb;

async fn applied_migrations(db: &TestDb) -> Vec<i32> {
    sqlx::query_scalar("SELECT version FROM refinery_schema_history ORDER BY version")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

async fn make_model(db: &TestDb, kind: &str) -> Uuid {
    sqlx::query_scalar("INSERT INTO models (name, kind) VALUES ($1, $2) RETURNING model_id")
        .bind(format!("m-{}", Uuid::new_v4()))
        .bind(kind)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn migrate_twice_applies_once() {
    let db = TestDb::empty().await;
    let first = olps::schema::migrate(&db.url).await.unwrap();
    assert!(
        first.applied.iter().any(|m| m.starts_with("V1__")),
        "{first:?}"
    );
    let second = olps::schema::migrate(&db.url).await.unwrap();
    assert!(
        second.applied.is_empty(),
        "second run applied {:?}",
        second.applied
    );
    let versions = applied_migrations(&db).await;
    let mut unique = versions.clone();
    unique.dedup();
    assert_eq!(versions, unique, "a migration was recorded twice");
    assert_eq!(versions.last().copied(), first.latest_version);
}

#[tokio::test]
async fn concurrent_migrations_serialize() {
    let db = TestDb::empty().await;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { olps::schema::migrate(&url).await })
        })
        .collect();
    let mut applied_total = 0;
    for run in runs {
        let report = run
            .await
            .unwrap()
            .expect("every concurrent migrate succeeds");
        applied_total += report.applied.len();
    }
    let versions = applied_migrations(&db).await;
    assert_eq!(
        applied_total,
        versions.len(),
        "each migration applied by exactly one run"
    );
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN
         ('models','model_parameters','parameter_updates','feedback_events','feedback_queue')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(tables, 5);
}

#[tokio::test]
async fn trigger_enqueues_with_documented_priorities() {
    let db = TestDb::new().await;
    let model = make_model(&db, "linear").await;
    for (kind, _) in [("explicit", 1.0), ("implicit", 0.5), ("click", 0.3)] {
        // The plain-SQL path of DESIGN.md, verbatim apart from the type.
        sqlx::query(
            "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, confidence, metadata)
             VALUES ($1, $2, $3, 1.0, 0.9, '{\"features\": {\"amount\": 12.5, \"country=US\": 1}}')",
        )
        .bind(model)
        .bind(format!("entity-{kind}"))
        .bind(kind)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let rows: Vec<(String, f64, String, Uuid)> = sqlx::query_as(
        "SELECT e.feedback_type, q.priority, q.status, q.model_id
         FROM feedback_queue q JOIN feedback_events e ON e.id = q.feedback_id AND e.model_id = q.model_id
         ORDER BY q.priority DESC",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let got: Vec<(String, f64)> = rows.iter().map(|r| (r.0.clone(), r.1)).collect();
    assert_eq!(
        got,
        vec![
            ("explicit".to_string(), 1.0),
            ("implicit".to_string(), 0.5),
            ("click".to_string(), 0.3)
        ]
    );
    assert!(rows.iter().all(|r| r.2 == "pending" && r.3 == model));
    // Defaults fixed from the document: ids generated, confidence defaults to 1, processed false.
    let (confidence, processed): (Option<f64>, bool) = sqlx::query_as(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value)
         VALUES ($1, 'e', 'explicit', 0.5) RETURNING confidence, processed",
    )
    .bind(model)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((confidence, processed), (Some(1.0), false));
}

#[tokio::test]
async fn columns_the_worker_owns_are_refused_at_insert_and_nothing_is_stored() {
    let db = TestDb::new().await;
    let model = make_model(&db, "linear").await;
    for (column, value) in [
        ("processed", "true"),
        ("applied_version", "7"),
        ("applied_position", "1"),
        ("prequential_prediction", "0.5"),
        ("prequential_loss", "0.25"),
    ] {
        // Two rows in one statement, the first good: the statement stores nothing.
        let err = sqlx::query(&format!(
            "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, {column})
             VALUES ($1, 'good', 'explicit', 0.5, DEFAULT), ($1, 'bad', 'explicit', 0.5, {value})"
        ))
        .bind(model)
        .execute(&db.pool)
        .await
        .expect_err(column);
        let err = err.as_database_error().expect(column);
        assert_eq!(err.code().as_deref(), Some("23514"), "{column}: {err}");
        assert!(
            err.message()
                .starts_with(&format!("feedback_events.{column} is set by the worker")),
            "{column}: {err}"
        );
    }
    let stored: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM feedback_events), (SELECT count(*) FROM feedback_queue)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(stored, (0, 0));
    // The default, stated or left out, is accepted.
    sqlx::query(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value,
                                      processed, applied_version)
         VALUES ($1, 'e', 'explicit', 0.5, false, NULL)",
    )
    .bind(model)
    .execute(&db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn queue_order_is_priority_then_time_then_insertion() {
    let db = TestDb::new().await;
    let model = make_model(&db, "linear").await;
    // One statement: all rows share created_at; the sequence keeps their order.
    sqlx::query(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value)
         SELECT $1, 'row-' || i, CASE WHEN i % 3 = 0 THEN 'explicit' ELSE 'view' END, i
         FROM generate_series(1, 30) AS i",
    )
    .bind(model)
    .execute(&db.pool)
    .await
    .unwrap();
    let order: Vec<f64> = sqlx::query_scalar(
        "SELECT e.feedback_value FROM feedback_queue q
         JOIN feedback_events e ON e.model_id = q.model_id AND e.id = q.feedback_id
         WHERE q.model_id = $1 AND q.status = 'pending'
         ORDER BY q.priority DESC, q.created_at, q.seq",
    )
    .bind(model)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut expected: Vec<f64> = (1..=30).filter(|i| i % 3 == 0).map(f64::from).collect();
    expected.extend((1..=30).filter(|i| i % 3 != 0).map(f64::from));
    assert_eq!(order, expected);
    let distinct_times: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT created_at) FROM feedback_queue WHERE model_id = $1",
    )
    .bind(model)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(distinct_times, 1, "rows of one statement share created_at");
}

#[tokio::test]
async fn refresh_current_model_state_concurrently() {
    let db = TestDb::new().await;
    let model = make_model(&db, "linear").await;
    sqlx::query(
        "INSERT INTO model_parameters (model_id, parameter_id, current_value)
         SELECT $1, 'f' || i, i FROM generate_series(1, 100) AS i",
    )
    .bind(model)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("SELECT refresh_current_model_state()")
        .execute(&db.pool)
        .await
        .expect("REFRESH ... CONCURRENTLY needs the unique index");
    let (n, sum): (i64, f64) = sqlx::query_as(
        "SELECT count(*), sum(current_value) FROM current_model_state WHERE model_id = $1",
    )
    .bind(model)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((n, sum), (100, 5050.0));
    sqlx::query("UPDATE model_parameters SET current_value = 0 WHERE parameter_id = 'f100'")
        .execute(&db.pool)
        .await
        .unwrap();
    // A reader during a concurrent refresh is not blocked: run one in a transaction meanwhile.
    let mut reader = db.pool.begin().await.unwrap();
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM current_model_state")
        .fetch_one(&mut *reader)
        .await
        .unwrap();
    sqlx::query("SELECT refresh_current_model_state()")
        .execute(&db.pool)
        .await
        .unwrap();
    reader.commit().await.unwrap();
    let sum: f64 = sqlx::query_scalar("SELECT sum(current_value) FROM current_model_state")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(sum, 4950.0);
}

#[tokio::test]
async fn every_traffic_table_is_keyed_by_model_first() {
    // Citus readiness: the primary key of each table that grows with traffic starts with model_id.
    let db = TestDb::new().await;
    let firsts: Vec<(String, String)> = sqlx::query_as(
        "SELECT tc.table_name::text, kcu.column_name::text
         FROM information_schema.table_constraints tc
         JOIN information_schema.key_column_usage kcu
           ON kcu.constraint_name = tc.constraint_name AND kcu.table_name = tc.table_name
         WHERE tc.constraint_type = 'PRIMARY KEY' AND kcu.ordinal_position = 1
           AND tc.table_schema = 'public' AND tc.table_name <> 'refinery_schema_history'
           -- Small tables that do not grow with traffic (Citus reference tables).
           AND tc.table_name NOT IN ('api_tokens', 'audit_log', 'feedback_queue_rotation',
                                     'model_challengers')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(firsts.len() >= 6, "{firsts:?}");
    for (table, column) in firsts {
        assert_eq!(
            column, "model_id",
            "primary key of {table} must start with model_id"
        );
    }
}

/// The parameter_id columns as migrations V1–V50 made them (the database's default collation),
/// with the materialized view that depends on one of them: what migration V60 finds in a
/// database made before it.
const BEFORE_V60: &str = r#"
DROP MATERIALIZED VIEW current_model_state;
ALTER TABLE model_parameters ALTER COLUMN parameter_id TYPE TEXT COLLATE "default";
ALTER TABLE parameter_updates ALTER COLUMN parameter_id TYPE TEXT COLLATE "default";
ALTER TABLE snapshot_parameters ALTER COLUMN parameter_id TYPE TEXT COLLATE "default";
CREATE MATERIALIZED VIEW current_model_state AS
SELECT model_id, parameter_id, current_value, version, last_updated FROM model_parameters;
CREATE UNIQUE INDEX current_model_state_pk ON current_model_state (model_id, parameter_id);
"#;

const V60: &str = include_str!("../../migrations/V60__parameter_id_collate_c.sql");

async fn parameter_id_collations(pool: &sqlx::PgPool) -> Vec<(String, Option<String>)> {
    sqlx::query_as(
        "SELECT table_name::text, collation_name::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND column_name = 'parameter_id'
           AND table_name IN ('model_parameters', 'parameter_updates', 'snapshot_parameters')
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A row of `olps_parameters_at`.
type ParameterRow = (String, f64, f64, f64, i64, f64, f64, i64);
/// The same, with the state as bits: (parameter_id, state, last_version).
type ParameterBits = (String, [u64; 6], i64);

/// Every version of a model through `olps_parameters_at`, values as bits.
async fn every_version(pool: &sqlx::PgPool, id: Uuid) -> Vec<Vec<ParameterBits>> {
    let current = crate::common::current_version(pool, id).await;
    let mut versions = Vec::new();
    for v in 0..=current {
        let rows: Vec<ParameterRow> = sqlx::query_as("SELECT * FROM olps_parameters_at($1, $2)")
            .bind(id)
            .bind(v)
            .fetch_all(pool)
            .await
            .unwrap();
        let mut rows: Vec<_> = rows
            .into_iter()
            .map(|(p, value, m, var, count, mean, m2, last)| {
                let bits = [
                    value.to_bits(),
                    m.to_bits(),
                    var.to_bits(),
                    count as u64,
                    mean.to_bits(),
                    m2.to_bits(),
                ];
                (p, bits, last)
            })
            .collect();
        rows.sort();
        versions.push(rows);
    }
    versions
}

#[tokio::test]
async fn parameter_id_collate_c_migrates_a_database_with_history() {
    use std::collections::BTreeMap;

    use crate::common::*;
    use olps::learner::{LearnerConfig, ModelKind};
    use olps::timeline::rollback::RollbackTarget;

    let db = TestDb::new().await;
    let c = Some("C".to_string());
    assert_eq!(
        parameter_id_collations(&db.pool).await,
        [
            ("model_parameters".to_string(), c.clone()),
            ("parameter_updates".to_string(), c.clone()),
            ("snapshot_parameters".to_string(), c.clone()),
        ],
        "a new database has byte-order parameter ids"
    );
    sqlx::raw_sql(BEFORE_V60).execute(&db.pool).await.unwrap();
    assert!(parameter_id_collations(&db.pool)
        .await
        .iter()
        .all(|(_, c)| c.is_none()));

    // A model with history, a snapshot and a rollback, under the old collation. The names mix
    // upper and lower case, punctuation and non-ASCII letters, whose order differs between
    // collations.
    let pool = &db.pool;
    let model = create_model(
        pool,
        "collate",
        ModelKind::Logistic,
        LearnerConfig::default(),
    )
    .await;
    let id = model.model_id;
    let rename = |rows: Vec<Row>| -> Vec<Row> {
        rows.into_iter()
            .map(|(features, label)| {
                let features = features
                    .into_iter()
                    .map(|(name, x)| {
                        let n: usize = name[1..].parse().unwrap();
                        let name = match n % 4 {
                            0 => format!("B{n}"),
                            1 => format!("a{n}"),
                            2 => format!("_é{n}"),
                            _ => format!("Z-{n}"),
                        };
                        (name, x)
                    })
                    .collect();
                (features, label)
            })
            .collect()
    };
    let mut recorded: BTreeMap<i64, State> = BTreeMap::new();
    insert_stream(pool, id, &rename(sparse_stream(150, 4, 30, true, 7))).await;
    step_all(pool, id, 50, &mut recorded).await;
    let snapshot = committed::create_snapshot(pool, id, Some("before-v60"))
        .await
        .unwrap();
    insert_stream(pool, id, &rename(sparse_stream(150, 4, 40, true, 8))).await;
    step_all(pool, id, 50, &mut recorded).await;
    committed::rollback(pool, id, &RollbackTarget::Snapshot("before-v60".into()))
        .await
        .unwrap();
    let before = every_version(pool, id).await;
    assert_eq!(before.len(), 8, "versions 0..=7");
    assert_linear_history(pool, id).await;

    sqlx::raw_sql(V60).execute(pool).await.unwrap();
    // Statements prepared before the change that return parameter_id fail from now on ("cached
    // plan must not change result type": the column's collation is part of its result type), so
    // processes connected during the migration reconnect; so does this test.
    db.pool.close().await;
    let pool = &sqlx::PgPool::connect(&db.url).await.unwrap();

    assert!(parameter_id_collations(pool)
        .await
        .iter()
        .all(|(_, col)| *col == c));
    assert_eq!(
        every_version(pool, id).await,
        before,
        "every version reads the same, bit for bit, after the migration"
    );
    assert_linear_history(pool, id).await;
    // The columns' own order is now byte order (as Rust sorts strings), index scans included.
    let ordered: Vec<String> = sqlx::query_scalar(
        "SELECT parameter_id FROM model_parameters WHERE model_id = $1 ORDER BY parameter_id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut bytewise = ordered.clone();
    bytewise.sort();
    assert_eq!(ordered, bytewise);
    // Rollback and roll-forward keep working on the rebuilt indexes.
    let out = committed::rollback(pool, id, &RollbackTarget::Version(4))
        .await
        .unwrap();
    assert!(out.parameters_changed > 0);
    let now = State::load(pool, id).await;
    let zero = olps::learner::ParamState::default();
    for name in now.keys().chain(recorded[&4].keys()) {
        assert_eq!(
            state_bits(now.get(name).unwrap_or(&zero)),
            state_bits(recorded[&4].get(name).unwrap_or(&zero)),
            "parameter {name} after the rollback to version 4"
        );
    }
    assert_eq!(snapshot.model_version, 3);
    assert_linear_history(pool, id).await;
    // The recreated view refreshes concurrently, as before.
    sqlx::query("SELECT refresh_current_model_state()")
        .execute(pool)
        .await
        .unwrap();
    let in_view: i64 =
        sqlx::query_scalar("SELECT count(*) FROM current_model_state WHERE model_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(in_view, now.len() as i64);
}
