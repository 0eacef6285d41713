//! `freshness`: at a steady feedback rate, the delay from a feedback row's commit to the commit of
//! the first model version that includes it (`feedback_events.applied_version`).
//!
//! Measured client-side on one clock: the producer records when each INSERT returned (its commit),
//! a listener records when each version's notification on `olps_model_version` arrived (sent at
//! commit). `model_versions.created_at` is `now()`, the transaction's start, so the server-side
//! difference `created_at - timestamp` misses the batch's own duration; it is reported beside it.
//! Baseline: the bare set-based SQL drain, woken the same way (LISTEN olps_feedback, and a poll at
//! the worker's interval on the same topology).
//!
//! The producer writes like the service (`olps::feedback::insert`, which notifies the workers
//! itself) or, with `--plain-sql`, like an application writing to the database directly: a plain
//! INSERT that notifies nobody. On one server the table's trigger then wakes the workers; on Citus
//! nothing does, and the worker's Citus poll interval is what finds the rows.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::data::{self, Stream};
use super::drain::{self, Drainer};
use super::sys::percentiles;
use super::{Ctx, Figure, Report};
use crate::citus::Topology;
use crate::feedback::FeedbackEvent;
use crate::worker::{Worker, WorkerConfig};

/// Target (Deliver): p99 under 20 ms at 1,000 events/s, with the worker's default settings.
pub const TARGET_P99_MS: f64 = 20.0;

#[derive(Debug, Clone)]
pub struct Latencies {
    pub events: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub versions: u64,
    pub achieved_rate: f64,
    /// Server-side p50/p99 of `model_versions.created_at - feedback_events.timestamp`, ms.
    pub server_p50: f64,
    pub server_p99: f64,
}

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let rate = ctx.args.rate.max(1.0);
    let duration = match ctx.args.events {
        Some(n) => n as f64 / rate,
        None => ctx.args.duration,
    }
    .max(0.1);
    let olps = measure(ctx, Drainer::Olps, rate, duration).await?;
    let bare = measure(ctx, Drainer::BareSql, rate, duration).await?;
    let topology = Topology::detect(&ctx.pool).await?;
    let case = format!(
        "{} events/s for {duration:.0} s ({} events){}{}{}",
        super::report::number(rate),
        olps.events,
        if ctx.args.cold_statistics {
            ", statistics not analyzed after the warm-up"
        } else {
            ""
        },
        if ctx.args.plain_sql {
            ", plain-SQL INSERTs"
        } else {
            ""
        },
        match topology {
            Topology::Citus => ", on Citus",
            Topology::Single => "",
        }
    );
    let base = "bare SQL drain, same wake-up";
    for (label, value, baseline) in [
        ("p50", olps.p50, bare.p50),
        ("p95", olps.p95, bare.p95),
        ("p99", olps.p99, bare.p99),
    ] {
        let mut figure = Figure::new("freshness", &format!("{case}: {label}"), "ms", value)
            .lower_is_better()
            .baseline(base, baseline)
            .detail("events", olps.events)
            .detail("versions", olps.versions)
            .detail("max_ms", olps.max)
            .detail("achieved_rate", olps.achieved_rate);
        if label == "p99" {
            figure = figure
                .target_value_at_most(TARGET_P99_MS, "ms")
                .note(format!(
                    "commit of the event -> receipt of the NOTIFY of the version that applied it; \
                     {} versions ({:.1} events each); max {:.1} ms (baseline {:.1} ms)",
                    olps.versions,
                    olps.events as f64 / olps.versions.max(1) as f64,
                    olps.max,
                    bare.max
                ));
        }
        report.add(figure);
    }
    report.add(
        Figure::new(
            "freshness",
            &format!("{case}: server-side p99 (created_at - timestamp)"),
            "ms",
            olps.server_p99,
        )
        .lower_is_better()
        .baseline(base, bare.server_p99)
        .detail("server_p50_ms", olps.server_p50)
        .note(
            "model_versions.created_at is the version transaction's start, so this misses the \
             batch's own duration; the client-side figures above are the measure",
        ),
    );
    Ok(())
}

async fn measure(
    ctx: &Ctx,
    drainer: Drainer,
    rate: f64,
    duration: f64,
) -> anyhow::Result<Latencies> {
    let label = match drainer {
        Drainer::Olps => "freshness-olps",
        Drainer::BareSql => "freshness-bare",
    };
    let model = ctx.create_models(label, 1).await?[0].model_id;
    let result = measure_on(ctx, drainer, model, rate, duration).await;
    ctx.cleanup(&[model]).await?;
    result
}

