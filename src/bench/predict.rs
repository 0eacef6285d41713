//! `predict`: predictions per second and latency through `POST /v1/models/{m}/predict`, batch 1
//! and batch 100, from C keep-alive connections of a Rust client in the same process, while a
//! worker commits new versions of the model (a producer feeds it events throughout).
//!
//! Server time is the `Server-Timing: app;dur=…` header the service adds around each request
//! (routing, parsing, the handler, serialization); client time is the full round trip.
//! Baseline: PostgreSQL computing the same predictions, one SQL statement per request (the
//! features joined with `model_parameters`), from the same number of connections.
//!
//! The prediction log at the batch-1 rate: the same batch-1 load with an `entity_id` in every
//! request (so every prediction is logged), once per log method, each on a service of its own:
//! the fraction of the predictions answered that reached `prediction_log` (the rest were dropped
//! and counted), binary COPY from two writers against the path before it (one writer, INSERT …
//! unnest) in the same run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::{PgPool, Row};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::data::{self, Stream};
use super::sys::percentiles;
use super::{client, Ctx, Figure, Report};
use crate::http::{self, AppState};
use crate::serving::{LogConfig, LogMethod, LogRecord, PredictionLog, ServingConfig};
use crate::worker::{Worker, WorkerConfig};

/// Targets (Deliver), batch 1.
pub const TARGET_P99_MS: f64 = 1.0;
pub const TARGET_PER_SEC: f64 = 20_000.0;

/// Events per second fed to the worker during the measurement (new versions keep coming).
const FEED_RATE: f64 = 200.0;

/// Distinct request bodies each case cycles through.
const BODIES: u64 = 512;

#[derive(Debug, Clone, Default)]
struct Load {
    requests: u64,
    secs: f64,
    server_ms: Vec<f64>,
    client_ms: Vec<f64>,
}

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let model = ctx.create_models("predict", 1).await?[0].model_id;
    let result = run_on(ctx, report, model).await;
    ctx.cleanup(&[model]).await?;
    result
}

