//! Every client mistake is a 4xx, everywhere (issue 13, item 4): NUL in any part of a request,
//! values PostgreSQL refuses (SQLSTATE class 22), and the database's own limits answered as 503
//! with `Retry-After` (pool exhaustion, statement_timeout, serialization failures and deadlocks
//! that persist through the bounded retries), never 500.

use std::time::Duration;

use olps::http::{retry, AppState, ServicePool};
use olps::serving::ServingConfig;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::common::{counts, decode, spawn_app, Service, TestDb};

/// Every table a request could write, each as a digest of its rows (not `prediction_log`,
/// written off the request path): equal digests mean nothing was stored or changed.
pub async fn table_digests(pool: &PgPool) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for table in [
        "models",
        "feedback_events",
        "feedback_queue",
        "model_parameters",
        "parameter_updates",
        "model_versions",
        "snapshots",
        "snapshot_parameters",
        "drift_events",
    ] {
        let digest: String = sqlx::query_scalar(&format!(
            "SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '')
             FROM {table} t"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.push((table, digest));
    }
    out
}

fn assert_error(status: u16, body: &Value, want: u16, code: &str, mentions: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "{message:?} should mention {mentions:?}"
    );
}

async fn request(
    service: &Service,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value, Option<String>) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = service
        .client
        .request(method, format!("{}{path}", service.base));
    if let Some(body) = body {
        r = r.json(body);
    }
    let response = r.send().await.unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let (status, body) = decode(response).await;
    (status, body, retry_after)
}

/// Regressions: `GET /v1/models/a%00b` and `GET …/updates?parameter=a%00` answered 500, and so did
/// every other route with a NUL in its path, and a rollback to a snapshot label holding NUL.
#[tokio::test]
async fn nul_anywhere_in_the_url_is_a_400_naming_the_part() {
    let app = spawn_app().await;
    app.create_model("m", "linear").await;
    let before = table_digests(app.pool()).await;
    for (method, path, mentions) in [
        ("GET", "/v1/models/a%00b", "path"),
        ("GET", "/v1/models/a%00b/snapshots", "path"),
        ("GET", "/v1/models/m/snapshots/x%00", "path"),
        ("DELETE", "/v1/models/m/snapshots/x%00", "path"),
        ("POST", "/v1/models/a%00/feedback", "path"),
        ("POST", "/v1/models/a%00/predict", "path"),
        ("POST", "/v1/models/a%00/rollback", "path"),
        ("POST", "/v1/models/a%00/resume", "path"),
        ("PUT", "/v1/models/a%00/snapshot-policy", "path"),
        ("GET", "/v1/models/m/updates?parameter=a%00", "'parameter'"),
        ("GET", "/v1/models/m/updates?parameter=%00", "'parameter'"),
        ("GET", "/v1/models/m/parameters?at=2026-01-01%00", "'at'"),
        ("GET", "/v1/models/m/metrics?window=1%00", "'window'"),
        ("GET", "/v1/models?x%00=1", "query parameter name"),
        ("GET", "/healthz?%00", "query parameter name"),
        ("GET", "/no/such%00route", "path"),
    ] {
        let (status, body, _) = request(&app, method, path, Some(&json!({}))).await;
        assert_error(status, &body, 400, "invalid_request", mentions);
        assert!(
            body["error"]["message"].as_str().unwrap().contains("NUL"),
            "{method} {path}: {body}"
        );
    }
    let (status, body) = app
        .post("/v1/models/m/rollback", &json!({"snapshot": "a\u{0}b"}))
        .await;
    assert_error(status, &body, 400, "invalid_request", "snapshot");
    assert_eq!(
        table_digests(app.pool()).await,
        before,
        "a refused request changed nothing"
    );
    // A NUL that is not one ("%2500" is the three characters "%00") is an ordinary name.
    let (status, body) = app.get("/v1/models/a%2500b").await;
    assert_error(status, &body, 404, "not_found", "a%00b");
}

