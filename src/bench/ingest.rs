//! `ingest`: feedback events per second into `feedback_events` (queue trigger on), through the
//! HTTP batch endpoint, olps' own insert, a plain multi-row INSERT and COPY; the baseline is the
//! same rows COPYed by a bare client with the same batching and connections, measured before and
//! after the other cases (their mean is the baseline).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::data::{self, Stream};
use super::{client, Ctx, Figure, Report};
use crate::http::{self, AppState};

/// Events per request / statement.
pub const BATCH: u64 = 1000;

/// The HTTP target (Deliver: at least 0.7 of the bare COPY baseline).
pub const HTTP_TARGET_RATIO: f64 = 0.7;

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let n = ctx.args.events.unwrap_or(100_000).max(BATCH);
    let n = n - n % BATCH;
    let conns = ctx.args.connections as usize;
    let stream = Stream::new(ctx.args.features, ctx.args.feature_pool, 11);

    // The service, in-process on a port of its own.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service_pool = crate::db::connect(&ctx.url, conns as u32 + 4).await?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(http::serve(
        listener,
        // Ingest is measured without tokens (`olps bench predict` measures what they cost).
        AppState::new(service_pool.clone())
            .with_access(crate::http::access::AccessConfig::no_auth()),
        shutdown.clone(),
    ));

    let result = cases(ctx, report, &stream, n, conns, addr).await;
    shutdown.cancel();
    let _ = server.await;
    service_pool.close().await;
    result
}

/// Models for ingest only: quarantined, so a worker running on the same database leaves their
/// rows alone.
async fn ingest_model(ctx: &Ctx, label: &str) -> anyhow::Result<Uuid> {
    let model = ctx
        .create_model(
            label,
            crate::learner::ModelKind::Logistic,
            Default::default(),
        )
        .await?;
    sqlx::query(
        "UPDATE models SET status = 'quarantined', status_reason = 'olps bench: ingest only'
         WHERE model_id = $1",
    )
    .bind(model.model_id)
    .execute(&ctx.pool)
    .await?;
    Ok(model.model_id)
}

async fn cases(
    ctx: &Ctx,
    report: &mut Report,
    stream: &Stream,
    n: u64,
    conns: usize,
    addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let baseline_before = timed(ctx, "bare COPY (before)", n, || {
        copy_parallel(ctx, stream, n, conns, BATCH)
    })
    .await?;

    let http_rate = timed(ctx, "HTTP batch", n, || {
        http_parallel(ctx, stream, n, conns, addr)
    })
    .await?;
    let unnest_rate = timed(ctx, "olps feedback::insert", n, || {
        unnest_parallel(ctx, stream, n, conns)
    })
    .await?;
    let values_rate = timed(ctx, "multi-row INSERT", n, || {
        values_parallel(ctx, stream, n, conns)
    })
    .await?;
    let copy_big_rate = timed(ctx, "COPY, 1 connection", n, || {
        copy_parallel(ctx, stream, n, 1, 10_000)
    })
    .await?;

    let baseline_after = timed(ctx, "bare COPY (after)", n, || {
        copy_parallel(ctx, stream, n, conns, BATCH)
    })
    .await?;
    let baseline = (baseline_before.0 + baseline_after.0) / 2.0;
    let base_name = format!("bare COPY, {conns} conns x 1,000 rows");
    let spread = format!(
        "baseline before/after: {:.0}/{:.0} events/s",
        baseline_before.0, baseline_after.0
    );

    report.add(
        Figure::new(
            "ingest",
            &format!("HTTP POST /feedback, 1,000 events/request, {conns} conns"),
            "events/s",
            http_rate.0,
        )
        .baseline(&base_name, baseline)
        .target_ratio_at_least(HTTP_TARGET_RATIO)
        .detail("events", http_rate.1)
        .note(spread.clone()),
    );
    report.add(
        Figure::new(
            "ingest",
            &format!("olps feedback::insert (UNNEST, no HTTP), {conns} conns"),
            "events/s",
            unnest_rate.0,
        )
        .baseline(&base_name, baseline)
        .detail("events", unnest_rate.1),
    );
    report.add(
        Figure::new(
            "ingest",
            &format!("SQL multi-row INSERT, 1,000 rows/statement, {conns} conns"),
            "events/s",
            values_rate.0,
        )
        .baseline(&base_name, baseline)
        .detail("events", values_rate.1),
    );
    report.add(
        Figure::new(
            "ingest",
            "SQL COPY, 1 conn x 10,000 rows",
            "events/s",
            copy_big_rate.0,
        )
        .baseline(&base_name, baseline)
        .detail("events", copy_big_rate.1),
    );
    Ok(())
}

