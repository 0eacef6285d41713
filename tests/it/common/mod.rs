//! Test harness: every test gets a fresh database of its own on a real PostgreSQL, dropped
//! afterwards. The server is, in order: DATABASE_URL; else a testcontainers PostgreSQL where Docker
//! runs; else a cluster from the local PostgreSQL binaries (kept under the temp dir and reused).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

static ADMIN_URL: OnceCell<String> = OnceCell::const_new();

async fn admin_url() -> String {
    ADMIN_URL
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("DATABASE_URL") {
                if !url.trim().is_empty() {
                    return url;
                }
            }
            if docker_available() {
                return start_container().await;
            }
            let base = std::env::temp_dir().join("olps-test-cluster");
            let cluster = tokio::task::spawn_blocking(move || {
                olps::embedded::ensure_cluster(&base)
            })
            .await
            .unwrap()
            .expect("no DATABASE_URL, no Docker, and no local PostgreSQL cluster could be started");
            cluster.url
        })
        .await
        .clone()
}

fn docker_available() -> bool {
    std::path::Path::new("/var/run/docker.sock").exists()
        && std::process::Command::new("docker")
            .arg("info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
}

async fn start_container() -> String {
    use testcontainers::runners::AsyncRunner;
    use testcontainers_modules::postgres::Postgres;
    let container = Postgres::default()
        .start()
        .await
        .expect("start PostgreSQL container");
    let port = container
        .get_host_port_ipv4(5432)
        .await
        .expect("container port");
    // The container lives as long as the test process (testcontainers' reaper removes it after).
    Box::leak(Box::new(container));
    format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres")
}

fn with_database(url: &str, name: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("database URL");
    parsed.set_path(&format!("/{name}"));
    parsed.to_string()
}

/// A fresh, migrated database, dropped when this value is dropped.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
    pub name: String,
    admin: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let db = TestDb::empty().await;
        olps::schema::migrate(&db.url).await.expect("migrate");
        db
    }

    /// A fresh database without the schema (for migration tests).
    pub async fn empty() -> TestDb {
        let admin = admin_url().await;
        let name = format!("olps_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin)
            .await
            .expect("connect to admin database");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("create test database");
        conn.close().await.ok();
        let url = with_database(&admin, &name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&url)
            .await
            .expect("connect to test database");
        TestDb {
            pool,
            url,
            name,
            admin,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // The test's runtime may be blocked in this drop: use a thread with its own runtime, and let
        // WITH (FORCE) end the pool's connections (closing the pool here would wait on that runtime).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                }
            });
        })
        .join();
    }
}

/// The service on port 0 over a fresh database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    pub db: TestDb,
}

pub async fn spawn_app() -> TestApp {
    let db = TestDb::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let state = olps::http::AppState::new(db.pool.clone());
    tokio::spawn(olps::http::serve(listener, state, shutdown.clone()));
    TestApp {
        addr,
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        shutdown,
        db,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .expect("request");
        decode(response).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{}", self.base, path))
            .json(body)
            .send()
            .await
            .expect("request");
        decode(response).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{}", self.base, path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        decode(response).await
    }

    /// Creates a model over HTTP and returns its UUID.
    pub async fn create_model(&self, name: &str, kind: &str) -> uuid::Uuid {
        let (status, body) = self
            .post(
                "/v1/models",
                &serde_json::json!({"name": name, "kind": kind}),
            )
            .await;
        assert_eq!(status, 201, "create model: {body}");
        body["model_id"].as_str().unwrap().parse().unwrap()
    }
}

async fn decode(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Row counts of the tables that feedback ingest writes.
pub async fn counts(pool: &PgPool) -> (i64, i64) {
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM feedback_events")
        .fetch_one(pool)
        .await
        .unwrap();
    let queue: i64 = sqlx::query_scalar("SELECT count(*) FROM feedback_queue")
        .fetch_one(pool)
        .await
        .unwrap();
    (events, queue)
}

// ---- Streams, the worker, and the invariants -------------------------------------------------

pub type Row = (Vec<(String, f64)>, f64);

/// The reference drift stream, a copy kept in the repository (tests/data/README.md).
pub const SEED_STREAM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/seed_stream.csv");

/// tests/data/seed_stream.csv: x0..x4 and y (sign flip at row 1000).
pub fn seed_stream() -> Vec<Row> {
    let text = std::fs::read_to_string(SEED_STREAM).expect("seed_stream.csv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|line| {
            let values: Vec<f64> = line.split(',').map(|v| v.parse().unwrap()).collect();
            let features = header[..header.len() - 1]
                .iter()
                .zip(&values)
                .map(|(name, v)| (name.to_string(), *v))
                .collect();
            (features, *values.last().unwrap())
        })
        .collect()
}

/// A deterministic sparse stream: `features` features per row from a pool of `pool` names.
pub fn sparse_stream(
    n: usize,
    features: usize,
    pool: usize,
    logistic: bool,
    seed: u64,
) -> Vec<Row> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let truth: Vec<f64> = (0..pool).map(|_| rng.gen_range(-1.0..1.0)).collect();
    (0..n)
        .map(|_| {
            let mut chosen = std::collections::BTreeMap::new();
            while chosen.len() < features {
                chosen.insert(rng.gen_range(0..pool), rng.gen_range(-2.0..2.0));
            }
            let score: f64 = chosen.iter().map(|(i, x)| truth[*i] * x).sum();
            let label = if logistic {
                if score > 0.0 {
                    1.0
                } else {
                    0.0
                }
            } else {
                score + rng.gen_range(-0.05..0.05)
            };
            let features = chosen
                .into_iter()
                .map(|(i, x)| (format!("f{i}"), x))
                .collect();
            (features, label)
        })
        .collect()
}