/// NUL in every string of every request body is a 4xx naming the field, and stores nothing.
#[tokio::test]
async fn nul_in_any_body_string_is_a_4xx_and_stores_nothing() {
    let app = spawn_app().await;
    app.create_model("m", "linear").await;
    let event = |field: &str, value: Value| {
        let mut e = json!({"entity_id": "e", "feedback_type": "explicit", "feedback_value": 1.0,
                           "features": {"x": 1.0}});
        match field.split_once('.') {
            Some((outer, inner)) => {
                e[outer] = json!({ inner: value });
            }
            None => e[field] = value,
        }
        e
    };
    let nul = "a\u{0}b";
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "POST",
            "/v1/models",
            json!({"name": nul, "kind": "linear"}),
            "name",
        ),
        (
            "POST",
            "/v1/models",
            json!({"name": "n", "kind": nul}),
            "kind",
        ),
        (
            "POST",
            "/v1/models",
            json!({"name": "n", "kind": "linear", "settings": {"optimizer": nul}}),
            "optimizer",
        ),
        (
            "POST",
            "/v1/models",
            json!({"name": "n", nul: "linear"}),
            "unknown field",
        ),
        (
            "POST",
            "/v1/models/m/feedback",
            event("entity_id", json!(nul)),
            "entity_id",
        ),
        (
            "POST",
            "/v1/models/m/feedback",
            event("feedback_type", json!(nul)),
            "feedback_type",
        ),
        (
            "POST",
            "/v1/models/m/feedback",
            event("id", json!(nul)),
            "id",
        ),
        (
            "POST",
            "/v1/models/m/feedback",
            event("timestamp", json!(nul)),
            "timestamp",
        ),
        (
            "POST",
            "/v1/models/m/feedback",
            event("features.a\u{0}", json!(1)),
            "features",
        ),
        (
            "POST",
            "/v1/models/m/feedback",
            event("metadata.k", json!(nul)),
            "metadata.k",
        ),
        (
            "POST",
            "/v1/models/m/feedback",
            event("metadata.k", json!([{"x": [nul]}])),
            "metadata.k",
        ),
        (
            "POST",
            "/v1/models/m/feedback",
            event("metadata.a\u{0}", json!(1)),
            "metadata",
        ),
        (
            "POST",
            "/v1/models/m/feedback",
            json!({"events": [event("entity_id", json!("ok")), event("feedback_type", json!(nul))]}),
            "events[1].feedback_type",
        ),
        (
            "POST",
            "/v1/models/m/feedback",
            json!({nul: 1}),
            "unknown field",
        ),
        (
            "POST",
            "/v1/models/m/predict",
            json!({"features": {nul: 1}}),
            "features",
        ),
        (
            "POST",
            "/v1/models/m/predict",
            json!({"features": {}, "entity_id": nul}),
            "entity_id",
        ),
        (
            "POST",
            "/v1/models/m/predict",
            json!({"instances": [{"features": {}, "entity_id": nul}]}),
            "instances[0].entity_id",
        ),
        (
            "POST",
            "/v1/models/m/snapshots",
            json!({"label": nul}),
            "label",
        ),
        (
            "POST",
            "/v1/models/m/rollback",
            json!({"snapshot": nul}),
            "snapshot",
        ),
        (
            "PUT",
            "/v1/models/m/snapshot-policy",
            json!({"keep": nul}),
            "keep",
        ),
    ];
    let before = table_digests(app.pool()).await;
    for (method, path, body, mentions) in cases {
        let (status, answer, _) = request(&app, method, path, Some(&body)).await;
        assert!(
            (400..500).contains(&status),
            "{method} {path} {body}: {status} {answer}"
        );
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(mentions),
            "{method} {path} {body}: {message:?} should name {mentions:?}"
        );
    }
    assert_eq!(table_digests(app.pool()).await, before);
}

/// Values that pass the service's own parsing but not PostgreSQL's types (SQLSTATE class 22,
/// here 22008 "timestamp out of range") are a 400 `invalid_value` with the database's words.
#[tokio::test]
async fn values_the_database_refuses_are_400_invalid_value() {
    let app = spawn_app().await;
    app.create_model("m", "linear").await;
    for path in [
        "/v1/models/m/parameters?at=-200000-01-01",
        "/v1/models/m/updates?since=-200000-01-01",
        "/v1/models/m/updates?until=-200000-01-01T00:00:00",
    ] {
        let (status, body) = app.get(path).await;
        assert_error(status, &body, 400, "invalid_value", "out of range");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("SQLSTATE 22"),
            "{path}: {body}"
        );
    }
}

