//! API tokens over HTTP and the command line: every route's 401/403/2xx for every scope (the
//! matrix), tokens limited to some models, expiry, revocation (at once on the revoking service,
//! within the cache period elsewhere), the cache itself, `--no-auth` on loopback only, and the
//! audit trail.

use std::time::{Duration, Instant};

use olps::auth::{Principal, Scope};
use olps::http::access::{AccessConfig, Need, ROUTES};
use olps::http::AppState;
use olps::learner::{LearnerConfig, ModelKind};
use olps::serving::ServingConfig;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::common::*;

/// A request with an optional bearer secret, by a client without default headers.
async fn call(
    base: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let client = reqwest::Client::new();
    let url = format!("{base}{path}");
    let mut request = match method {
        "GET" => client.get(&url),
        "POST" => client.post(&url),
        "PUT" => client.put(&url),
        "PATCH" => client.patch(&url),
        "DELETE" => client.delete(&url),
        other => panic!("method {other}"),
    };
    if let Some(secret) = bearer {
        request = request.bearer_auth(secret);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("request");
    let headers = response.headers().clone();
    let (status, body) = decode(response).await;
    (status, body, headers)
}

fn assert_error(status: u16, body: &Value, want: u16, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// A model with one learned version, a labelled snapshot, and what the matrix needs.
struct Fixture {
    model: Uuid,
}

async fn fixture(pool: &PgPool, name: &str) -> Fixture {
    let model = create_model(pool, name, ModelKind::Logistic, LearnerConfig::default()).await;
    let rows = sparse_stream(40, 3, 10, true, 5);
    insert_stream(pool, model.model_id, &rows).await;
    drain(pool, 100).await;
    committed::create_snapshot(pool, model.model_id, Some("base"))
        .await
        .unwrap();
    Fixture {
        model: model.model_id,
    }
}

/// A model that can be the fixture's challenger.
async fn challenger(pool: &PgPool, name: &str) -> olps::models::Model {
    create_model(pool, name, ModelKind::Logistic, LearnerConfig::default()).await
}

/// One valid request for a route (a fresh snapshot or token where the route consumes one), and
/// the success status it answers.
async fn valid_request(
    pool: &PgPool,
    fx: &Fixture,
    method: &str,
    template: &str,
) -> (String, Option<Value>, u16) {
    let m = fx.model.to_string();
    let path = template.replace("{model}", &m);
    let unique = unique_name("x");
    match (method, template) {
        ("GET", "/healthz" | "/metrics" | "/openapi.json") => (path, None, 200),
        ("POST", "/v1/models") => (path, Some(json!({"name": unique, "kind": "linear"})), 201),
        ("POST", "/v1/models/{model}/feedback") => (
            path,
            Some(
                json!({"entity_id": "e1", "feedback_type": "explicit", "feedback_value": 1.0,
                        "features": {"f1": 1.0}}),
            ),
            202,
        ),
        ("POST", "/v1/models/{model}/predict") => {
            (path, Some(json!({"features": {"f1": 0.5}})), 200)
        }
        ("POST", "/v1/models/{model}/snapshots") => (path, Some(json!({})), 201),
        ("GET", "/v1/models/{model}/snapshots/{snapshot}") => {
            (path.replace("{snapshot}", "base"), None, 200)
        }
        ("DELETE", "/v1/models/{model}/snapshots/{snapshot}") => {
            let s = committed::create_snapshot(pool, fx.model, Some(&unique))
                .await
                .unwrap();
            (
                path.replace("{snapshot}", &s.snapshot_id.to_string()),
                None,
                200,
            )
        }
        ("PUT", "/v1/models/{model}/snapshot-policy") => (
            path,
            Some(json!({"every_versions": null, "every_minutes": null, "keep": null})),
            200,
        ),
        ("PATCH", "/v1/models/{model}") => (
            path,
            Some(json!({"settings": {"learning_rate": 0.05}})),
            200,
        ),
        ("POST", "/v1/models/{model}/rollback") => (path, Some(json!({"to_version": 1})), 200),
        ("POST", "/v1/models/{model}/resume") => (path, None, 200),
        // A fresh challenger each time (a model has one champion).
        ("POST", "/v1/models/{model}/challengers") => {
            challenger(pool, &unique).await;
            (path, Some(json!({"challenger": unique})), 201)
        }
        (
            "DELETE" | "POST",
            "/v1/models/{model}/challengers/{challenger}"
            | "/v1/models/{model}/challengers/{challenger}/promote",
        ) => {
            let challenger = challenger(pool, &unique).await;
            let champion = olps::models::find(pool, &m).await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            olps::shadow::links::add(&mut tx, &champion, &challenger, "test")
                .await
                .unwrap();
            tx.commit().await.unwrap();
            (path.replace("{challenger}", &unique), None, 200)
        }
        ("POST", "/v1/tokens") => (path, Some(json!({"name": unique, "scopes": ["read"]})), 201),
        ("DELETE", "/v1/tokens/{token}") => {
            let secret = token_with(pool, &["read"], &[]).await;
            let id: Uuid =
                sqlx::query_scalar("SELECT token_id FROM api_tokens WHERE token_hash = $1")
                    .bind(olps::auth::tokens::hash(&secret).as_slice())
                    .fetch_one(pool)
                    .await
                    .unwrap();
            (path.replace("{token}", &id.to_string()), None, 200)
        }
        ("GET", _) => (path, None, 200),
        other => panic!("no valid request known for {other:?}: add one to this matrix"),
    }
}

#[tokio::test]
async fn scope_by_route_matrix() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let fx = fixture(pool, "matrix").await;
    let service = Service::start(pool, ServingConfig::default()).await;

    // Every documented operation is in the access table, and every table entry is served.
    let (status, doc) = service.get("/openapi.json").await;
    assert_eq!(status, 200);
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    for (method, path) in &documented {
        assert!(
            olps::http::access::lookup(method, path).is_some(),
            "{method} {path} is served but missing from access::ROUTES"
        );
    }
    for route in ROUTES {
        assert!(
            documented.contains(&(route.method.to_string(), route.path.to_string())),
            "{} {} is in access::ROUTES but not served",
            route.method,
            route.path
        );
    }

    let scopes = [
        Scope::Predict,
        Scope::Feedback,
        Scope::Read,
        Scope::Write,
        Scope::Admin,
    ];
    let mut secrets = Vec::new();
    for scope in scopes {
        secrets.push((scope, token_with(pool, &[scope.as_str()], &[]).await));
    }
    let bad = olps::auth::tokens::generate_secret(); // well-formed, never stored
    let mut checked = 0;
    for route in ROUTES {
        let needed = match route.need {
            Need::Open | Need::Metrics | Need::OpenApi => None,
            Need::Scope(s) | Need::AllModels(s) => Some(s),
        };
        // Without a token, and with a bad one.
        for bearer in [None, Some(bad.as_str()), Some("not-a-token")] {
            let (path, body, ok) = valid_request(pool, &fx, route.method, route.path).await;
            let (status, answer, headers) =
                call(&service.base, route.method, &path, bearer, body.as_ref()).await;
            match needed {
                None => assert_eq!(status, ok, "{} {path}: {answer}", route.method),
                Some(_) => {
                    assert_error(status, &answer, 401, "unauthorized");
                    assert!(
                        headers
                            .get("www-authenticate")
                            .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
                        "{} {path}: no WWW-Authenticate",
                        route.method
                    );
                }
            }
            checked += 1;
        }
        // Each scope alone: the route's own scope (or admin) gets through, any other is 403.
        for (scope, secret) in &secrets {
            let (path, body, ok) = valid_request(pool, &fx, route.method, route.path).await;
            let (status, answer, _) = call(
                &service.base,
                route.method,
                &path,
                Some(secret),
                body.as_ref(),
            )
            .await;
            let allowed = needed.is_none_or(|n| *scope == n || *scope == Scope::Admin);
            if allowed {
                assert_eq!(
                    status, ok,
                    "{} {path} with a {scope} token: {answer}",
                    route.method
                );
            } else {
                assert_error(status, &answer, 403, "forbidden");
                assert!(
                    answer["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains(needed.unwrap().as_str()),
                    "the message names the scope needed: {answer}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, ROUTES.len() * 8);
}

#[tokio::test]
async fn a_token_limited_to_some_models_sees_only_those() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let mine = fixture(pool, "mine").await;
    let theirs = fixture(pool, "theirs").await;
    let service = Service::start(pool, ServingConfig::default()).await;
    let secret = token_with(pool, &["predict", "read", "admin"], &["mine"]).await;
    let base = &service.base;

    // Listing: only its model.
    let (status, list, _) = call(base, "GET", "/v1/models", Some(&secret), None).await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mine"]);

    // Its model, by name and by UUID: served.
    for key in ["mine".to_string(), mine.model.to_string()] {
        let (status, body, _) = call(
            base,
            "GET",
            &format!("/v1/models/{key}"),
            Some(&secret),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (status, body, _) = call(
            base,
            "POST",
            &format!("/v1/models/{key}/predict"),
            Some(&secret),
            Some(&json!({"features": {"f1": 1}})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // Another model, by name and UUID, on every kind of route: the 404 of a model that does not
    // exist, word for word (modulo the key).
    let (_, missing, _) = call(base, "GET", "/v1/models/nothing-here", Some(&secret), None).await;
    for key in ["theirs".to_string(), theirs.model.to_string()] {
        for (method, path, body) in [
            ("GET", format!("/v1/models/{key}"), None),
            ("GET", format!("/v1/models/{key}/parameters"), None),
            (
                "POST",
                format!("/v1/models/{key}/predict"),
                Some(json!({"features": {"f1": 1}})),
            ),
            (
                "POST",
                format!("/v1/models/{key}/rollback"),
                Some(json!({"to_version": 0})),
            ),
        ] {
            let (status, answer, _) = call(base, method, &path, Some(&secret), body.as_ref()).await;
            assert_error(status, &answer, 404, "not_found");
            assert_eq!(
                answer["error"]["message"]
                    .as_str()
                    .unwrap()
                    .replace(&key, "K"),
                missing["error"]["message"]
                    .as_str()
                    .unwrap()
                    .replace("nothing-here", "K"),
                "{method} {path}"
            );
        }
    }
    // Nothing was rolled back on their model.
    assert_eq!(current_version(pool, theirs.model).await, 1);
    // Routes over every model: 403, even with admin.
    let (status, body, _) = call(
        base,
        "POST",
        "/v1/models",
        Some(&secret),
        Some(&json!({"name": "new", "kind": "linear"})),
    )
    .await;
    assert_error(status, &body, 403, "forbidden");
    let (status, body, _) = call(base, "GET", "/v1/tokens", Some(&secret), None).await;
    assert_error(status, &body, 403, "forbidden");
}

async fn token_id(pool: &PgPool, secret: &str) -> Uuid {
    sqlx::query_scalar("SELECT token_id FROM api_tokens WHERE token_hash = $1")
        .bind(olps::auth::tokens::hash(secret).as_slice())
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn expired_and_revoked_tokens_are_refused() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    fixture(pool, "m").await;
    let service = Service::start(pool, ServingConfig::default()).await;
    let base = &service.base;

    // Expired before its first use.
    let old = token_with(pool, &["read"], &[]).await;
    sqlx::query(
        "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE token_id = $1",
    )
    .bind(token_id(pool, &old).await)
    .execute(pool)
    .await
    .unwrap();
    let (status, body, _) = call(base, "GET", "/v1/models", Some(&old), None).await;
    assert_error(status, &body, 401, "unauthorized");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    // Expiring while cached: refused at its expiry, not at the end of the cache period.
    let created = olps::auth::tokens::create(
        pool,
        &olps::auth::tokens::NewToken {
            name: "short".into(),
            scopes: olps::auth::Scopes::parse(&["read"]).unwrap(),
            models: vec![],
            expires_in: Some(chrono::Duration::seconds(2)),
        },
        &Principal::cli(),
    )
    .await
    .unwrap();
    let (status, _, _) = call(base, "GET", "/v1/models", Some(&created.secret), None).await;
    assert_eq!(status, 200);
    let expires = created.info.expires_at.unwrap();
    tokio::time::sleep((expires - chrono::Utc::now()).to_std().unwrap_or_default()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, body, _) = call(base, "GET", "/v1/models", Some(&created.secret), None).await;
    assert_error(status, &body, 401, "unauthorized");

    // Revoked through this service: refused at once, although it was cached.
    let admin = service.token.clone().unwrap();
    let victim = token_with(pool, &["read"], &[]).await;
    let (status, _, _) = call(base, "GET", "/v1/models", Some(&victim), None).await;
    assert_eq!(status, 200);
    let id = token_id(pool, &victim).await;
    let (status, body, _) = call(
        base,
        "DELETE",
        &format!("/v1/tokens/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"]["status"], "revoked", "{body}");
    assert!(body["revoked"].get("secret").is_none() && body["revoked"].get("token_hash").is_none());
    let (status, body, _) = call(base, "GET", "/v1/models", Some(&victim), None).await;
    assert_error(status, &body, 401, "unauthorized");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    // Revoking again is fine; listing shows it only on request.
    let (status, _, _) = call(
        base,
        "DELETE",
        &format!("/v1/tokens/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (_, list, _) = call(base, "GET", "/v1/tokens", Some(&admin), None).await;
    assert!(!list.to_string().contains(&id.to_string()), "{list}");
    let (_, list, _) = call(
        base,
        "GET",
        "/v1/tokens?include_revoked=true",
        Some(&admin),
        None,
    )
    .await;
    assert!(list.to_string().contains(&id.to_string()), "{list}");
    assert!(
        !list.to_string().contains(&victim[5..]),
        "a secret in a listing: {list}"
    );
}

#[tokio::test]
async fn verified_tokens_are_cached_and_a_revocation_elsewhere_lands_within_the_period() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    fixture(pool, "m").await;

    // A long period: after the first check, requests do not go to the database at all — a
    // revocation written straight to the database is not seen, and last_used_at stays put.
    let slow = Service::start_with(
        AppState::with_serving(pool.clone(), ServingConfig::default()).with_access(AccessConfig {
            token_cache: Duration::from_secs(3600),
            ..AccessConfig::default()
        }),
    )
    .await;
    let secret = token_with(pool, &["predict", "read"], &[]).await;
    let id = token_id(pool, &secret).await;
    let body = json!({"features": {"f1": 1.0}});
    let (status, _, _) = call(
        &slow.base,
        "POST",
        "/v1/models/m/predict",
        Some(&secret),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200);
    let first_use: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT last_used_at FROM api_tokens WHERE token_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(
        first_use.is_some(),
        "the check against the database records the use"
    );
    olps::auth::tokens::revoke(pool, &id.to_string(), &Principal::cli())
        .await
        .unwrap();
    for _ in 0..20 {
        let (status, _, _) = call(
            &slow.base,
            "POST",
            "/v1/models/m/predict",
            Some(&secret),
            Some(&body),
        )
        .await;
        assert_eq!(status, 200, "served from the token cache");
    }
    let later: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT last_used_at FROM api_tokens WHERE token_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(later, first_use, "no database write per request");

    // A one-second period: the revocation lands within it.
    let quick = Service::start_with(
        AppState::with_serving(pool.clone(), ServingConfig::default()).with_access(AccessConfig {
            token_cache: Duration::from_secs(1),
            ..AccessConfig::default()
        }),
    )
    .await;
    let secret = token_with(pool, &["read"], &[]).await;
    let (status, _, _) = call(&quick.base, "GET", "/v1/models", Some(&secret), None).await;
    assert_eq!(status, 200);
    olps::auth::tokens::revoke(
        pool,
        &token_id(pool, &secret).await.to_string(),
        &Principal::cli(),
    )
    .await
    .unwrap();
    let revoked_at = Instant::now();
    loop {
        let (status, _, _) = call(&quick.base, "GET", "/v1/models", Some(&secret), None).await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        // The period, or, when the recheck is slower than STALE_PATIENCE on a loaded machine,
        // the stale answer until UNREACHABLE_PAUSE has passed too (src/auth/cache.rs).
        assert!(
            revoked_at.elapsed() < Duration::from_millis(3000),
            "still accepted {:?} after the revocation",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_and_openapi_are_open_unless_protected() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let open = Service::start(pool, ServingConfig::default()).await;
    for path in ["/healthz", "/metrics", "/openapi.json"] {
        let (status, _, _) = call(&open.base, "GET", path, None, None).await;
        assert_eq!(status, 200, "{path}");
    }
    let closed = Service::start_with(
        AppState::with_serving(pool.clone(), ServingConfig::default()).with_access(AccessConfig {
            protect_metrics: true,
            protect_openapi: true,
            ..AccessConfig::default()
        }),
    )
    .await;
    let (status, _, _) = call(&closed.base, "GET", "/healthz", None, None).await;
    assert_eq!(status, 200, "/healthz stays open");
    let read = token_with(pool, &["read"], &[]).await;
    let predict = token_with(pool, &["predict"], &[]).await;
    for path in ["/metrics", "/openapi.json"] {
        let (status, body, _) = call(&closed.base, "GET", path, None, None).await;
        assert_error(status, &body, 401, "unauthorized");
        let (status, body, _) = call(&closed.base, "GET", path, Some(&predict), None).await;
        assert_error(status, &body, 403, "forbidden");
        let (status, _, _) = call(&closed.base, "GET", path, Some(&read), None).await;
        assert_eq!(status, 200, "{path}");
    }
    // The document declares the scheme and the 401/403 answers.
    let (_, doc, _) = call(&open.base, "GET", "/openapi.json", None, None).await;
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let rollback = &doc["paths"]["/v1/models/{model}/rollback"]["post"];
    assert_eq!(rollback["security"][0]["bearer"][0], "admin", "{rollback}");
    assert!(rollback["responses"]["401"].is_object() && rollback["responses"]["403"].is_object());
    assert!(doc["paths"]["/healthz"]["get"]["security"].is_null());
}

#[tokio::test]
async fn no_auth_is_refused_off_loopback() {
    let db = TestDb::new().await;
    // The library refuses to serve it on a wildcard address...
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let state = AppState::new(db.pool.clone()).with_access(AccessConfig::no_auth());
    let err = olps::http::serve(listener, state, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    // ...and so do `olps serve` and `olps up`, before touching anything.
    let cli = Cli::new(&db.url);
    for command in ["serve", "up"] {
        let err = cli
            .fails(&format!("{command} --no-auth --listen 0.0.0.0:0"))
            .await;
        assert!(
            err.contains("--no-auth") && err.contains("loopback"),
            "{err}"
        );
    }
    // On loopback it serves every route without a token, and audits as no-auth.
    let service =
        Service::start_with(AppState::new(db.pool.clone()).with_access(AccessConfig::no_auth()))
            .await;
    let id = service.create_model("free", "linear").await;
    let (status, body, _) = call(
        &service.base,
        "POST",
        &format!("/v1/models/{id}/snapshots"),
        None,
        Some(&json!({"label": "s"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let actors: Vec<String> = sqlx::query_scalar("SELECT actor FROM audit_log ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(actors, ["no-auth", "no-auth"]);
}

/// action, actor, token_id, token_name, status, details
type AuditRow = (
    String,
    String,
    Option<Uuid>,
    Option<String>,
    Option<i32>,
    Option<Value>,
);

#[tokio::test]
async fn state_changing_requests_are_audited_with_their_token() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let fx = fixture(pool, "audited").await;
    let service = Service::start(pool, ServingConfig::default()).await;
    let base = &service.base;
    let secret = token_with(pool, &["admin"], &[]).await;
    let id = token_id(pool, &secret).await;
    let name: String = sqlx::query_scalar("SELECT name FROM api_tokens WHERE token_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    let m = fx.model;
    let requests: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            format!("/v1/models/{m}/snapshots"),
            Some(json!({"label": "s1"})),
        ),
        (
            "PUT",
            format!("/v1/models/{m}/snapshot-policy"),
            Some(json!({"every_versions": 5, "every_minutes": null, "keep": 3})),
        ),
        (
            "POST",
            format!("/v1/models/{m}/rollback"),
            Some(json!({"to_version": 0})),
        ),
        ("POST", format!("/v1/models/{m}/resume"), None),
        ("DELETE", format!("/v1/models/{m}/snapshots/s1"), None),
        (
            "POST",
            "/v1/tokens".into(),
            Some(json!({"name": "made", "scopes": ["predict"]})),
        ),
        ("DELETE", "/v1/tokens/made".into(), None),
        (
            "POST",
            "/v1/models".into(),
            Some(json!({"name": "new-model", "kind": "linear"})),
        ),
        // A failed attempt is recorded too.
        (
            "POST",
            format!("/v1/models/{m}/rollback"),
            Some(json!({"to_version": 99})),
        ),
        // Reads are not.
        ("GET", format!("/v1/models/{m}/parameters"), None),
    ];
    let mut rollback_version = 0;
    let mut made = String::new();
    for (method, path, body) in &requests {
        let (status, answer, _) = call(base, method, path, Some(&secret), body.as_ref()).await;
        if path.ends_with("rollback") && status == 200 {
            rollback_version = answer["version"].as_i64().unwrap();
        }
        if *path == "/v1/tokens" {
            made = answer["secret"].as_str().unwrap().to_string();
            assert!(made.starts_with("olps_"), "{answer}");
        }
    }
    let rows: Vec<AuditRow> = sqlx::query_as(
        "SELECT action, actor, token_id, token_name, status, details FROM audit_log ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let actions: Vec<(&str, i32)> = rows.iter().map(|r| (r.0.as_str(), r.4.unwrap())).collect();
    assert_eq!(
        actions,
        [
            ("snapshot.create", 201),
            ("snapshot-policy.set", 200),
            ("rollback", 200),
            ("model.resume", 200),
            ("snapshot.delete", 200),
            ("token.create", 201),
            ("token.revoke", 200),
            ("model.create", 201),
            ("rollback", 404),
        ]
    );
    for row in &rows {
        assert_eq!(row.1, "token");
        assert_eq!(row.2, Some(id), "{row:?}");
        assert_eq!(row.3.as_deref(), Some(name.as_str()));
        let details = row.5.as_ref().unwrap().to_string();
        assert!(
            !details.contains(&made[5..]) && !details.contains(&secret[5..]),
            "a secret in the audit log: {row:?}"
        );
    }
    // The rollback's version names the token.
    let source: String = sqlx::query_scalar(
        "SELECT source FROM model_versions WHERE model_id = $1 AND model_version = $2",
    )
    .bind(m)
    .bind(rollback_version)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(source, format!("rollback by token {name} ({id})"));
    let history_sources: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT source FROM parameter_updates WHERE model_id = $1 AND model_version = $2",
    )
    .bind(m)
    .bind(rollback_version)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(history_sources, vec![source]);
}

#[tokio::test]
async fn token_commands_and_serve_with_tokens() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    create_model(
        pool,
        "cli-model",
        ModelKind::Linear,
        LearnerConfig::default(),
    )
    .await;
    let cli = Cli::new(&db.url);

    // Bad input is refused before anything is stored.
    let err = cli.fails("token create --name x --scope everything").await;
    assert!(err.contains("unknown scope"), "{err}");
    let err = cli
        .fails("token create --name x --scope read --expires-in soon")
        .await;
    assert!(err.contains("duration"), "{err}");
    let err = cli
        .fails("token create --name x --scope read --model nope")
        .await;
    assert!(err.contains("not found"), "{err}");

    let out = cli
        .ok("token create --name reader --scope read,predict --model cli-model --expires-in 1d")
        .await;
    let secret = out.lines().last().unwrap().trim().to_string();
    assert!(olps::auth::tokens::looks_like_secret(&secret), "{out}");
    let stored: (Vec<u8>, Vec<String>, Option<Vec<Uuid>>, bool) = sqlx::query_as(
        "SELECT token_hash, scopes, model_ids, expires_at BETWEEN now() + interval '23 hours' AND now() + interval '25 hours'
         FROM api_tokens WHERE name = 'reader'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        stored.0,
        olps::auth::tokens::hash(&secret).to_vec(),
        "only the hash is stored"
    );
    assert_eq!(stored.1, ["predict", "read"]);
    assert_eq!(stored.2.map(|m| m.len()), Some(1));
    assert!(stored.3, "expires in a day");
    let err = cli.fails("token create --name reader --scope read").await;
    assert!(err.contains("in force already"), "{err}");

    let listed = cli.ok("token list --format json").await;
    assert!(
        listed.contains("reader") && !listed.contains(&secret[5..]),
        "{listed}"
    );

    // `olps serve` requires tokens by default; --token-cache-secs 0 checks every request.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = olps_command(
        None,
        Some(&db.url),
        &["serve", "--listen", &addr, "--token-cache-secs", "0"],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let base = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while call_ok(&base).await.is_none() {
        assert!(Instant::now() < deadline, "olps serve did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body, _) = call(&base, "GET", "/v1/models", None, None).await;
    assert_error(status, &body, 401, "unauthorized");
    let (status, body, _) = call(&base, "GET", "/v1/models", Some(&secret), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["models"].as_array().unwrap().len(), 1);
    let out = cli.ok("token revoke reader").await;
    assert!(out.contains("revoked"), "{out}");
    let (status, body, _) = call(&base, "GET", "/v1/models", Some(&secret), None).await;
    assert_error(status, &body, 401, "unauthorized");
    child.kill().unwrap();
    child.wait().unwrap();

    let listed = cli.ok("token list --all").await;
    assert!(listed.contains("revoked"), "{listed}");
    let actions: Vec<(String, String)> =
        sqlx::query_as("SELECT action, actor FROM audit_log ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        actions,
        [
            ("token.create".to_string(), "cli".to_string()),
            ("token.revoke".to_string(), "cli".to_string())
        ]
    );
}

async fn call_ok(base: &str) -> Option<()> {
    let response = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    (response.status() == 200).then_some(())
}

#[tokio::test]
async fn cli_rollbacks_are_audited_and_named_in_the_version() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let fx = fixture(pool, "cli-rolled").await;
    let cli = Cli::new(&db.url);
    let out = cli.ok("rollback --model cli-rolled --to-version 0").await;
    let version: i64 = out.lines().last().unwrap().trim().parse().unwrap();
    let source: String = sqlx::query_scalar(
        "SELECT source FROM model_versions WHERE model_id = $1 AND model_version = $2",
    )
    .bind(fx.model)
    .bind(version)
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(source.starts_with("rollback by cli ("), "{source}");
    let (action, actor, model): (String, String, Option<Uuid>) =
        sqlx::query_as("SELECT action, actor, model_id FROM audit_log")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(
        (action.as_str(), actor.as_str(), model),
        ("rollback", "cli", Some(fx.model))
    );
}

#[test]
fn compose_runs_the_service_and_worker_as_their_roles_with_secrets_from_an_env_file() {
    // No Docker engine here: docker-compose.yml is checked by reading it.
    let root = env!("CARGO_MANIFEST_DIR");
    let compose = std::fs::read_to_string(format!("{root}/docker-compose.yml")).unwrap();
    // The lines of one service (indented under its two-space name line).
    let service = |name: &str| -> String {
        let mut out = String::new();
        let mut inside = false;
        for line in compose.lines() {
            if line.starts_with("  ") && !line.starts_with("   ") {
                inside = line.trim_end() == format!("  {name}:");
                continue;
            }
            if !line.starts_with(' ') && !line.is_empty() {
                inside = false;
            }
            if inside {
                out.push_str(line);
                out.push('\n');
            }
        }
        assert!(!out.is_empty(), "no service {name}");
        out
    };
    let serve = service("serve");
    let worker = service("worker");
    assert!(
        serve.contains("DATABASE_URL: postgres://olps_serve_login:${OLPS_SERVICE_PASSWORD:?"),
        "{serve}"
    );
    assert!(
        worker.contains("DATABASE_URL: postgres://olps_worker_login:${OLPS_WORKER_PASSWORD:?"),
        "{worker}"
    );
    // Tokens required: the command has no --no-auth.
    assert!(
        serve.contains("command: [\"serve\", \"--listen\", \"0.0.0.0:8080\"]"),
        "{serve}"
    );
    // Every published port is on loopback.
    for line in compose
        .lines()
        .filter(|l| l.trim_start().starts_with("- \"") && l.contains(":") && l.contains("PORT"))
    {
        assert!(
            line.contains("\"127.0.0.1:"),
            "published beyond loopback: {line}"
        );
    }
    assert!(
        serve.contains("\"127.0.0.1:${OLPS_HTTP_PORT:-8080}:8080\""),
        "{serve}"
    );
    // No secret is written in the file: every password is a required variable of the env file.
    assert!(
        !compose.contains("POSTGRES_PASSWORD: olps"),
        "a literal password"
    );
    for secret in [
        "POSTGRES_PASSWORD",
        "OLPS_SERVICE_PASSWORD",
        "OLPS_WORKER_PASSWORD",
    ] {
        assert!(
            compose.contains(&format!("${{{secret}:?")),
            "{secret} is not required from .env"
        );
    }
    let example = std::fs::read_to_string(format!("{root}/.env.example")).unwrap();
    for secret in [
        "POSTGRES_PASSWORD=",
        "OLPS_SERVICE_PASSWORD=",
        "OLPS_WORKER_PASSWORD=",
    ] {
        assert!(
            example.contains(secret),
            "{secret} missing from .env.example"
        );
    }
    let ignored = std::fs::read_to_string(format!("{root}/.gitignore")).unwrap();
    assert!(
        ignored.lines().any(|l| l.trim() == "/.env"),
        ".env must not be committed"
    );
    // The roles step makes the LOGIN roles members of the group roles.
    let roles = std::fs::read_to_string(format!("{root}/deploy/compose-roles.sql")).unwrap();
    assert!(roles.contains("CREATE ROLE olps_serve_login LOGIN IN ROLE olps_service"));
    assert!(roles.contains("CREATE ROLE olps_worker_login LOGIN IN ROLE olps_worker"));
}
