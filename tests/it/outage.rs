//! PostgreSQL restarted (`pg_ctl restart -m fast`), and stopped for 10 s, under sustained load
//! (issue 15), on a private cluster each test starts for itself: the shared server is never
//! touched.
//!
//! The load, from before the outage to after it: HTTP feedback (batches of 5 events, each with
//! its own id, a batch retried with the same ids after a 503), plain-SQL feedback (a client of its
//! own inserting 10 rows per transaction with its own ids, retrying a failed transaction with the
//! same ids and `ON CONFLICT DO NOTHING`; only committed transactions count as accepted), and
//! predictions. An in-process worker and service run throughout and are never restarted.
//!
//! Asserted: every prediction answers 200 (from memory while the database is away); a write
//! answers 202 or 503 with `Retry-After`, never a 500 nor a timeout of the client (bounded by the
//! request timeout); the worker's and the serving cache's LISTEN connections come back by
//! themselves, and an event sent after the outage shows in a prediction promptly; once drained,
//! every accepted event is applied exactly once (`common::applied`), the versions form a line,
//! and the parameters are bit for bit the in-memory replay of the applied order.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use olps::http::{AppState, ServicePool};
use olps::learner::{LearnerConfig, ModelKind};
use olps::serving::ServingConfig;
use olps::worker::{Worker, WorkerConfig};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::applied::{assert_applied_exactly_once, record_queue_order};
use crate::common::*;

/// The service's request timeout in these tests, and the clients' bound on a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(12);
/// Load before the outage, and after it before the queue is left to drain.
const LOAD_BEFORE: Duration = Duration::from_secs(4);
const LOAD_AFTER: Duration = Duration::from_secs(4);
/// How soon after the server is back things must work again without restarting anything: the
/// backoff caps at 5 s (listeners) and the worker's pool retries a refused connection every
/// 6 s at most (a fifth of its 30 s acquire timeout).
const PROMPTLY: Duration = Duration::from_secs(30);

enum Outage {
    /// `pg_ctl restart -m fast`.
    Restart,
    /// `pg_ctl stop -m fast`, this long, then started again.
    Stopped(Duration),
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    /// Ids of events answered 202 (HTTP) or committed (SQL).
    accepted: HashSet<Uuid>,
    http_accepted: u64,
    http_unavailable: u64,
    /// The error codes of the 503s.
    unavailable_codes: std::collections::BTreeSet<String>,
    sql_committed: u64,
    sql_failed: u64,
    predictions: u64,
    predictions_while_down: u64,
    /// Anything that must not happen: a 500, a timeout, a 503 without Retry-After, a failed
    /// prediction.
    problems: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

fn features(i: u64) -> Value {
    json!({
        format!("f{}", i % 40): ((i * 37) % 100) as f64 / 100.0,
        format!("g{}", i % 13): ((i * 11) % 100) as f64 / 100.0 - 0.5,
    })
}

fn label(i: u64) -> f64 {
    ((i * 7) % 200) as f64 / 100.0 - 1.0
}

fn client(token: &Option<String>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(secret) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {secret}").parse().unwrap(),
        );
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap()
}