async fn measure_on(
    ctx: &Ctx,
    drainer: Drainer,
    model: Uuid,
    rate: f64,
    duration: f64,
) -> anyhow::Result<Latencies> {
    data::settle(&ctx.pool).await;
    // Version commits, as their notifications arrive.
    let seen: Arc<Mutex<HashMap<i64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut listener = PgListener::connect(&ctx.url).await?;
    listener
        .listen(crate::timeline::version::VERSION_CHANNEL)
        .await
        .context("LISTEN olps_model_version")?;
    let listening = {
        let seen = seen.clone();
        tokio::spawn(async move {
            #[derive(serde::Deserialize)]
            struct Payload {
                model_id: Uuid,
                version: i64,
            }
            while let Ok(n) = listener.recv().await {
                let at = Instant::now();
                if let Ok(p) = serde_json::from_str::<Payload>(n.payload()) {
                    if p.model_id == model {
                        seen.lock().unwrap().entry(p.version).or_insert(at);
                    }
                }
            }
        })
    };

    let drain_pool = crate::db::connect(&ctx.url, 4).await?;
    let poll = WorkerConfig::default().poll_interval_on(Topology::detect(&ctx.pool).await?);
    let cancel = CancellationToken::new();
    // The worker with its default settings (adaptive batching); the baseline claims up to
    // --batch-size rows (at a steady rate both take what is pending).
    let adaptive = ctx.adaptive()?;
    let draining = {
        let (pool, cancel, batch) = (drain_pool.clone(), cancel.clone(), ctx.args.batch_size);
        tokio::spawn(async move {
            match drainer {
                Drainer::Olps => {
                    let config = WorkerConfig {
                        models: vec![model],
                        batch_size: batch,
                        adaptive: Some(adaptive),
                        ..WorkerConfig::default()
                    };
                    Worker::new(pool, config).run(cancel).await?;
                    anyhow::Ok(())
                }
                Drainer::BareSql => {
                    drain::bare_drain_listening(pool, vec![model], batch, poll, cancel).await
                }
            }
        })
    };
    // Let the drainer reach its LISTEN before the first event.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let stream = Stream::new(ctx.args.features, ctx.args.feature_pool, 17);
    // Steady state, not a cold start: a warm-up stream (2 s worth, at least 2,000 events) is
    // drained first, then the hot tables are analyzed, as autovacuum does within a minute of a
    // new deployment. (Cold, the first statements are planned on empty tables and the plans
    // stay until that ANALYZE: see worker::queue::plan_for_any_statistics.) Warm-up events are
    // not measured. `--cold-statistics` skips that ANALYZE.
    let warm = ((rate * 2.0) as u64).max(2000);
    data::load(&ctx.pool, &[model], &stream, 1_000_000_000, warm, None).await?;
    data::wait_applied(
        &ctx.pool,
        &[model],
        warm,
        &AtomicU64::new(0),
        Duration::from_secs(120),
    )
    .await?;
    if !ctx.args.cold_statistics {
        sqlx::query("ANALYZE feedback_events, feedback_queue, model_parameters, parameter_updates")
            .execute(&ctx.pool)
            .await?;
    }
    data::settle(&ctx.pool).await;
    let seen_before: std::collections::HashSet<i64> =
        seen.lock().unwrap().keys().copied().collect();
    let measured_from = chrono::Utc::now();
    let total = (rate * duration).round().max(1.0) as u64;
    let mut committed: HashMap<Uuid, Instant> = HashMap::with_capacity(total as usize);
    let producer = crate::db::connect(&ctx.url, 1).await?;
    let done = Arc::new(AtomicU64::new(0));
    let progress = ctx.progress(
        &format!(
            "freshness ({label}) at {rate:.0} events/s",
            label = drainer_name(drainer)
        ),
        total,
        done.clone(),
    );
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u64;
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(total);
        if due <= sent {
            continue;
        }
        let events: Vec<FeedbackEvent> = (sent..due)
            .map(|i| {
                let e = stream.event(i);
                FeedbackEvent {
                    entity_id: format!("e{i}"),
                    feedback_type: "explicit".into(),
                    feedback_value: e.label,
                    confidence: 1.0,
                    metadata: serde_json::from_str(&data::metadata_json(&e)).expect("JSON"),
                    timestamp: None,
                    prediction_id: None,
                    id: None,
                }
            })
            .collect();
        let ids = if ctx.args.plain_sql {
            insert_plain(&producer, model, &events).await?
        } else {
            crate::feedback::insert(&producer, model, &events)
                .await?
                .ids
        };
        let at = Instant::now();
        for id in ids {
            committed.insert(id, at);
        }
        sent = due;
        done.store(sent, std::sync::atomic::Ordering::Relaxed);
    }
    let achieved_rate = sent as f64 / started.elapsed().as_secs_f64();
    drop(progress);

    let applied_done = AtomicU64::new(0);
    let waited = data::wait_applied(
        &ctx.pool,
        &[model],
        warm + total,
        &applied_done,
        Duration::from_secs(60),
    )
    .await;
    // The last version's notification follows its commit closely.
    let current: i64 = sqlx::query_scalar("SELECT version FROM models WHERE model_id = $1")
        .bind(model)
        .fetch_one(&ctx.pool)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.lock().unwrap().contains_key(&current) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    let drained = draining.await;
    listening.abort();
    producer.close().await;
    drain_pool.close().await;
    waited?;
    drained.context("drainer panicked")??;

    let applied: Vec<(Uuid, Option<i64>)> =
        sqlx::query_as("SELECT id, applied_version FROM feedback_events WHERE model_id = $1")
            .bind(model)
            .fetch_all(&ctx.pool)
            .await?;
    let seen = seen.lock().unwrap().clone();
    let mut delays = Vec::with_capacity(applied.len());
    let mut missing = 0;
    for (id, version) in &applied {
        let Some(v) = version else {
            bail!("event {id} was not applied");
        };
        let Some(at) = committed.get(id) else {
            continue; // a warm-up event
        };
        match seen.get(v) {
            Some(notified) => {
                delays.push(notified.saturating_duration_since(*at).as_secs_f64() * 1e3)
            }
            None => missing += 1,
        }
    }
    if missing > 0 {
        bail!("{missing} events' versions were never announced on olps_model_version");
    }
    let (server_p50, server_p99): (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d)
         FROM (SELECT extract(epoch FROM v.created_at - e.timestamp)::float8 * 1000 AS d
               FROM feedback_events e
               JOIN model_versions v ON v.model_id = e.model_id AND v.model_version = e.applied_version
               WHERE e.model_id = $1 AND e.timestamp >= $2) t",
    )
    .bind(model)
    .bind(measured_from)
    .fetch_one(&ctx.pool)
    .await?;
    let (p50, p95, p99, max) = percentiles(&mut delays);
    let versions = seen.keys().filter(|v| !seen_before.contains(v)).count() as u64;
    ctx.say(&format!(
        "freshness ({}): p50 {p50:.1} ms, p95 {p95:.1} ms, p99 {p99:.1} ms over {} events, {versions} versions",
        drainer_name(drainer),
        delays.len()
    ));
    Ok(Latencies {
        events: delays.len() as u64,
        p50,
        p95,
        p99,
        max,
        versions,
        achieved_rate,
        server_p50: server_p50.unwrap_or(f64::NAN),
        server_p99: server_p99.unwrap_or(f64::NAN),
    })
}