async fn run_on(ctx: &Ctx, report: &mut Report, model: Uuid) -> anyhow::Result<()> {
    let stream = Stream::new(ctx.args.features, ctx.args.feature_pool, 23);
    let conns = ctx.args.connections as usize;

    // A trained model first: every feature of the pool has a weight (untimed).
    let warm = (ctx.args.feature_pool * 3 / ctx.args.features.max(1)).clamp(100, 20_000);
    data::load(&ctx.pool, &[model], &stream, 0, warm, None).await?;
    let worker_pool = crate::db::connect(&ctx.url, 4).await?;
    let cancel = CancellationToken::new();
    let worker = {
        let (pool, cancel) = (worker_pool.clone(), cancel.clone());
        let config = WorkerConfig {
            models: vec![model],
            batch_size: ctx.args.batch_size,
            ..WorkerConfig::default()
        };
        tokio::spawn(async move { Worker::new(pool, config).run(cancel).await })
    };
    data::wait_applied(
        &ctx.pool,
        &[model],
        warm,
        &AtomicU64::new(0),
        Duration::from_secs(120),
    )
    .await?;

    // Steady state for the SQL baseline: statistics that know the model (a plan made for a
    // model the statistics do not know reads all its parameters per request).
    sqlx::query("ANALYZE model_parameters")
        .execute(&ctx.pool)
        .await?;
    data::settle(&ctx.pool).await;
    // The service, in-process.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service_pool = crate::db::connect(&ctx.url, conns as u32 + 4).await?;
    let server = tokio::spawn(http::serve(
        listener,
        AppState::new(service_pool.clone()),
        cancel.clone(),
    ));
    // Tokens are on (as `olps serve` runs by default): a predict token for this model. A second
    // service with --no-auth over the same pool measures what they cost, in the same run.
    let token = crate::auth::tokens::create(
        &ctx.pool,
        &crate::auth::tokens::NewToken {
            name: format!("bench-predict-{model}"),
            scopes: crate::auth::Scopes::from_list(&[crate::auth::Scope::Predict]),
            models: vec![model.to_string()],
            expires_in: Some(chrono::Duration::hours(1)),
        },
        &crate::auth::Principal::cli(),
    )
    .await?;
    let secret = token.secret.clone();
    let open_listener = TcpListener::bind("127.0.0.1:0").await?;
    let open_addr = open_listener.local_addr()?;
    let open_server = tokio::spawn(http::serve(
        open_listener,
        AppState::new(service_pool.clone())
            .with_access(crate::http::access::AccessConfig::no_auth()),
        cancel.clone(),
    ));
    // A producer keeps the worker committing versions.
    let producer = {
        let (pool, cancel, stream) = (ctx.pool.clone(), cancel.clone(), stream.clone());
        tokio::spawn(async move {
            let mut next = warm;
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !cancel.is_cancelled() {
                tick.tick().await;
                let due = warm + (started.elapsed().as_secs_f64() * FEED_RATE) as u64;
                if due > next {
                    data::load(&pool, &[model], &stream, next, due - next, None).await?;
                    next = due;
                }
            }
            anyhow::Ok(())
        })
    };
    let version_before = version(&ctx.pool, model).await?;

    let result = async {
        // Wait for the service to answer (the model loads on first use).
        let mut conn = client::Conn::connect(addr)
            .await?
            .with_bearer(Some(&secret));
        let path = format!("/v1/models/{model}/predict");
        let probe = conn
            .post_json(&path, &data::predict_body(&stream, 0, 1))
            .await?;
        if probe.status != 200 {
            bail!(
                "predict answered {}: {}",
                probe.status,
                String::from_utf8_lossy(&probe.body)
            );
        }
        let mut cases = Vec::new();
        for batch in [1u64, 100] {
            let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
                (0..BODIES)
                    .map(|k| data::predict_body(&stream, 1_000_000 + k * batch, batch))
                    .collect(),
            );
            let olps = http_load(
                ctx,
                addr,
                Some(&secret),
                &path,
                bodies.clone(),
                conns,
                batch,
            )
            .await?;
            // The same load without tokens, right after (batch 1: where auth weighs most).
            let no_auth = if batch == 1 {
                Some(http_load(ctx, open_addr, None, &path, bodies, conns, batch).await?)
            } else {
                None
            };
            let instances: Arc<Vec<Vec<data::Event>>> = Arc::new(
                (0..BODIES)
                    .map(|k| {
                        (0..batch)
                            .map(|i| stream.event(1_000_000 + k * batch + i))
                            .collect()
                    })
                    .collect(),
            );
            let sql = sql_load(ctx, model, instances, conns, batch).await?;
            cases.push((batch, olps, sql, no_auth));
        }
        let mut logged = Vec::new();
        for (name, method, writers) in LOG_CASES {
            logged.push((
                name,
                logged_load(ctx, &stream, model, method, writers).await?,
            ));
        }
        let mut capacity = Vec::new();
        for (_, method, writers) in LOG_CASES.into_iter().chain([WRITER_ALONE]) {
            capacity.push(writer_capacity(ctx, &stream, model, method, writers).await?);
        }
        anyhow::Ok((cases, logged, capacity))
    }
    .await;

    cancel.cancel();
    let _ = server.await;
    let _ = open_server.await;
    crate::auth::tokens::revoke(
        &ctx.pool,
        &token.info.token_id.to_string(),
        &crate::auth::Principal::cli(),
    )
    .await?;
    let produced = producer.await;
    let worked = worker.await;
    let version_after = version(&ctx.pool, model).await?;
    service_pool.close().await;
    worker_pool.close().await;
    let (cases, logged, logged_capacity) = result?;
    produced.context("producer panicked")??;
    worked.context("worker panicked")??;

    let versions = version_after - version_before;
    report_logged(report, conns, &logged);
    if let [new, old, one_writer] = logged_capacity[..] {
        report.add(
            Figure::new(
                "predict",
                &format!(
                    "prediction log alone: {} records offered at once, written ({})",
                    super::report::thousands(CAPACITY_RECORDS as f64),
                    LOG_CASES[0].0
                ),
                "rows/s",
                new,
            )
            .baseline(LOG_CASES[1].0, old)
            .detail("copy_1_writer_rows_per_sec", one_writer)
            .note(format!(
                "the writers' capacity, without HTTP: binary COPY from one writer {one_writer:.0} rows/s"
            )),
        );
    }
    for (batch, mut olps, mut sql, no_auth) in cases {
        if let Some(mut open) = no_auth {
            let on = (olps.requests * batch) as f64 / olps.secs;
            let off = (open.requests * batch) as f64 / open.secs;
            let (on50, _, on99, _) = percentiles(&mut olps.server_ms.clone());
            let (off50, _, off99, _) = percentiles(&mut open.server_ms);
            report.add(
                Figure::new(
                    "predict",
                    &format!("batch {batch}, {conns} conns: throughput with bearer tokens on"),
                    "predictions/s",
                    on,
                )
                .baseline("the same load with --no-auth, same run", off)
                .detail("server_p50_ms_auth_on", on50)
                .detail("server_p99_ms_auth_on", on99)
                .detail("server_p50_ms_auth_off", off50)
                .detail("server_p99_ms_auth_off", off99)
                .note(format!(
                    "a predict-scoped token limited to the model, verified from the service's \
                     token cache (no database round trip per request); server time p50 \
                     {on50:.3} ms with tokens, {off50:.3} ms without"
                )),
            );
        }
        let per_sec = (olps.requests * batch) as f64 / olps.secs;
        let sql_per_sec = (sql.requests * batch) as f64 / sql.secs;
        let (s50, s95, s99, smax) = percentiles(&mut olps.server_ms);
        let (c50, _c95, c99, _cmax) = percentiles(&mut olps.client_ms);
        let (q50, _q95, q99, _qmax) = percentiles(&mut sql.client_ms);
        let case = format!("batch {batch}, {conns} conns");
        let base = format!("SQL join with model_parameters, {conns} conns");
        let mut throughput = Figure::new(
            "predict",
            &format!("{case}: throughput"),
            "predictions/s",
            per_sec,
        )
        .baseline(&base, sql_per_sec)
        .detail("requests", olps.requests)
        .detail("versions_committed_meanwhile", versions);
        if batch == 1 {
            throughput = throughput
                .target_value_at_least(TARGET_PER_SEC, "predictions/s")
                .note(format!(
                    "client in the same process, sharing the cores with the service, a worker \
                     and PostgreSQL; {versions} versions committed meanwhile (fed {FEED_RATE} events/s)"
                ));
        }
        report.add(throughput);
        let mut latency = Figure::new(
            "predict",
            &format!("{case}: server time p99"),
            "ms",
            s99,
        )
        .lower_is_better()
        .baseline("SQL statement round trip p99", q99)
        .detail("server_p50_ms", s50)
        .detail("server_p95_ms", s95)
        .detail("server_max_ms", smax)
        .detail("client_p50_ms", c50)
        .detail("client_p99_ms", c99)
        .detail("sql_p50_ms", q50)
        .note(format!(
            "server time from the Server-Timing header (whole request in the service): p50 {s50:.3} ms; \
             client round trip p50 {c50:.3} ms, p99 {c99:.3} ms"
        ));
        if batch == 1 {
            latency = latency.target_value_at_most(TARGET_P99_MS, "ms");
        }
        report.add(latency);
    }
    Ok(())
}

