//! The LISTEN connections of the worker and the serving cache (`olps::notify`): one wake-up takes
//! every notification queued behind it, a lost connection comes back by itself and says so
//! (`catch_up`), and a worker whose first connection attempt fails listens once the database is
//! up (before, it only polled from then on).

use std::time::{Duration, Instant};

use olps::learner::{LearnerConfig, ModelKind};
use olps::notify::{ListenConfig, Subscription};
use olps::worker::{Worker, WorkerConfig};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::common::*;

const APP: &str = "olps-test-listener";

async fn listener_pids(pool: &PgPool) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(APP)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn wake(subscription: &mut Subscription) -> olps::notify::Wake {
    tokio::time::timeout(Duration::from_secs(15), subscription.wait())
        .await
        .expect("a wake-up within 15 s")
}

#[tokio::test]
async fn a_burst_is_one_wake_up_and_a_lost_connection_comes_back() {
    let db = TestDb::new().await;
    let mut subscription = Subscription::start(&db.pool, ListenConfig::new(APP, &["test_burst"]));
    let first = wake(&mut subscription).await;
    assert!(first.catch_up && first.reconnects == 0, "{first:?}");
    let pid = listener_pids(&db.pool).await;
    assert_eq!(pid.len(), 1);

    // 200 notifications, delivered at one commit; the subscriber is busy meanwhile.
    sqlx::query("SELECT pg_notify('test_burst', g::text) FROM generate_series(1, 200) g")
        .execute(&db.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let burst = wake(&mut subscription).await;
    let payloads: Vec<String> = burst
        .notifications
        .iter()
        .map(|n| n.payload.clone())
        .collect();
    assert_eq!(
        payloads,
        (1..=200).map(|i| i.to_string()).collect::<Vec<_>>(),
        "all of them, in order, in one wake-up"
    );
    assert!(!burst.catch_up);

    // The connection is killed: it comes back by itself, and the wake-up says to catch up.
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid[0])
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(killed);
    let back = wake(&mut subscription).await;
    assert!(back.catch_up && back.reconnects == 1, "{back:?}");
    let new_pid = listener_pids(&db.pool).await;
    assert_eq!(new_pid.len(), 1);
    assert_ne!(new_pid, pid);
    sqlx::query("SELECT pg_notify('test_burst', 'again')")
        .execute(&db.pool)
        .await
        .unwrap();
    let again = wake(&mut subscription).await;
    assert_eq!(again.notifications.len(), 1, "{again:?}");
    assert_eq!(again.notifications[0].payload, "again");

    // Dropped: the connection goes.
    drop(subscription);
    let started = Instant::now();
    while !listener_pids(&db.pool).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still listening"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_while_the_database_is_down_listens_once_it_is_up() {
    if olps::embedded::find_pg_bin_dir().is_none() {
        eprintln!("no PostgreSQL binaries: skipped");
        return;
    }
    let tmp = TempCluster::new("olps-listen-late");
    let base = tmp.base.clone();
    let cluster = tokio::task::spawn_blocking(move || olps::embedded::ensure_cluster(&base))
        .await
        .unwrap()
        .unwrap();
    let mut admin = PgConnection::connect(&cluster.url).await.unwrap();
    sqlx::query("CREATE DATABASE late")
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let mut url = url::Url::parse(&cluster.url).unwrap();
    url.set_path("/late");
    let url = url.to_string();
    olps::schema::migrate(&url).await.unwrap();
    let options: PgConnectOptions = url.parse().unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy_with(options);
    let model = create_model(&pool, "late", ModelKind::Linear, LearnerConfig::default()).await;
    pool.close().await;
    let base = tmp.base.clone();
    tokio::task::spawn_blocking(move || olps::embedded::stop_cluster(&base))
        .await
        .unwrap()
        .unwrap();

    // The worker starts while the database is down, and polls only once an hour: only a
    // notification can make it apply an event promptly.
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy_with(url.parse().unwrap());
    let stop = CancellationToken::new();
    let worker = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            let config = WorkerConfig {
                poll_interval: Duration::from_secs(3_600),
                maintenance_check: None,
                ..WorkerConfig::default()
            };
            Worker::new(pool, config).run(stop).await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = tmp.base.clone();
    tokio::task::spawn_blocking(move || olps::embedded::ensure_cluster(&base))
        .await
        .unwrap()
        .unwrap();
    let up = Instant::now();
    loop {
        let listening: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(olps::worker::LISTENER_APP_NAME)
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
        if listening == 1 {
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "the worker's LISTEN connection did not come up within 30 s of the database"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    insert_stream(&pool, model.model_id, &[(vec![("x".into(), 1.0)], 2.0)]).await;
    let sent = Instant::now();
    while current_version(&pool, model.model_id).await == 0 {
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "the event was not applied within 10 s: the notification did not wake the worker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let stats = tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("the worker stops")
        .unwrap();
    assert_eq!(stats.examples, 1);
    pool.close().await;
}