/// Runs one case on a fresh model, checks every event and queue row landed, deletes the model.
/// Returns (events/s, events).
async fn timed<F, Fut>(ctx: &Ctx, label: &str, n: u64, case: F) -> anyhow::Result<(f64, u64)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Uuid, f64)>>,
{
    let (model, secs) = case().await?;
    let (events, queued): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM feedback_events WHERE model_id = $1),
                (SELECT count(*) FROM feedback_queue WHERE model_id = $1)",
    )
    .bind(model)
    .fetch_one(&ctx.pool)
    .await?;
    if events as u64 != n || queued as u64 != n {
        bail!("{label}: expected {n} events and queue rows, found {events} and {queued}");
    }
    let rate = n as f64 / secs;
    ctx.say(&format!("ingest {label}: {rate:.0} events/s"));
    ctx.cleanup(&[model]).await?;
    Ok((rate, n))
}

/// Splits `n` events into jobs of `batch` and runs `conns` tasks that take jobs in turn.
fn jobs(n: u64, batch: u64) -> Vec<std::ops::Range<u64>> {
    (0..n.div_ceil(batch))
        .map(|j| j * batch..((j + 1) * batch).min(n))
        .collect()
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>) -> anyhow::Result<()> {
    for t in tasks {
        t.await.context("client task panicked")??;
    }
    Ok(())
}