/// The log methods measured at the batch-1 rate: the default first, then the baseline.
const LOG_CASES: [(&str, LogMethod, usize); 2] = [
    ("binary COPY, 2 writers", LogMethod::Copy, 2),
    ("INSERT … unnest, 1 writer (before)", LogMethod::Insert, 1),
];

/// Binary COPY from one writer: what the second writer adds (capacity only).
const WRITER_ALONE: (&str, LogMethod, usize) = ("binary COPY, 1 writer", LogMethod::Copy, 1);

/// Records of the capacity measurement.
const CAPACITY_RECORDS: u64 = 50_000;

/// The writers' capacity in rows/s: [`CAPACITY_RECORDS`] records offered at once to a log with
/// room for all of them (in whichever writer they hash to), timed until the last is written.
async fn writer_capacity(
    ctx: &Ctx,
    stream: &Stream,
    model: Uuid,
    method: LogMethod,
    writers: usize,
) -> anyhow::Result<f64> {
    let records: Vec<LogRecord> = (0..CAPACITY_RECORDS)
        .map(|i| {
            let e = stream.event(3_000_000 + i);
            LogRecord {
                model_id: model,
                entity_id: format!("bench-c{}", i % 4096),
                features: e
                    .features
                    .iter()
                    .map(|(j, x)| (format!("f{j}"), *x))
                    .collect(),
                prediction: 0.5,
                version: 1,
                prediction_id: Uuid::new_v4(),
                predicted_at: chrono::Utc::now(),
            }
        })
        .collect();
    // Room for all of them in every writer's buffer: the log splits its capacity between the
    // writers and sends each entity to one of them by a hash, so with the capacity of the
    // records alone the busier writer's share could overflow its half (66 of 50,000 records
    // were refused so once, in CI).
    let log = PredictionLog::start(
        ctx.pool.clone(),
        LogConfig {
            capacity: CAPACITY_RECORDS as usize * writers,
            writers,
            method,
            ..LogConfig::default()
        },
    );
    let started = Instant::now();
    for r in records {
        log.offer(r);
    }
    log.close().await;
    let secs = started.elapsed().as_secs_f64();
    let (written, full, failed) = log.counts().snapshot();
    if written != CAPACITY_RECORDS {
        bail!("the prediction log wrote {written} of {CAPACITY_RECORDS} records ({full} found the buffer full, {failed} failed)");
    }
    let rate = written as f64 / secs;
    ctx.say(&format!(
        "prediction log alone ({method:?}, {writers} writers): {rate:.0} rows/s"
    ));
    Ok(rate)
}

