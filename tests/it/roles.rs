//! The least-privilege group roles `olps migrate` creates: each test logs in as each of them
//! (through a LOGIN role of its own, made a member, uniquely named and dropped afterwards — roles
//! belong to the whole cluster) and proves what it can and cannot do; `olps serve` and
//! `olps worker` run connected as their roles.

use std::time::{Duration, Instant};

use olps::learner::{LearnerConfig, ModelKind};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::common::*;

/// A LOGIN role, member of an olps group role, dropped when this is dropped (the retention tests
/// run as the worker's role too).
pub(crate) struct LoginRole {
    name: String,
    admin_url: String,
}

impl LoginRole {
    pub(crate) async fn new(db: &TestDb, group: &str) -> LoginRole {
        let name = format!("olps_test_{}_{}", group, Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&db.url).await.unwrap();
        sqlx::query(&format!("CREATE ROLE \"{name}\" LOGIN IN ROLE {group}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
        LoginRole {
            name,
            admin_url: db.url.clone(),
        }
    }

    /// The test database's URL, as this role.
    fn url(&self, db: &TestDb) -> String {
        let mut url = url::Url::parse(&db.url).unwrap();
        url.set_username(&self.name).unwrap();
        url.set_password(None).unwrap();
        url.to_string()
    }

    pub(crate) async fn pool(&self, db: &TestDb) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url(db))
            .await
            .unwrap_or_else(|e| panic!("log in as {}: {e}", self.name))
    }
}

impl Drop for LoginRole {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&url).await {
                    // Its sessions first (the pools may not be closed when a test fails).
                    let _ = sqlx::query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                    )
                    .bind(&name)
                    .execute(&mut conn)
                    .await;
                    let _ = sqlx::query(&format!("DROP ROLE IF EXISTS \"{name}\""))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Runs `sql` and says whether PostgreSQL refused it for want of privileges (42501).
async fn denied(pool: &PgPool, sql: &str) -> bool {
    match sqlx::query(sql).execute(pool).await {
        Ok(_) => false,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => true,
        Err(e) => panic!("{sql}: failed for another reason than privileges: {e}"),
    }
}