/// COPY of pre-encoded chunks from `conns` connections.
async fn copy_parallel(
    ctx: &Ctx,
    stream: &Stream,
    n: u64,
    conns: usize,
    batch: u64,
) -> anyhow::Result<(Uuid, f64)> {
    let model = ingest_model(ctx, "ingest-copy").await?;
    let payloads: Arc<Vec<Vec<u8>>> = Arc::new(
        jobs(n, batch)
            .into_iter()
            .map(|r| data::copy_rows(model, stream, r))
            .collect(),
    );
    let pool = crate::db::connect(&ctx.url, conns as u32).await?;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let _progress = ctx.progress("ingest COPY", n, done.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (pool, payloads, next, done) =
            (pool.clone(), payloads.clone(), next.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(rows) = payloads.get(j) else {
                    break;
                };
                let mut copy = conn.copy_in_raw(data::COPY_SQL).await?;
                copy.send(rows.as_slice()).await?;
                let written = copy.finish().await?;
                done.fetch_add(written, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    join_all(tasks).await?;
    let secs = started.elapsed().as_secs_f64();
    pool.close().await;
    Ok((model, secs))
}

/// POST /v1/models/{m}/feedback with pre-serialized bodies from `conns` keep-alive connections.
async fn http_parallel(
    ctx: &Ctx,
    stream: &Stream,
    n: u64,
    conns: usize,
    addr: std::net::SocketAddr,
) -> anyhow::Result<(Uuid, f64)> {
    let model = ingest_model(ctx, "ingest-http").await?;
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        jobs(n, BATCH)
            .into_iter()
            .map(|r| data::feedback_body(stream, r))
            .collect(),
    );
    let path = Arc::new(format!("/v1/models/{model}/feedback"));
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let _progress = ctx.progress("ingest HTTP", n, done.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (bodies, next, done, path) = (bodies.clone(), next.clone(), done.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = client::Conn::connect(addr).await?;
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(body) = bodies.get(j) else {
                    break;
                };
                let response = conn.post_json(&path, body).await?;
                if response.status != 202 {
                    bail!(
                        "feedback request answered {}: {}",
                        response.status,
                        String::from_utf8_lossy(&response.body)
                    );
                }
                done.fetch_add(BATCH, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    join_all(tasks).await?;
    Ok((model, started.elapsed().as_secs_f64()))
}

/// olps' own insert (`feedback::insert`, the statement behind the HTTP endpoint) without HTTP.
async fn unnest_parallel(
    ctx: &Ctx,
    stream: &Stream,
    n: u64,
    conns: usize,
) -> anyhow::Result<(Uuid, f64)> {
    let model = ingest_model(ctx, "ingest-unnest").await?;
    let batches: Arc<Vec<Vec<crate::feedback::FeedbackEvent>>> = Arc::new(
        jobs(n, BATCH)
            .into_iter()
            .map(|r| {
                r.map(|i| {
                    let e = stream.event(i);
                    crate::feedback::FeedbackEvent {
                        entity_id: format!("e{i}"),
                        feedback_type: "explicit".into(),
                        feedback_value: e.label,
                        confidence: 1.0,
                        metadata: serde_json::from_str(&data::metadata_json(&e))
                            .expect("valid JSON"),
                        timestamp: None,
                        prediction_id: None,
                        id: None,
                    }
                })
                .collect()
            })
            .collect(),
    );
    let pool = crate::db::connect(&ctx.url, conns as u32).await?;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let _progress = ctx.progress("ingest feedback::insert", n, done.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (pool, batches, next, done) =
            (pool.clone(), batches.clone(), next.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(events) = batches.get(j) else {
                    break;
                };
                let stored = crate::feedback::insert(&mut *conn, model, events).await?;
                done.fetch_add(stored.ids.len() as u64, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    join_all(tasks).await?;
    let secs = started.elapsed().as_secs_f64();
    pool.close().await;
    Ok((model, secs))
}

/// A plain multi-row `INSERT ... VALUES (...), (...)` with bound parameters, as a SQL client
/// would write it.
async fn values_parallel(
    ctx: &Ctx,
    stream: &Stream,
    n: u64,
    conns: usize,
) -> anyhow::Result<(Uuid, f64)> {
    let model = ingest_model(ctx, "ingest-values").await?;
    type Rows = Vec<(String, f64, String)>;
    let batches: Arc<Vec<Rows>> = Arc::new(
        jobs(n, BATCH)
            .into_iter()
            .map(|r| {
                r.map(|i| {
                    let e = stream.event(i);
                    (format!("e{i}"), e.label, data::metadata_json(&e))
                })
                .collect()
            })
            .collect(),
    );
    let sql_for = |rows: usize| {
        let mut sql = String::from(
            "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, \
             confidence, metadata) VALUES ",
        );
        for k in 0..rows {
            if k > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "($1, ${}, 'explicit', ${}, 1.0, ${}::jsonb)",
                3 * k + 2,
                3 * k + 3,
                3 * k + 4
            ));
        }
        sql
    };
    let full_sql = Arc::new(sql_for(BATCH as usize));
    let pool = crate::db::connect(&ctx.url, conns as u32).await?;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let _progress = ctx.progress("ingest multi-row INSERT", n, done.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (pool, batches, next, done, full_sql) = (
            pool.clone(),
            batches.clone(),
            next.clone(),
            done.clone(),
            full_sql.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(rows) = batches.get(j) else {
                    break;
                };
                let partial;
                let sql = if rows.len() == BATCH as usize {
                    full_sql.as_str()
                } else {
                    partial = sql_for(rows.len());
                    partial.as_str()
                };
                let mut query = sqlx::query(sql).bind(model);
                for (entity, label, metadata) in rows {
                    query = query.bind(entity).bind(label).bind(metadata);
                }
                let written = query.execute(&mut *conn).await?.rows_affected();
                done.fetch_add(written, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    join_all(tasks).await?;
    let secs = started.elapsed().as_secs_f64();
    pool.close().await;
    Ok((model, secs))
}