/// One batch-1 load whose every prediction is logged.
#[derive(Debug, Clone)]
struct Logged {
    load: Load,
    /// Rows in `prediction_log` when the load ended, and after the service flushed its log.
    written_by_end: i64,
    written: i64,
}

impl Logged {
    fn fraction(&self) -> f64 {
        self.written as f64 / self.load.requests.max(1) as f64
    }
}

/// The batch-1 load with an `entity_id` in every request, on a service of its own whose
/// prediction log uses `method` with `writers` writers (default sizes otherwise; no tokens).
async fn logged_load(
    ctx: &Ctx,
    stream: &Stream,
    model: Uuid,
    method: LogMethod,
    writers: usize,
) -> anyhow::Result<Logged> {
    let conns = ctx.args.connections as usize;
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM prediction_log WHERE model_id = $1")
            .bind(model)
            .fetch_one(&ctx.pool)
            .await
    };
    let before = rows().await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let pool = crate::db::connect(&ctx.url, conns as u32 + 4).await?;
    let config = ServingConfig {
        log_method: method,
        log_writers: writers,
        ..ServingConfig::default()
    };
    let stop = CancellationToken::new();
    let server = tokio::spawn(http::serve(
        listener,
        AppState::with_serving(pool.clone(), config)
            .with_access(crate::http::access::AccessConfig::no_auth()),
        stop.clone(),
    ));
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..BODIES)
            .map(|k| data::predict_body_for_entity(stream, 2_000_000 + k, &format!("bench-e{k}")))
            .collect(),
    );
    let path = format!("/v1/models/{model}/predict");
    let load = http_load(ctx, addr, None, &path, bodies, conns, 1).await;
    let written_by_end = rows().await?;
    stop.cancel();
    server.await.context("service panicked")??;
    pool.close().await;
    let load = load?;
    let written = rows().await? - before;
    ctx.say(&format!(
        "predict batch 1 logged ({method:?}, {writers} writers): {written} of {} predictions logged",
        load.requests
    ));
    Ok(Logged {
        load,
        written_by_end: written_by_end - before,
        written,
    })
}

fn report_logged(report: &mut Report, conns: usize, logged: &[(&str, Logged)]) {
    let [(name, new), (base_name, old)] = logged else {
        return;
    };
    let rate = |l: &Logged| l.load.requests as f64 / l.load.secs;
    let written_rate = |l: &Logged| l.written_by_end as f64 / l.load.secs;
    report.add(
        Figure::new(
            "predict",
            &format!(
                "batch 1 with entity_id, {conns} conns: fraction of predictions logged ({name})"
            ),
            "%",
            new.fraction() * 100.0,
        )
        .baseline(base_name, old.fraction() * 100.0)
        .target_value_at_least(90.0, "%")
        .detail("predictions", new.load.requests)
        .detail("predictions_per_sec", rate(new))
        .detail("logged", new.written)
        .detail("logged_during_load_per_sec", written_rate(new))
        .detail("baseline_predictions_per_sec", rate(old))
        .detail("baseline_logged_during_load_per_sec", written_rate(old))
        .note(format!(
            "every request names an entity, so every prediction is to be logged; the rest were \
             dropped (counted in olps_prediction_log_dropped_total) when the buffer \
             ({} records) was full. {:.0} predictions/s, {:.0} rows/s written during the load; \
             before: {:.0} predictions/s, {:.0} rows/s",
            ServingConfig::default().log_capacity,
            rate(new),
            written_rate(new),
            rate(old),
            written_rate(old)
        )),
    );
    report.add(
        Figure::new(
            "predict",
            &format!("batch 1 with entity_id, {conns} conns: rows logged per second during the load ({name})"),
            "rows/s",
            written_rate(new),
        )
        .baseline(base_name, written_rate(old)),
    );
}

async fn version(pool: &PgPool, model: Uuid) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT version FROM models WHERE model_id = $1")
            .bind(model)
            .fetch_one(pool)
            .await?,
    )
}

/// Requests per case: --events (requests in total), else as many as fit in --duration seconds.
fn limits(ctx: &Ctx) -> (u64, Duration) {
    match ctx.args.events {
        Some(n) => (n.max(1), Duration::from_secs(3600)),
        None => (
            u64::MAX,
            Duration::from_secs_f64(ctx.args.duration.max(0.1)),
        ),
    }
}