/// A service whose pool is `settings`, over `db`, without the LISTEN connection.
async fn service_with_pool(db: &TestDb, settings: &ServicePool) -> (Service, PgPool) {
    let pool = olps::http::service_pool(&db.pool, settings);
    let config = ServingConfig {
        listen: false,
        version_check_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    // Without tokens: these tests are about the service's own pool, and the first request's
    // token lookup would take a connection from the pool they exhaust on purpose.
    let state = AppState::with_serving(pool.clone(), config)
        .with_access(olps::http::access::AccessConfig::no_auth());
    let service = Service::start_with(state).await;
    (service, pool)
}

#[tokio::test]
async fn an_exhausted_pool_is_a_503_with_retry_after() {
    let db = TestDb::new().await;
    let (service, pool) = service_with_pool(
        &db,
        &ServicePool {
            max_connections: 1,
            acquire_timeout: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await;
    // The one connection is briefly the service's own at start (its first version check): on a
    // loaded machine the first request can wait past 300 ms for it. Start from a working pool.
    let mut ready = service.get("/v1/models").await;
    for _ in 0..50 {
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = service.get("/v1/models").await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    let held = pool.acquire().await.unwrap();
    for (method, path) in [
        ("GET", "/v1/models"),
        ("GET", "/healthz"),
        ("POST", "/v1/models/m/feedback"),
    ] {
        let body = json!({"entity_id": "e", "feedback_type": "x", "feedback_value": 1});
        let (status, body, retry_after) = request(&service, method, path, Some(&body)).await;
        assert_eq!(status, 503, "{method} {path}: {body}");
        assert!(
            ["database_busy", "database_unavailable"]
                .contains(&body["error"]["code"].as_str().unwrap()),
            "{body}"
        );
        let seconds: u64 = retry_after.expect("Retry-After").parse().unwrap();
        assert!((1..=60).contains(&seconds));
    }
    let (status, body, _) = request(&service, "GET", "/v1/models/m", None).await;
    assert_error(status, &body, 503, "database_busy", "Retry-After");
    drop(held);
    // The held connections go back to the pool as they are dropped; on a loaded machine that
    // can take longer than one request's acquire timeout.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = service.get("/v1/models").await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pool did not recover within 10 s: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn statement_timeout_bounds_every_statement_of_the_service() {
    let db = TestDb::new().await;
    let (service, pool) = service_with_pool(
        &db,
        &ServicePool {
            // Short next to the request's own timeout, long enough that the test's other
            // statements (model creation, the final rollback) finish on a loaded machine.
            statement_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;
    let shown: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(shown, "2s");
    // The default applies to the service the CLI starts.
    let default = olps::http::service_pool(&db.pool, &ServicePool::default());
    let shown: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&default)
        .await
        .unwrap();
    assert_eq!(shown, "20s");
    default.close().await;

    let id = service.create_model("locked", "linear").await;
    // Another session holds the model's lock: the rollback's statement waits for it and is
    // cancelled by statement_timeout, not left hanging until the request's own timeout.
    let mut other = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM models WHERE model_id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *other)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (status, body, retry_after) = request(
        &service,
        "POST",
        "/v1/models/locked/rollback",
        Some(&json!({"to_version": 0})),
    )
    .await;
    assert_error(status, &body, 503, "statement_timeout", "statement_timeout");
    assert!(retry_after.is_some());
    assert!(started.elapsed() < Duration::from_secs(10));
    other.rollback().await.unwrap();
    let (status, body) = service
        .post("/v1/models/locked/rollback", &json!({"to_version": 0}))
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Installs a trigger on `table` that fails the first `failures` statements with `sqlstate`
/// (a sequence counts every attempt, committed or not).
async fn failing_trigger(pool: &PgPool, table: &str, sqlstate: &str, failures: i64) {
    for statement in [
        "CREATE SEQUENCE IF NOT EXISTS test_attempts".to_string(),
        format!(
            "CREATE OR REPLACE FUNCTION test_fail() RETURNS trigger AS $$
             BEGIN
                 IF nextval('test_attempts') <= {failures} THEN
                     RAISE EXCEPTION 'injected by the test' USING ERRCODE = '{sqlstate}';
                 END IF;
                 RETURN NULL;
             END $$ LANGUAGE plpgsql"
        ),
        format!("DROP TRIGGER IF EXISTS test_fail ON {table}"),
        format!(
            "CREATE TRIGGER test_fail BEFORE INSERT ON {table}
             FOR EACH STATEMENT EXECUTE FUNCTION test_fail()"
        ),
        "SELECT setval('test_attempts', 1, false)".to_string(),
    ] {
        sqlx::query(&statement).execute(pool).await.unwrap();
    }
}

async fn attempts(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT last_value FROM test_attempts")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn serialization_failures_and_deadlocks_are_retried_a_bounded_number_of_times() {
    let app = spawn_app().await;
    app.create_model("m", "linear").await;
    let event = json!({"id": "6f1d7c1e-3a3b-4d0c-9a55-0f2b8e1f4a10", "entity_id": "e",
                       "feedback_type": "explicit", "feedback_value": 1, "features": {"x": 1}});

    // Two serialization failures, then success: stored once.
    failing_trigger(app.pool(), "feedback_events", "40001", 2).await;
    let (status, body) = app.post("/v1/models/m/feedback", &event).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["new"], 1);
    assert_eq!(attempts(app.pool()).await, 3);
    assert_eq!(counts(app.pool()).await, (1, 1));

    // Deadlocks on every try: bounded, answered 503 with Retry-After, nothing stored.
    failing_trigger(app.pool(), "feedback_events", "40P01", i64::MAX).await;
    let mut other = event.clone();
    other["id"] = json!("0c7d5c56-2b1e-4f59-8a8b-5f0b3f9d2e11");
    let (status, body, retry_after) =
        request(&app, "POST", "/v1/models/m/feedback", Some(&other)).await;
    assert_error(
        status,
        &body,
        503,
        "database_conflict",
        "nothing was changed",
    );
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(attempts(app.pool()).await, i64::from(retry::ATTEMPTS));
    assert_eq!(counts(app.pool()).await, (1, 1));

    // The write transactions of the other routes are retried the same way.
    failing_trigger(app.pool(), "snapshots", "40P01", 1).await;
    let (status, body) = app
        .post(
            "/v1/models/m/snapshots",
            &json!({"label": "after-a-deadlock"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(attempts(app.pool()).await, 2);
    failing_trigger(app.pool(), "models", "40001", 1).await;
    let (status, body) = app
        .post("/v1/models", &json!({"name": "second", "kind": "logistic"}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(attempts(app.pool()).await, 2);
}

/// The `method` label of the request metrics takes standard methods only: anything else is
/// `other`, so clients cannot create time series at will.
#[tokio::test]
async fn unknown_methods_are_counted_as_other() {
    let app = spawn_app().await;
    for method in ["BREWCOFFEE", "PROPFIND", "get"] {
        let (status, body, _) = request(&app, method, "/v1/models", None).await;
        assert!((400..500).contains(&status), "{method}: {status} {body}");
    }
    let (status, _, _) = request(&app, "PATCH", "/v1/models", None).await;
    assert_eq!(status, 405);
    let text = app.text("/metrics").await;
    let methods: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("olps_http_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(methods.contains("other"), "{methods:?}");
    assert!(methods.contains("PATCH"), "{methods:?}");
    for m in &methods {
        assert!(
            [
                "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
                "other"
            ]
            .contains(m),
            "method label {m:?} in {methods:?}"
        );
    }
}

/// The document lists the answers every operation can give beyond its own: 400 (a NUL in the
/// URL, a value the database refuses) and 503 with Retry-After.
#[tokio::test]
async fn every_operation_documents_400_and_503() {
    let app = spawn_app().await;
    let (_, doc) = app.get("/openapi.json").await;
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            let responses = &operation["responses"];
            assert!(responses["400"].is_object(), "{method} {path}");
            if path != "/openapi.json" {
                assert!(responses["503"].is_object(), "{method} {path}");
            }
        }
    }
    assert!(operations >= 15, "{operations}");
    assert!(
        doc["paths"]["/v1/models"]["get"]["responses"]["503"]["headers"]["Retry-After"].is_object()
    );
}
