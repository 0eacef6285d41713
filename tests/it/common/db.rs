//! Every test gets a fresh, migrated database of its own on a real PostgreSQL, dropped
//! afterwards. The server is, in order: DATABASE_URL; else a testcontainers PostgreSQL where
//! Docker runs; else a cluster from the local PostgreSQL binaries (kept under the temp dir and
//! reused). It is chosen once per test process: all the tests of the binary share it.
//!
//! When DATABASE_URL names a Citus coordinator (its database has the citus extension and worker
//! nodes), each test's database is made a Citus database of the same cluster: created on the
//! coordinator and on every worker node, with the extension in each and the nodes added, so
//! `olps migrate` distributes the schema in it (`.ci/run` runs the Citus suite this way).

use std::time::Duration;

use olps::learner::{LearnerConfig, ModelKind};
use olps::models::Model;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;
use uuid::Uuid;

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
    /// On Citus: the worker nodes' admin URLs, where the database was created too.
    citus_workers: Vec<String>,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let mut db = TestDb::empty().await;
        olps::schema::migrate(&db.url).await.expect("migrate");
        if db.is_citus() {
            // Connections opened before the migration lack the settings it gave the database.
            db.pool.close().await;
            db.pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(30))
                .connect(&db.url)
                .await
                .expect("reconnect to the test database");
        }
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
        let nodes = citus_nodes(&mut conn).await;
        if let Some(nodes) = &nodes {
            // One test database at a time joins the cluster: adding a node replays cluster-wide
            // objects (roles) on the worker, and two tests doing it at once failed CI with
            // "failure on connection marked as essential". The lock is the admin database's, so it
            // holds across test processes too; it is released with the session if a test panics.
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(CITUS_SETUP_LOCK)
                .execute(&mut conn)
                .await
                .expect("take the Citus setup lock");
            make_citus_database(&mut conn, &admin, &name, nodes).await;
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(CITUS_SETUP_LOCK)
                .execute(&mut conn)
                .await
                .expect("release the Citus setup lock");
        }
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
            citus_workers: nodes.map(|n| n.workers).unwrap_or_default(),
        }
    }

    /// Whether the tests run against a Citus coordinator (see the module's documentation).
    pub fn is_citus(&self) -> bool {
        !self.citus_workers.is_empty()
    }

    /// A fresh database holding one model of `kind` with the default settings.
    pub async fn with_model(name: &str, kind: ModelKind) -> (TestDb, Model) {
        let db = TestDb::new().await;
        let model = create_model(&db.pool, name, kind, LearnerConfig::default()).await;
        (db, model)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        let workers = self.citus_workers.clone();
        // The test's runtime may be blocked in this drop: use a thread with its own runtime, and let
        // WITH (FORCE) end the pool's connections (closing the pool here would wait on that runtime).
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                for server in std::iter::once(&admin).chain(&workers) {
                    if let Ok(mut conn) = PgConnection::connect(server).await {
                        let _ = sqlx::query(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .execute(&mut conn)
                        .await;
                    }
                }
            });
        })
        .join();
    }
}