async fn allowed(pool: &PgPool, sql: &str) {
    sqlx::query(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test]
async fn migrate_creates_the_group_roles_without_login() {
    let db = TestDb::new().await;
    let roles: Vec<(String, bool)> = sqlx::query_as(
        "SELECT rolname::text, rolcanlogin FROM pg_roles WHERE rolname = ANY($1) ORDER BY 1",
    )
    .bind(olps::schema::ROLES.map(String::from).to_vec())
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        roles,
        [
            ("olps_analyst".to_string(), false),
            ("olps_service".to_string(), false),
            ("olps_worker".to_string(), false),
            ("olps_writer".to_string(), false),
        ]
    );
    // The enqueue trigger runs as its owner with a pinned search_path.
    let (definer, config): (bool, Vec<String>) = sqlx::query_as(
        "SELECT prosecdef, coalesce(proconfig, '{}') FROM pg_proc WHERE proname = 'enqueue_feedback'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(definer);
    assert!(
        config.iter().any(|c| c.starts_with("search_path=")),
        "{config:?}"
    );
    // Again: idempotent (`olps migrate` reapplies the grants every time).
    let report = olps::schema::migrate_and_grant(&db.url).await.unwrap();
    assert!(report.applied.is_empty() && report.roles_applied);
}

#[tokio::test]
async fn the_writer_may_only_insert_feedback() {
    let db = TestDb::new().await;
    let model = create_model(&db.pool, "w", ModelKind::Linear, LearnerConfig::default()).await;
    let role = LoginRole::new(&db, "olps_writer").await;
    let writer = role.pool(&db).await;

    // The documented plain insert, as a service client writes feedback; the trigger queues it.
    sqlx::query(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, confidence, metadata)
         VALUES ($1, 'txn-42', 'explicit', 1.0, 0.9, '{\"features\": {\"amount\": 12.5}}')",
    )
    .bind(model.model_id)
    .execute(&writer)
    .await
    .expect("the writer inserts feedback");
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM feedback_queue WHERE model_id = $1")
        .bind(model.model_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(queued, 1, "the SECURITY DEFINER trigger queued the event");

    for sql in [
        "UPDATE model_parameters SET current_value = 1",
        "SELECT * FROM prediction_log",
        "SELECT * FROM feedback_events",
        "SELECT * FROM models",
        "UPDATE feedback_events SET feedback_value = 0",
        "DELETE FROM feedback_events",
        "INSERT INTO feedback_queue (model_id, feedback_id) VALUES (gen_random_uuid(), gen_random_uuid())",
        "DELETE FROM feedback_queue",
        "INSERT INTO model_parameters (model_id, parameter_id) VALUES (gen_random_uuid(), 'x')",
        "SELECT * FROM api_tokens",
        "TRUNCATE feedback_events",
        "CREATE TABLE mine (x int)",
    ] {
        assert!(denied(&writer, sql).await, "the writer could run: {sql}");
    }
    writer.close().await;
}

#[tokio::test]
async fn the_analyst_reads_everything_but_token_hashes_and_writes_nothing() {
    let db = TestDb::new().await;
    let model = create_model(&db.pool, "a", ModelKind::Linear, LearnerConfig::default()).await;
    insert_stream(&db.pool, model.model_id, &sparse_stream(20, 2, 5, false, 1)).await;
    drain(&db.pool, 10).await;
    admin_token(&db.pool).await;
    let role = LoginRole::new(&db, "olps_analyst").await;
    let analyst = role.pool(&db).await;

    for sql in [
        "SELECT * FROM models",
        "SELECT * FROM model_parameters",
        "SELECT * FROM parameter_updates",
        "SELECT * FROM model_versions",
        "SELECT * FROM snapshots",
        "SELECT * FROM feedback_events",
        "SELECT * FROM feedback_queue",
        "SELECT * FROM prediction_log",
        "SELECT * FROM drift_events",
        "SELECT * FROM audit_log",
        "SELECT * FROM current_model_state",
        "SELECT * FROM parameter_update_stats_5min",
        "SELECT token_id, name, scopes, last_used_at FROM api_tokens",
        "SELECT * FROM olps_parameters_at((SELECT model_id FROM models LIMIT 1), 1)",
    ] {
        allowed(&analyst, sql).await;
    }
    for sql in [
        "SELECT token_hash FROM api_tokens",
        "INSERT INTO models (name, kind) VALUES ('x', 'linear')",
        "UPDATE models SET name = 'y'",
        "DELETE FROM parameter_updates",
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value) VALUES (gen_random_uuid(), 'e', 'explicit', 1)",
        "UPDATE model_parameters SET current_value = 0",
        "DELETE FROM snapshots",
        "INSERT INTO audit_log (actor, action) VALUES ('cli', 'x')",
        "UPDATE api_tokens SET revoked_at = now()",
        "TRUNCATE prediction_log",
        "REFRESH MATERIALIZED VIEW current_model_state",
        "CREATE TABLE mine (x int)",
    ] {
        assert!(denied(&analyst, sql).await, "the analyst could run: {sql}");
    }
    analyst.close().await;

    // The analysts' pack runs as the analyst.
    for (file, vars) in [
        ("audit_trail.sql", vec![]),
        ("version_timeline.sql", vec!["-v", "model=a"]),
        (
            "parameter_history.sql",
            vec!["-v", "model=a", "-v", "parameter_id=f1"],
        ),
    ] {
        let out = tokio::process::Command::new("psql")
            .arg(role.url(&db))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/").to_string() + file)
            .args(vars)
            .output()
            .await
            .expect("psql");
        assert!(
            out.status.success(),
            "{file} as the analyst: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

async fn wait_healthy(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::Client::new()
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "olps serve did not come up at {base}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn serve_and_worker_run_as_their_roles() {
    let db = TestDb::new().await;
    let service_role = LoginRole::new(&db, "olps_service").await;
    let worker_role = LoginRole::new(&db, "olps_worker").await;
    let secret = admin_token(&db.pool).await;

    // `olps serve` as olps_service: every route works.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!("{}.log", unique_name("olps-serve-role")));
    let mut serve = olps_command(
        None,
        Some(&service_role.url(&db)),
        &["serve", "--listen", &addr, "--token-cache-secs", "0"],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let base = format!("http://{addr}");
    wait_healthy(&base).await;
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let mut request = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(&secret);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            decode(response).await
        }
    };
    use reqwest::Method;
    let (status, body) = send(
        Method::POST,
        "/v1/models",
        Some(serde_json::json!({"name": "roled", "kind": "logistic"})),
    )
    .await;
    assert_eq!(
        status,
        201,
        "{body}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let events: Vec<serde_json::Value> = (0..30)
        .map(|i| {
            serde_json::json!({"entity_id": format!("e{i}"), "feedback_type": "explicit",
                               "feedback_value": (i % 2) as f64, "features": {"x": i as f64}})
        })
        .collect();
    let (status, body) = send(
        Method::POST,
        "/v1/models/roled/feedback",
        Some(serde_json::json!({ "events": events })),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = send(
        Method::POST,
        "/v1/models/roled/predict",
        Some(serde_json::json!({"features": {"x": 1.0}, "entity_id": "p1"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // `olps worker` as olps_worker learns the feedback.
    let out = tokio::process::Command::from(olps_command(
        None,
        Some(&worker_role.url(&db)),
        &["worker", "--until-empty", "--batch-size", "10"],
    ))
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "worker: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version: i64 = sqlx::query_scalar("SELECT version FROM models WHERE name = 'roled'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(version, 3, "the worker applied 30 events in batches of 10");

    for (method, path, body, want) in [
        (
            Method::POST,
            "/v1/models/roled/snapshots",
            Some(serde_json::json!({"label": "s"})),
            201,
        ),
        (
            Method::PUT,
            "/v1/models/roled/snapshot-policy",
            Some(serde_json::json!({"every_versions": 2, "every_minutes": null, "keep": 2})),
            200,
        ),
        (
            Method::POST,
            "/v1/models/roled/rollback",
            Some(serde_json::json!({"snapshot": "s"})),
            200,
        ),
        (
            Method::POST,
            "/v1/models/roled/rollback",
            Some(serde_json::json!({"to_version": 1})),
            200,
        ),
        (
            Method::GET,
            "/v1/models/roled/parameters?version=2",
            None,
            200,
        ),
        (Method::GET, "/v1/models/roled/updates", None, 200),
        (Method::GET, "/v1/models/roled/metrics", None, 200),
        (Method::POST, "/v1/models/roled/resume", None, 200),
        (Method::DELETE, "/v1/models/roled/snapshots/s", None, 200),
        (
            Method::POST,
            "/v1/tokens",
            Some(serde_json::json!({"name": "t", "scopes": ["read"]})),
            201,
        ),
        (Method::GET, "/v1/tokens", None, 200),
        (Method::DELETE, "/v1/tokens/t", None, 200),
        (Method::GET, "/metrics", None, 200),
    ] {
        let (status, answer) = send(method.clone(), path, body).await;
        assert_eq!(status, want, "{method} {path} as olps_service: {answer}");
    }
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE db_user = $1 AND status < 300")
            .bind(&service_role.name)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        audited, 9,
        "model, snapshot, policy, 2 rollbacks, resume, delete, 2 tokens"
    );
    serve.kill().unwrap();
    serve.wait().unwrap();
    let _ = std::fs::remove_file(&log);

    // What they cannot do.
    let service = service_role.pool(&db).await;
    for sql in [
        "UPDATE api_tokens SET token_hash = '\\x00'",
        "DELETE FROM parameter_updates",
        "DELETE FROM feedback_events",
        "TRUNCATE models",
        "DROP TABLE models",
        "CREATE TABLE mine (x int)",
    ] {
        assert!(denied(&service, sql).await, "the service could run: {sql}");
    }
    service.close().await;
    let worker = worker_role.pool(&db).await;
    for sql in [
        "SELECT * FROM api_tokens",
        "SELECT * FROM audit_log",
        // (It may INSERT into feedback_events: the copies of a champion's batch for its
        // challengers, src/shadow/feed.rs.)
        "INSERT INTO models (name, kind) VALUES ('x', 'linear')",
        "DELETE FROM model_parameters",
        "DROP TABLE models",
    ] {
        assert!(denied(&worker, sql).await, "the worker could run: {sql}");
    }
    worker.close().await;
}

#[test]
fn concurrent_migrations_on_a_fresh_cluster_create_the_roles_once() {
    // Roles belong to the cluster: four databases migrating at once on a cluster that has none of
    // them yet race to create them. A private cluster, so the roles really are new.
    if olps::embedded::find_pg_bin_dir().is_none() {
        eprintln!("no PostgreSQL binaries: skipped");
        return;
    }
    let tmp = TempCluster::new("olps-roles-race");
    let cluster = olps::embedded::ensure_cluster(&tmp.base).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = PgConnection::connect(&cluster.url).await.unwrap();
        let mut urls = Vec::new();
        for i in 0..4 {
            sqlx::query(&format!("CREATE DATABASE race{i}"))
                .execute(&mut conn)
                .await
                .unwrap();
            let mut url = url::Url::parse(&cluster.url).unwrap();
            url.set_path(&format!("/race{i}"));
            urls.push(url.to_string());
        }
        let runs: Vec<_> = urls
            .iter()
            .cloned()
            .map(|url| tokio::spawn(async move { olps::schema::migrate(&url).await }))
            .collect();
        for run in runs {
            let report = run
                .await
                .unwrap()
                .expect("every concurrent migrate succeeds");
            assert!(report.roles_applied);
        }
        let roles: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'olps\\_%' AND NOT rolcanlogin",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(roles, 4);
        // Each database got its grants.
        for url in &urls {
            let mut c = PgConnection::connect(url).await.unwrap();
            let ok: bool = sqlx::query_scalar(
                "SELECT has_table_privilege('olps_writer', 'feedback_events', 'INSERT')
                    AND NOT has_table_privilege('olps_writer', 'feedback_events', 'SELECT')",
            )
            .fetch_one(&mut c)
            .await
            .unwrap();
            assert!(ok, "{url}");
        }
    });
}