/// Inserts rows as explicit feedback with one statement per 5,000 rows, in order.
pub async fn insert_stream(pool: &PgPool, model: uuid::Uuid, rows: &[Row]) {
    for chunk in rows.chunks(5_000) {
        let events: Vec<olps::feedback::FeedbackEvent> = chunk
            .iter()
            .enumerate()
            .map(|(i, (features, label))| olps::feedback::FeedbackEvent {
                entity_id: format!("e{i}"),
                feedback_type: "explicit".into(),
                feedback_value: *label,
                confidence: 1.0,
                metadata: serde_json::json!({"features": features.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<String, Value>>()}),
                timestamp: None,
            })
            .collect();
        olps::feedback::insert(pool, model, &events).await.unwrap();
    }
}

pub async fn create_model(
    pool: &PgPool,
    name: &str,
    kind: olps::learner::ModelKind,
    settings: olps::learner::LearnerConfig,
) -> olps::models::Model {
    olps::models::create(
        pool,
        &olps::models::NewModel {
            name: name.into(),
            kind,
            settings,
        },
    )
    .await
    .unwrap()
}

/// Runs an in-process worker until the queue is empty.
pub async fn drain(pool: &PgPool, batch_size: i64) -> olps::worker::WorkerStats {
    let config = olps::worker::WorkerConfig {
        batch_size,
        poll_interval: Duration::from_millis(20),
        until_empty: true,
        ..Default::default()
    };
    olps::worker::Worker::new(pool.clone(), config)
        .run(CancellationToken::new())
        .await
        .unwrap()
}

/// The learner run in memory over the same rows in the same order.
pub fn learn_in_memory(model: &olps::models::Model, rows: &[Row]) -> olps::learner::Learner {
    let mut learner = olps::learner::Learner::new(model.kind, model.settings.clone());
    for (features, label) in rows {
        let example = olps::learner::Example::new(features.clone(), *label, 1.0).unwrap();
        learner.learn(&example);
    }
    learner
}

pub fn state_bits(s: &olps::learner::ParamState) -> [u64; 6] {
    [
        s.value.to_bits(),
        s.m.to_bits(),
        s.v.to_bits(),
        s.count as u64,
        s.mean.to_bits(),
        s.m2.to_bits(),
    ]
}

/// Asserts the stored parameters equal the in-memory learner's, bit for bit.
pub async fn assert_params_equal(
    pool: &PgPool,
    model_id: uuid::Uuid,
    expected: &olps::learner::Learner,
) {
    let stored = olps::params::load_all(pool, model_id).await.unwrap();
    assert_eq!(
        stored.len(),
        expected.params.len(),
        "parameter sets differ in size"
    );
    for (name, state) in &expected.params {
        let got = stored
            .get(name)
            .unwrap_or_else(|| panic!("parameter {name} missing"));
        assert_eq!(
            state_bits(got),
            state_bits(state),
            "parameter {name}: stored {got:?}, in memory {state:?}"
        );
    }
    let seen: i64 = sqlx::query_scalar("SELECT examples_seen FROM models WHERE model_id = $1")
        .bind(model_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(seen, expected.examples_seen);
}

/// Invariant 2: versions 1..=current without gaps, each history row's old_value is the previous
/// row's new_value, and current_value is the last new_value. Returns the current version.
pub async fn assert_linear_history(pool: &PgPool, model_id: uuid::Uuid) -> i64 {
    let current: i64 = sqlx::query_scalar("SELECT version FROM models WHERE model_id = $1")
        .bind(model_id)
        .fetch_one(pool)
        .await
        .unwrap();
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT model_version FROM model_versions WHERE model_id = $1 ORDER BY model_version",
    )
    .bind(model_id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        versions,
        (1..=current).collect::<Vec<_>>(),
        "version line has gaps or repeats"
    );
    let stray: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM parameter_updates WHERE model_id = $1 AND model_version NOT BETWEEN 1 AND $2",
    )
    .bind(model_id)
    .bind(current)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(stray, 0, "history rows outside the version line");
    let broken: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             SELECT old_value, lag(new_value) OVER w AS prev, row_number() OVER w AS rn
             FROM parameter_updates WHERE model_id = $1
             WINDOW w AS (PARTITION BY parameter_id ORDER BY model_version)
         ) t
         WHERE (rn = 1 AND old_value IS NOT NULL) OR (rn > 1 AND old_value IS DISTINCT FROM prev)",
    )
    .bind(model_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        broken, 0,
        "history rows whose old_value is not the previous new_value"
    );
    let mismatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM model_parameters p
         LEFT JOIN LATERAL (SELECT new_value, model_version FROM parameter_updates u
                            WHERE u.model_id = p.model_id AND u.parameter_id = p.parameter_id
                            ORDER BY model_version DESC LIMIT 1) last ON TRUE
         WHERE p.model_id = $1
           AND (last.new_value IS DISTINCT FROM p.current_value OR last.model_version IS DISTINCT FROM p.version)",
    )
    .bind(model_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        mismatched, 0,
        "current values that are not the last history row's new_value"
    );
    current
}