/// HTTP feedback until `stop`: batches of 5 events with their own ids; a batch answered 503 is
/// sent again with the same ids.
async fn http_feedback(
    url: String,
    client: reqwest::Client,
    seen: Shared,
    stop: CancellationToken,
) {
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        let events: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(k, id)| {
                let i = n * 5 + k as u64;
                json!({"id": id, "entity_id": format!("h{i}"), "feedback_type": "explicit",
                       "feedback_value": label(i), "features": features(i)})
            })
            .collect();
        let body = json!({ "events": events });
        n += 1;
        loop {
            let sent = client.post(&url).json(&body).send().await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    let what = if e.is_timeout() {
                        "timed out"
                    } else {
                        "failed"
                    };
                    seen.lock()
                        .unwrap()
                        .problems
                        .push(format!("feedback request {what}: {e}"));
                    break;
                }
            };
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").cloned();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            let done = {
                let mut s = seen.lock().unwrap();
                match status {
                    202 => {
                        let answered: Vec<Uuid> = answer["ids"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
                            .unwrap_or_default();
                        if answered != ids {
                            s.problems
                                .push(format!("202 with other ids than sent: {answer}"));
                        }
                        s.accepted.extend(&ids);
                        s.http_accepted += 1;
                        true
                    }
                    503 => {
                        s.http_unavailable += 1;
                        let code = answer["error"]["code"].as_str().unwrap_or("?").to_string();
                        s.unavailable_codes.insert(code);
                        if retry_after.is_none() {
                            s.problems
                                .push(format!("503 without Retry-After: {answer}"));
                        }
                        false
                    }
                    _ => {
                        s.problems
                            .push(format!("feedback answered {status}: {answer}"));
                        true
                    }
                }
            };
            if done {
                break;
            }
            if stop.is_cancelled() {
                break;
            }
            // Sooner than Retry-After asks, to see many answers while the database is away.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One transaction of plain-SQL feedback (idempotent by id).
async fn sql_insert(
    pool: &PgPool,
    model: Uuid,
    ids: &[Uuid],
    first: u64,
) -> Result<(), sqlx::Error> {
    let metadata: Vec<String> = (0..ids.len() as u64)
        .map(|k| json!({"features": features(first + k)}).to_string())
        .collect();
    let labels: Vec<f64> = (0..ids.len() as u64).map(|k| label(first + k)).collect();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO feedback_events
             (id, model_id, entity_id, feedback_type, feedback_value, confidence, metadata)
         SELECT u.id, $1, 's' || u.id, 'explicit', u.label, 1.0, u.meta::jsonb
         FROM unnest($2::uuid[], $3::text[], $4::float8[]) AS u(id, meta, label)
         ON CONFLICT (model_id, id) DO NOTHING",
    )
    .bind(model)
    .bind(ids)
    .bind(&metadata)
    .bind(&labels)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Plain-SQL feedback until `stop`, on a pool of its own; a failed transaction is tried again
