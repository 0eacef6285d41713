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
           AND tc.table_name NOT IN ('api_tokens', 'audit_log', 'feedback_queue_rotation')",
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