pub async fn create_model(
    pool: &PgPool,
    name: &str,
    kind: ModelKind,
    settings: LearnerConfig,
) -> Model {
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

/// The model's current version.
pub async fn current_version(pool: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT version FROM models WHERE model_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
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

/// A Citus coordinator's own address and its worker nodes' admin URLs.
struct CitusNodes {
    coordinator: (String, i32),
    workers: Vec<String>,
}

/// The Citus nodes behind the admin connection, when it is a coordinator with worker nodes.
async fn citus_nodes(admin: &mut PgConnection) -> Option<CitusNodes> {
    let citus: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
            .fetch_one(&mut *admin)
            .await
            .unwrap();
    if !citus {
        return None;
    }
    let nodes: Vec<(String, i32, i32)> = sqlx::query_as(
        "SELECT nodename::text, nodeport, groupid FROM pg_dist_node
         WHERE noderole = 'primary' ORDER BY groupid",
    )
    .fetch_all(&mut *admin)
    .await
    .unwrap();
    let admin_url = url::Url::parse(&ADMIN_URL.get().cloned().unwrap()).unwrap();
    let coordinator = nodes
        .iter()
        .find(|n| n.2 == 0)
        .map(|n| (n.0.clone(), n.1))
        .expect("the Citus coordinator is in pg_dist_node (citus_set_coordinator_host)");
    let workers: Vec<String> = nodes
        .iter()
        .filter(|n| n.2 != 0)
        .map(|(host, port, _)| {
            let mut url = admin_url.clone();
            url.set_host(Some(host)).unwrap();
            url.set_port(Some(*port as u16)).unwrap();
            url.to_string()
        })
        .collect();
    assert!(
        !workers.is_empty(),
        "the Citus coordinator has no worker nodes"
    );
    Some(CitusNodes {
        coordinator,
        workers,
    })
}

/// Shards per distributed table in a test database.
const TEST_SHARD_COUNT: u32 = 4;

/// Advisory lock key that serialises test databases joining the Citus cluster ("olpscits").
const CITUS_SETUP_LOCK: i64 = 0x6f6c_7073_6369_7473;

/// Attempts at registering a worker node before the test gives up.
const ADD_NODE_ATTEMPTS: u32 = 3;

/// Makes `name`, just created on the coordinator, a Citus database over the same nodes: created
/// on each worker, the extension everywhere, the coordinator and the workers registered.
async fn make_citus_database(
    admin_conn: &mut PgConnection,
    admin: &str,
    name: &str,
    nodes: &CitusNodes,
) {
    for worker in &nodes.workers {
        let mut conn = PgConnection::connect(worker)
            .await
            .expect("connect to a Citus worker");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("create the test database on a Citus worker");
        conn.close().await.ok();
        let mut conn = PgConnection::connect(&with_database(worker, name))
            .await
            .unwrap();
        sqlx::query("CREATE EXTENSION citus")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.ok();
    }
    // Four shards per table instead of Citus's 32: distributing the schema took about 18 s per
    // test database, and a test's few models need no more (two shards on each worker node).
    sqlx::query(&format!(
        "ALTER DATABASE \"{name}\" SET citus.shard_count = {TEST_SHARD_COUNT}"
    ))
    .execute(&mut *admin_conn)
    .await
    .unwrap();
    let mut conn = PgConnection::connect(&with_database(admin, name))
        .await
        .unwrap();
    sqlx::query("CREATE EXTENSION citus")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("SELECT citus_set_coordinator_host($1, $2)")
        .bind(&nodes.coordinator.0)
        .bind(nodes.coordinator.1)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    for worker in &nodes.workers {
        let url = url::Url::parse(worker).unwrap();
        add_worker_node(
            &with_database(admin, name),
            url.host_str().unwrap(),
            url.port().unwrap_or(5432) as i32,
        )
        .await;
    }
}

/// Registers a worker node in the test database. Citus reports a failure on the worker only as
/// "failure on connection marked as essential" (its cause goes to the worker's log), and a second
/// try on a new session is what Citus's issue 7830 found to work, so a failed add is retried a
/// few times; the add is one transaction, so a failed one leaves nothing behind.
async fn add_worker_node(database: &str, host: &str, port: i32) {
    let mut attempt = 1;
    loop {
        let mut conn = PgConnection::connect(database).await.unwrap();
        let added = sqlx::query("SELECT citus_add_node($1, $2)")
            .bind(host)
            .bind(port)
            .execute(&mut conn)
            .await;
        conn.close().await.ok();
        match added {
            Ok(_) => return,
            Err(error) if attempt < ADD_NODE_ATTEMPTS => {
                eprintln!("citus_add_node({host}, {port}) failed (attempt {attempt}): {error}");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            Err(error) => panic!(
                "add the worker node {host}:{port} to the test database after {attempt} attempts: {error}"
            ),
        }
    }
}