/// with the same ids until it commits.
async fn sql_feedback(
    options: PgConnectOptions,
    model: Uuid,
    seen: Shared,
    stop: CancellationToken,
) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy_with(options);
    let mut n = 0u64;
    'feed: while !stop.is_cancelled() {
        let ids: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
        let first = 1_000_000 + n * 10;
        n += 1;
        loop {
            match sql_insert(&pool, model, &ids, first).await {
                Ok(()) => {
                    let mut s = seen.lock().unwrap();
                    s.accepted.extend(&ids);
                    s.sql_committed += 1;
                    break;
                }
                Err(_) => {
                    seen.lock().unwrap().sql_failed += 1;
                    if stop.is_cancelled() {
                        break 'feed;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    pool.close().await;
}

/// Predictions until `stop`; every one must answer 200.
async fn predictions(
    url: String,
    client: reqwest::Client,
    seen: Shared,
    down: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut i = 0u64;
    while !stop.is_cancelled() {
        let was_down = down.load(Ordering::Acquire);
        let sent = client
            .post(&url)
            .json(&json!({ "features": features(i) }))
            .send()
            .await;
        i += 1;
        {
            let mut s = seen.lock().unwrap();
            match sent {
                Ok(r) if r.status() == 200 => {
                    s.predictions += 1;
                    if was_down && down.load(Ordering::Acquire) {
                        s.predictions_while_down += 1;
                    }
                }
                Ok(r) => s
                    .problems
                    .push(format!("prediction answered {}", r.status())),
                Err(e) => s.problems.push(format!("prediction request failed: {e}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `pg_ctl ARGS -D <data>` as the account that owns the cluster.
fn pg_ctl(data_dir: &Path, args: &[&str]) {
    let bin = olps::embedded::find_pg_bin_dir().unwrap().join("pg_ctl");
    let mut command = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let status = command
        .args(args)
        .arg("-D")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl {args:?}: {status}");
}

/// Backends of the current database with this application_name.
async fn connections_named(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap_or(0)
}

async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?} after the database was back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn under_load(outage: Outage) {
    if olps::embedded::find_pg_bin_dir().is_none() {
        eprintln!("no PostgreSQL binaries: skipped");
        return;
    }
    let started = Instant::now();
    let tmp = TempCluster::new("olps-outage");
    let base = tmp.base.clone();
    let cluster = tokio::task::spawn_blocking(move || olps::embedded::ensure_cluster(&base))
        .await
        .unwrap()
        .unwrap();
    let mut admin = PgConnection::connect(&cluster.url).await.unwrap();
    sqlx::query("CREATE DATABASE outage")
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let mut url = url::Url::parse(&cluster.url).unwrap();
    url.set_path("/outage");
    let url = url.to_string();
    olps::schema::migrate(&url).await.unwrap();
    let options: PgConnectOptions = url.parse().unwrap();
    // For the test's own checks; it too comes back after the outage.
    let checks = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(30))
        .connect_lazy_with(options.clone());
    record_queue_order(&checks).await;
    let model = create_model(
        &checks,
        "outage",
        ModelKind::Linear,
        LearnerConfig::default(),
    )
    .await;

    // The worker and the service, in-process, as `olps up` runs them.
    let worker_pool = olps::db::connect(&url, 4).await.unwrap();
    let stop_worker = CancellationToken::new();
    let worker = {
        let pool = worker_pool.clone();
        let stop = stop_worker.clone();
        tokio::spawn(async move {
            Worker::new(pool, WorkerConfig::default())
                .run(stop)
                .await
                .unwrap()
        })
    };
    let service_pool = olps::http::service_pool(&worker_pool, &ServicePool::default());
    let mut state = AppState::with_serving(service_pool, ServingConfig::default());
    state.request_timeout = REQUEST_TIMEOUT;
    let mut service = Service::start_with(state).await;
    let feedback_url = format!("{}/v1/models/outage/feedback", service.base);
    let predict_url = format!("{}/v1/models/outage/predict", service.base);
    let http = client(&service.token);
    // Loaded into memory before the outage.
    let first = http
        .post(&predict_url)
        .json(&json!({"features": features(0)}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);

    let seen: Shared = Arc::default();
    let down = Arc::new(AtomicBool::new(false));
    let stop_load = CancellationToken::new();
    let load = vec![
        tokio::spawn(http_feedback(
            feedback_url.clone(),
            http.clone(),
            seen.clone(),
            stop_load.clone(),
        )),
        tokio::spawn(sql_feedback(
            options.clone(),
            model.model_id,
            seen.clone(),
            stop_load.clone(),
        )),
        tokio::spawn(predictions(
            predict_url.clone(),
            http.clone(),
            seen.clone(),
            down.clone(),
            stop_load.clone(),
        )),
    ];
    tokio::time::sleep(LOAD_BEFORE).await;
    let before = {
        let s = seen.lock().unwrap();
        (s.http_accepted, s.sql_committed, s.predictions)
    };
    assert!(
        before.0 > 0 && before.1 > 0 && before.2 > 0,
        "no load before the outage: {before:?}"
    );

    // The outage.
    down.store(true, Ordering::Release);
    let went_down = Instant::now();
    let data_dir = cluster.data_dir.clone();
    let log = cluster.log_file();
    let base = tmp.base.clone();
    let stopped = matches!(outage, Outage::Stopped(_));
    match outage {
        Outage::Restart => {
            tokio::task::spawn_blocking(move || {
                pg_ctl(
                    &data_dir,
                    &[
                        "restart",
                        "-m",
                        "fast",
                        "-w",
                        "-s",
                        "-l",
                        log.to_str().unwrap(),
                    ],
                )
            })
            .await
            .unwrap();
        }
        Outage::Stopped(how_long) => {
            let stop_base = base.clone();
            tokio::task::spawn_blocking(move || olps::embedded::stop_cluster(&stop_base))
                .await
                .unwrap()
                .unwrap();
            tokio::time::sleep(how_long).await;
            tokio::task::spawn_blocking(move || olps::embedded::ensure_cluster(&base))
                .await
                .unwrap()
                .unwrap();
        }
    }
    down.store(false, Ordering::Release);
    let back = Instant::now();
    let outage_secs = went_down.elapsed().as_secs_f64();

    // Both listeners reconnect by themselves (every backend died with the server: any listener
    // connection now is a new one).
    for name in [
        olps::worker::LISTENER_APP_NAME,
        olps::serving::LISTENER_APP_NAME,
    ] {
        eventually_within(PROMPTLY, &format!("{name} reconnected"), || async {
            (connections_named(&checks, name).await == 1).then_some(())
        })
        .await;
    }
    // A new event shows in a prediction promptly, through the worker and the serving cache.
    let (status, answer) = {
        let r = http
            .post(&feedback_url)
            .json(
                &json!({"entity_id": "sentinel", "feedback_type": "explicit", "feedback_value": 5.0,
                          "features": {"sentinel": 1.0}}),
            )
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 202, "{answer}");
    let sentinel: Uuid = answer["ids"][0].as_str().unwrap().parse().unwrap();
    seen.lock().unwrap().accepted.insert(sentinel);
    let visible_after = eventually_within(PROMPTLY, "the new event in a prediction", || async {
        let r = http
            .post(&predict_url)
            .json(&json!({"features": {"sentinel": 1.0}, "explain": true}))
            .send()
            .await
            .ok()?;
        let answer: Value = r.json().await.ok()?;
        // The sentinel feature is unknown until a version that learned it is served.
        (answer["unknown_features"].as_u64()? == 0).then(|| back.elapsed())
    })
    .await;

    tokio::time::sleep(LOAD_AFTER.saturating_sub(back.elapsed())).await;
    stop_load.cancel();
    for task in load {
        tokio::time::timeout(CLIENT_TIMEOUT + Duration::from_secs(5), task)
            .await
            .expect("load tasks stop")
            .unwrap();
    }
    // Everything accepted drains, with the same worker.
    eventually_within(Duration::from_secs(60), "the queue drained", || async {
        let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM feedback_queue")
            .fetch_one(&checks)
            .await
            .ok()?;
        (pending == 0).then_some(())
    })
    .await;
    stop_worker.cancel();
    let stats = tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the worker stops")
        .unwrap();
    service.stop().await;

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let summary = format!(
        "outage {outage_secs:.1} s; HTTP batches 202: {}, 503: {} {:?}; SQL transactions committed: \
         {}, failed: {}; predictions 200: {} ({} while down); sentinel visible {:.1} s after the \
         server was back; worker: {} batches, {} events, {} failed attempts; {:.1} s in all",
        seen.http_accepted,
        seen.http_unavailable,
        seen.unavailable_codes,
        seen.sql_committed,
        seen.sql_failed,
        seen.predictions,
        seen.predictions_while_down,
        visible_after.as_secs_f64(),
        stats.batches,
        stats.examples,
        stats.failures,
        started.elapsed().as_secs_f64()
    );
    eprintln!("outage: {summary}");
    assert!(
        seen.problems.is_empty(),
        "{summary}\nproblems ({}): {:#?}",
        seen.problems.len(),
        &seen.problems[..seen.problems.len().min(20)]
    );
    assert!(
        seen.predictions_while_down > 0,
        "no prediction while the database was away: {summary}"
    );
    if stopped {
        // Ten seconds is longer than the service's acquire timeout (5 s) and the SQL client's
        // (2 s): writes must have been refused meanwhile. (A fast restart may be over within
        // them: a write then waits for the server and succeeds.)
        assert!(
            seen.http_unavailable > 0 && seen.sql_failed > 0,
            "the outage was not seen by the writers: {summary}"
        );
    }
    assert_applied_exactly_once(&checks, model.model_id, &seen.accepted).await;
    checks.close().await;
    worker_pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_load_loses_nothing_and_doubles_nothing() {
    under_load(Outage::Restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_seconds_down_under_load_loses_nothing_and_doubles_nothing() {
    under_load(Outage::Stopped(Duration::from_secs(10))).await;
}
