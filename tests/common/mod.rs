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
    let state = olps::http::AppState {
        pool: db.pool.clone(),
    };
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