async fn http_load(
    ctx: &Ctx,
    addr: std::net::SocketAddr,
    bearer: Option<&str>,
    path: &str,
    bodies: Arc<Vec<Vec<u8>>>,
    conns: usize,
    batch: u64,
) -> anyhow::Result<Load> {
    let (limit, duration) = limits(ctx);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let total = if limit == u64::MAX { 0 } else { limit };
    let _progress = ctx.progress(
        &format!("predict batch {batch} over HTTP"),
        total,
        done.clone(),
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (bodies, next, done, path) =
            (bodies.clone(), next.clone(), done.clone(), path.to_string());
        let bearer = bearer.map(str::to_string);
        tasks.push(tokio::spawn(async move {
            let mut conn = client::Conn::connect(addr)
                .await?
                .with_bearer(bearer.as_deref());
            let mut load = Load::default();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= limit || started.elapsed() >= duration {
                    break;
                }
                let body = &bodies[(k % bodies.len() as u64) as usize];
                let sent = Instant::now();
                let r = conn.post_json(&path, body).await?;
                load.client_ms.push(sent.elapsed().as_secs_f64() * 1e3);
                if r.status != 200 {
                    bail!(
                        "predict answered {}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    );
                }
                if let Some(ms) = r.server_ms {
                    load.server_ms.push(ms);
                }
                load.requests += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(load)
        }));
    }
    let mut total = Load::default();
    for t in tasks {
        let l = t.await.context("client panicked")??;
        total.requests += l.requests;
        total.server_ms.extend(l.server_ms);
        total.client_ms.extend(l.client_ms);
    }
    total.secs = started.elapsed().as_secs_f64();
    if total.server_ms.is_empty() && total.requests > 0 {
        bail!("the service sent no Server-Timing header");
    }
    ctx.say(&format!(
        "predict batch {batch} over HTTP{}: {:.0} predictions/s",
        if bearer.is_some() { "" } else { " (no auth)" },
        (total.requests * batch) as f64 / total.secs
    ));
    Ok(total)
}

/// The baseline: each request's predictions computed by one SQL statement.
async fn sql_load(
    ctx: &Ctx,
    model: Uuid,
    instances: Arc<Vec<Vec<data::Event>>>,
    conns: usize,
    batch: u64,
) -> anyhow::Result<Load> {
    const SQL: &str = "
        SELECT f.i, coalesce(sum(p.current_value * f.x), 0)
               + coalesce((SELECT current_value FROM model_parameters
                           WHERE model_id = $1 AND parameter_id = '__intercept__'), 0)
        FROM unnest($2::int4[], $3::text[], $4::float8[]) AS f(i, name, x)
        LEFT JOIN model_parameters p ON p.model_id = $1 AND p.parameter_id = f.name
        GROUP BY f.i ORDER BY f.i";
    let (limit, duration) = limits(ctx);
    let pool = crate::db::connect(&ctx.url, conns as u32).await?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (pool, instances, next) = (pool.clone(), instances.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut load = Load::default();
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= limit || started.elapsed() >= duration {
                    break;
                }
                let events = &instances[(k % instances.len() as u64) as usize];
                let (mut idx, mut names, mut xs) = (Vec::new(), Vec::new(), Vec::new());
                for (i, e) in events.iter().enumerate() {
                    for (j, x) in &e.features {
                        idx.push(i as i32);
                        names.push(format!("f{j}"));
                        xs.push(*x);
                    }
                }
                let sent = Instant::now();
                let rows = sqlx::query(SQL)
                    .bind(model)
                    .bind(&idx)
                    .bind(&names)
                    .bind(&xs)
                    .fetch_all(&mut *conn)
                    .await?;
                let predictions: Vec<f64> = rows
                    .iter()
                    .map(|r| r.try_get::<f64, _>(1).map(crate::learner::sigmoid))
                    .collect::<Result<_, _>>()?;
                load.client_ms.push(sent.elapsed().as_secs_f64() * 1e3);
                if predictions.len() != events.len() {
                    bail!("SQL baseline answered {} predictions", predictions.len());
                }
                load.requests += 1;
            }
            anyhow::Ok(load)
        }));
    }
    let mut total = Load::default();
    for t in tasks {
        let l = t.await.context("SQL client panicked")??;
        total.requests += l.requests;
        total.client_ms.extend(l.client_ms);
    }
    total.secs = started.elapsed().as_secs_f64();
    pool.close().await;
    ctx.say(&format!(
        "predict batch {batch} in SQL: {:.0} predictions/s",
        (total.requests * batch) as f64 / total.secs
    ));
    Ok(total)
}