/// The events as an application writing to the database directly inserts them: one INSERT that
/// sends no NOTIFY of its own. Returns their ids.
async fn insert_plain(
    db: &sqlx::PgPool,
    model: Uuid,
    events: &[FeedbackEvent],
) -> anyhow::Result<Vec<Uuid>> {
    let ids: Vec<Uuid> = events.iter().map(|_| Uuid::new_v4()).collect();
    let entity: Vec<&str> = events.iter().map(|e| e.entity_id.as_str()).collect();
    let value: Vec<f64> = events.iter().map(|e| e.feedback_value).collect();
    let metadata: Vec<String> = events.iter().map(|e| e.metadata.to_string()).collect();
    sqlx::query(
        "INSERT INTO feedback_events
             (model_id, id, entity_id, feedback_type, feedback_value, confidence, metadata)
         SELECT $1, u.id, u.entity_id, 'explicit', u.value, 1, u.metadata::jsonb
         FROM unnest($2::uuid[], $3::text[], $4::float8[], $5::text[]) WITH ORDINALITY
              AS u(id, entity_id, value, metadata, ord)
         ORDER BY u.ord",
    )
    .bind(model)
    .bind(&ids)
    .bind(&entity)
    .bind(&value)
    .bind(&metadata)
    .execute(db)
    .await?;
    Ok(ids)
}

fn drainer_name(d: Drainer) -> &'static str {
    match d {
        Drainer::Olps => "olps worker",
        Drainer::BareSql => "bare SQL",
    }
}
