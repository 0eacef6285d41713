//! `soak`: a long run at a fixed feedback rate with a worker draining, and a REPEATABLE READ
//! transaction (an analyst's long query, a forgotten session) held open during the middle third.
//! While it is open, VACUUM cannot remove any row deleted or updated after it started: the
//! classic way a PostgreSQL queue degrades (every claim walks the index entries of the rows
//! acknowledged since). Per interval it reports the drain, the worker's capacity, the queue
//! depth, dead tuples and sizes of `feedback_queue` and `feedback_events`, and claim latency,
//! then a verdict: the capacity during the hold against before it (goal: within 20 %), and the
//! sizes at the end against before the hold (goal: back to them, without VACUUM FULL).
//!
//! The baseline of every figure is the same run's own "before the hold" phase.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::data::{self, Stream};
use super::{Ctx, Figure, Report};
use crate::feedback::FeedbackEvent;
use crate::worker::{Worker, WorkerConfig, WorkerStats};

/// Goal: the worker's capacity while the snapshot is held stays within 20 % of before.
pub const TARGET_HOLD_RATIO: f64 = 0.8;
/// Goal: at the end, the queue's size is back within 25 % of its size before the hold (it is a
/// few MB at most; a bloated queue grows by the whole hold's traffic).
pub const TARGET_SIZE_RATIO: f64 = 1.25;

/// Which third of the run an interval belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Before,
    Hold,
    After,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::Hold => "hold",
            Phase::After => "after",
        }
    }
}

/// Table and index bytes and dead tuples of a table (with its partitions, if any).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, sqlx::FromRow)]
pub struct TableSize {
    pub table_bytes: i64,
    pub index_bytes: i64,
    pub dead_tuples: i64,
}

impl TableSize {
    pub fn total(&self) -> i64 {
        self.table_bytes + self.index_bytes
    }
}

/// One interval of the run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Interval {
    pub phase: Phase,
    /// Seconds since the measured run started, at the interval's end.
    pub at_s: f64,
    pub fed: u64,
    pub applied: u64,
    /// Events applied per second of the interval (the feed rate when the worker keeps up).
    pub drain_per_s: f64,
    /// Events applied per second the worker spent in batches: its capacity, whatever the feed.
    pub capacity_per_s: f64,
    /// Events fed and not yet applied, at the interval's end.
    pub depth: i64,
    pub claims: u64,
    pub claim_mean_ms: f64,
    pub claim_max_ms: f64,
    pub queue: TableSize,
    pub events: TableSize,
    /// Events stored in feedback_events so far (for bytes per event).
    pub events_stored: i64,
}

/// What the worker did, shared with the sampler.
#[derive(Default)]
struct Shared {
    stats: WorkerStats,
}

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let total = match ctx.args.seconds {
        Some(s) => s,
        None => ctx.args.minutes * 60.0,
    };
    anyhow::ensure!(
        total.is_finite() && total >= 3.0,
        "soak: the run must last at least 3 seconds (--minutes or --seconds)"
    );
    let interval = ctx
        .args
        .interval_secs
        .unwrap_or_else(|| (total / 9.0).min(60.0))
        .clamp(0.5, total / 3.0);
    let rate = ctx.args.rate.max(1.0);
    let model = ctx.create_models("soak", 1).await?[0].model_id;
    let result = run_on(ctx, report, model, total, interval, rate).await;
    ctx.cleanup(&[model]).await?;
    result
}

async fn sizes(pool: &PgPool, table: &str) -> anyhow::Result<TableSize> {
    // The table and, if it is partitioned, its partitions (pg_partition_tree lists nothing for a
    // plain table; a partitioned parent has no storage of its own).
    Ok(sqlx::query_as(
        "SELECT coalesce(sum(pg_table_size(t.relid)), 0)::int8 AS table_bytes,
                coalesce(sum(pg_indexes_size(t.relid)), 0)::int8 AS index_bytes,
                coalesce(sum(s.n_dead_tup), 0)::int8 AS dead_tuples
         FROM (SELECT $1::regclass AS relid
               UNION SELECT relid FROM pg_partition_tree($1::regclass)) t
         LEFT JOIN pg_stat_user_tables s ON s.relid = t.relid",
    )
    .bind(table)
    .fetch_one(pool)
    .await?)
}

fn event_for(stream: &Stream, i: u64) -> FeedbackEvent {
    let e = stream.event(i);
    // A realistic mix: mostly explicit labels, some implicit ones, a few of other types.
    let feedback_type = match i % 10 {
        0..=6 => "explicit",
        7 | 8 => "implicit",
        _ => "view",
    };
    FeedbackEvent {
        entity_id: format!("e{i}"),
        feedback_type: feedback_type.into(),
        feedback_value: e.label,
        confidence: 1.0,
        metadata: serde_json::from_str(&data::metadata_json(&e)).expect("JSON"),
        timestamp: None,
        prediction_id: None,
        id: None,
    }
}

async fn run_on(
    ctx: &Ctx,
    report: &mut Report,
    model: Uuid,
    total: f64,
    interval: f64,
    rate: f64,
) -> anyhow::Result<()> {
    let stream = Stream::new(ctx.args.features, ctx.args.feature_pool, 29);
    let shared = Arc::new(Mutex::new(Shared::default()));
    let cancel = CancellationToken::new();
    let worker_pool = crate::db::connect(&ctx.url, 4).await?;
    // The worker's loop (Worker::run's, without its LISTEN: a pass whenever there is work, a
    // 20 ms pause when there is none), with its totals shared so the sampler can read them.
    let working = {
        let (pool, cancel, shared) = (worker_pool.clone(), cancel.clone(), shared.clone());
        let config = WorkerConfig {
            models: vec![model],
            batch_size: ctx.args.batch_size,
            ..WorkerConfig::default()
        };
        tokio::spawn(async move {
            let mut worker = Worker::new(pool, config);
            while !cancel.is_cancelled() {
                let pass = worker.run_pass().await?;
                let idle = pass.batches == 0 && pass.dead == 0;
                shared.lock().unwrap().stats.add(&pass);
                if idle {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            anyhow::Ok(())
        })
    };

    // Warm-up (not measured): 2 s worth of events, drained, then ANALYZE, as in freshness.
    let warm = ((rate * 2.0) as u64).max(1000);
    data::load(&ctx.pool, &[model], &stream, 1_000_000_000, warm, None).await?;
    data::wait_applied(
        &ctx.pool,
        &[model],
        warm,
        &AtomicU64::new(0),
        Duration::from_secs(120),
    )
    .await?;
    sqlx::query("ANALYZE feedback_events, feedback_queue, model_parameters, parameter_updates")
        .execute(&ctx.pool)
        .await?;
    data::settle(&ctx.pool).await;

    // The feeder: SQL inserts every 10 ms of the events due by then.
    let fed = Arc::new(AtomicU64::new(0));
    let feeding = {
        let (url, cancel, fed, stream) = (ctx.url.clone(), cancel.clone(), fed.clone(), stream);
        tokio::spawn(async move {
            let producer = crate::db::connect(&url, 1).await?;
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = 0u64;
            while !cancel.is_cancelled() {
                tick.tick().await;
                let due = (started.elapsed().as_secs_f64() * rate) as u64;
                if due <= sent {
                    continue;
                }
                let events: Vec<FeedbackEvent> =
                    (sent..due).map(|i| event_for(&stream, i)).collect();
                crate::feedback::insert(&producer, model, &events).await?;
                sent = due;
                fed.store(sent, Ordering::Relaxed);
            }
            producer.close().await;
            anyhow::Ok(())
        })
    };

    let started = Instant::now();
    let hold_from = total / 3.0;
    let hold_until = 2.0 * total / 3.0;
    let mut holder: Option<sqlx::PgConnection> = None;
    let mut held_xmin: Option<String> = None;
    let mut intervals: Vec<Interval> = Vec::new();
    let mut last_stats = WorkerStats::default();
    let mut last_applied = data::applied(&ctx.pool, &[model]).await?;
    let mut last_fed = 0u64;
    let mut last_at = 0.0f64;
    let mut next = interval;
    let progress = ctx.progress(
        &format!("soak at {rate:.0} events/s for {total:.0} s"),
        (rate * total) as u64,
        fed.clone(),
    );
    let outcome: anyhow::Result<()> = async {
        loop {
            let now = started.elapsed().as_secs_f64();
            if holder.is_none() && now >= hold_from && now < hold_until {
                let mut conn = sqlx::PgConnection::connect(&ctx.url).await?;
                sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
                    .execute(&mut conn)
                    .await?;
                // Reading something takes the snapshot, which holds back the xmin horizon.
                sqlx::query("SELECT count(*) FROM feedback_events WHERE model_id = $1")
                    .bind(model)
                    .fetch_one(&mut conn)
                    .await?;
                held_xmin = sqlx::query_scalar(
                    "SELECT backend_xmin::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                )
                .fetch_one(&mut conn)
                .await?;
                ctx.say(&format!(
                    "soak: holding a REPEATABLE READ snapshot (xmin {})",
                    held_xmin.as_deref().unwrap_or("?")
                ));
                holder = Some(conn);
            }
            if now >= hold_until {
                if let Some(mut conn) = holder.take() {
                    sqlx::query("COMMIT").execute(&mut conn).await?;
                    conn.close().await?;
                    ctx.say("soak: released the snapshot");
                }
            }
            if now >= next {
                let stats = shared.lock().unwrap().stats.clone();
                let applied = data::applied(&ctx.pool, &[model]).await?;
                let fed_now = fed.load(Ordering::Relaxed);
                let secs = now - last_at;
                let d_examples = stats.examples - last_stats.examples;
                let d_busy = stats.batch_seconds - last_stats.batch_seconds;
                let d_claims = stats.claims - last_stats.claims;
                let d_claim_s = stats.claim_seconds - last_stats.claim_seconds;
                let events_stored: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM feedback_events WHERE model_id = $1")
                        .bind(model)
                        .fetch_one(&ctx.pool)
                        .await?;
                // By the interval's scheduled middle: a sample taken late on a loaded machine
                // still belongs to the phase it was scheduled in.
                let mid = next - interval / 2.0;
                let phase = if mid < hold_from {
                    Phase::Before
                } else if mid < hold_until {
                    Phase::Hold
                } else {
                    Phase::After
                };
                intervals.push(Interval {
                    phase,
                    at_s: now,
                    fed: fed_now - last_fed,
                    applied: applied - last_applied,
                    drain_per_s: (applied - last_applied) as f64 / secs,
                    capacity_per_s: if d_busy > 0.0 {
                        d_examples as f64 / d_busy
                    } else {
                        f64::NAN
                    },
                    depth: fed_now as i64 + warm as i64 - applied as i64,
                    claims: d_claims,
                    claim_mean_ms: if d_claims > 0 {
                        1e3 * d_claim_s / d_claims as f64
                    } else {
                        f64::NAN
                    },
                    // The longest claim since the start: per-interval maxima need the worker's
                    // own histogram; the running maximum still shows when it grew.
                    claim_max_ms: 1e3 * stats.claim_max_seconds,
                    queue: sizes(&ctx.pool, "feedback_queue").await?,
                    events: sizes(&ctx.pool, "feedback_events").await?,
                    events_stored,
                });
                last_stats = stats;
                last_applied = applied;
                last_fed = fed_now;
                last_at = now;
                next += interval;
                if next > total + 1e-6 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
    .await;
    drop(progress);
    cancel.cancel();
    if let Some(mut conn) = holder.take() {
        let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
    }
    let fed_result = feeding.await.context("feeder panicked")?;
    let worked = working.await.context("worker panicked")?;
    worker_pool.close().await;
    outcome?;
    fed_result?;
    worked?;

    let table = interval_table(&intervals);
    let verdict = verdict(&intervals);
    println!("{table}");
    println!("{}", verdict.line);
    report.add_section(
        "soak",
        format!(
            "Per interval ({interval:.0} s) at {rate:.0} events/s for {total:.0} s, batch {}; \
             the REPEATABLE READ transaction was held from {hold_from:.0} s to \
             {hold_until:.0} s (xmin {}).\n\n{}\n{}\n",
            ctx.args.batch_size,
            held_xmin.as_deref().unwrap_or("?"),
            interval_markdown(&intervals),
            verdict.line
        ),
    );
    let case = format!("{rate:.0} events/s, {:.1} min", total / 60.0);
    report.add(
        Figure::new(
            "soak",
            &format!("{case}: worker capacity during the hold"),
            "events/s",
            verdict.hold_capacity,
        )
        .baseline("before the hold", verdict.before_capacity)
        .target_ratio_at_least(TARGET_HOLD_RATIO)
        .detail("intervals", serde_json::to_value(&intervals)?)
        .note(
            "events applied per second spent in batches (claim, learn, write, commit): the drain \
             rate the worker can sustain, whatever the feed",
        ),
    );
    report.add(
        Figure::new(
            "soak",
            &format!("{case}: drain during the hold"),
            "events/s",
            verdict.hold_drain,
        )
        .baseline("before the hold", verdict.before_drain),
    );
    report.add(
        Figure::new(
            "soak",
            &format!("{case}: claim latency during the hold"),
            "ms",
            verdict.hold_claim_ms,
        )
        .lower_is_better()
        .baseline("before the hold", verdict.before_claim_ms),
    );
    report.add(
        Figure::new(
            "soak",
            &format!("{case}: feedback_queue size at the end (table + indexes)"),
            "bytes",
            verdict.queue_end as f64,
        )
        .lower_is_better()
        .baseline("before the hold", verdict.queue_before as f64)
        .target_ratio_at_most(TARGET_SIZE_RATIO)
        .detail("queue_peak_bytes", verdict.queue_peak),
    );
    report.add(
        Figure::new(
            "soak",
            &format!("{case}: feedback_events bytes per stored event at the end"),
            "bytes",
            verdict.events_per_event_end,
        )
        .lower_is_better()
        .baseline("before the hold", verdict.events_per_event_before)
        .note("table + indexes ÷ events stored: feedback_events grows with its events (retention trims it)"),
    );
    Ok(())
}

/// The verdict over the intervals.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub before_capacity: f64,
    pub hold_capacity: f64,
    pub before_drain: f64,
    pub hold_drain: f64,
    pub before_claim_ms: f64,
    pub hold_claim_ms: f64,
    pub queue_before: i64,
    pub queue_peak: i64,
    pub queue_end: i64,
    pub events_per_event_before: f64,
    pub events_per_event_end: f64,
    pub line: String,
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

pub fn verdict(intervals: &[Interval]) -> Verdict {
    let of = |p: Phase| intervals.iter().filter(move |i| i.phase == p);
    let last_of = |p: Phase| of(p).next_back();
    let mut v = Verdict {
        before_capacity: mean(of(Phase::Before).map(|i| i.capacity_per_s)),
        hold_capacity: mean(of(Phase::Hold).map(|i| i.capacity_per_s)),
        before_drain: mean(of(Phase::Before).map(|i| i.drain_per_s)),
        hold_drain: mean(of(Phase::Hold).map(|i| i.drain_per_s)),
        before_claim_ms: mean(of(Phase::Before).map(|i| i.claim_mean_ms)),
        hold_claim_ms: mean(of(Phase::Hold).map(|i| i.claim_mean_ms)),
        queue_before: last_of(Phase::Before).map_or(0, |i| i.queue.total()),
        queue_peak: intervals.iter().map(|i| i.queue.total()).max().unwrap_or(0),
        queue_end: intervals.last().map_or(0, |i| i.queue.total()),
        ..Verdict::default()
    };
    let per_event = |i: &Interval| i.events.total() as f64 / i.events_stored.max(1) as f64;
    v.events_per_event_before = last_of(Phase::Before).map_or(f64::NAN, per_event);
    v.events_per_event_end = intervals.last().map_or(f64::NAN, per_event);
    let capacity_ratio = v.hold_capacity / v.before_capacity;
    let size_ratio = v.queue_end as f64 / v.queue_before.max(1) as f64;
    let ok = capacity_ratio >= TARGET_HOLD_RATIO && size_ratio <= TARGET_SIZE_RATIO;
    v.line = format!(
        "verdict: {}: worker capacity during the hold {:.0} events/s vs {:.0} before ({:.0} %); \
         drain {:.0} vs {:.0} events/s; claim {:.2} vs {:.2} ms; feedback_queue {} at the end vs \
         {} before the hold ({:.2}x, peak {}); feedback_events {:.0} vs {:.0} bytes per event",
        if ok { "healthy" } else { "DEGRADED" },
        v.hold_capacity,
        v.before_capacity,
        100.0 * capacity_ratio,
        v.hold_drain,
        v.before_drain,
        v.hold_claim_ms,
        v.before_claim_ms,
        mib(v.queue_end),
        mib(v.queue_before),
        size_ratio,
        mib(v.queue_peak),
        v.events_per_event_end,
        v.events_per_event_before,
    );
    v
}

fn mib(bytes: i64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

const COLUMNS: [&str; 14] = [
    "t (s)",
    "phase",
    "fed",
    "drain/s",
    "capacity/s",
    "depth",
    "claim ms",
    "claim max",
    "queue dead",
    "queue tbl MiB",
    "queue idx MiB",
    "events dead",
    "events tbl MiB",
    "events idx MiB",
];

fn cells(i: &Interval) -> [String; 14] {
    let m = |b: i64| format!("{:.2}", b as f64 / (1024.0 * 1024.0));
    [
        format!("{:.0}", i.at_s),
        i.phase.name().into(),
        i.fed.to_string(),
        format!("{:.0}", i.drain_per_s),
        format!("{:.0}", i.capacity_per_s),
        i.depth.to_string(),
        format!("{:.2}", i.claim_mean_ms),
        format!("{:.1}", i.claim_max_ms),
        i.queue.dead_tuples.to_string(),
        m(i.queue.table_bytes),
        m(i.queue.index_bytes),
        i.events.dead_tuples.to_string(),
        m(i.events.table_bytes),
        m(i.events.index_bytes),
    ]
}

/// The intervals as a plain-text table.
pub fn interval_table(intervals: &[Interval]) -> String {
    let rows: Vec<[String; 14]> = intervals.iter().map(cells).collect();
    let mut widths = COLUMNS.map(|c| c.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        let _ = writeln!(out, "{}", parts.join("  "));
    };
    line(&mut out, &COLUMNS.map(String::from));
    for r in &rows {
        line(&mut out, r);
    }
    out
}

fn interval_markdown(intervals: &[Interval]) -> String {
    let mut md = format!("| {} |\n", COLUMNS.join(" | "));
    let _ = writeln!(
        md,
        "|{}",
        COLUMNS.iter().map(|_| " ---: |").collect::<String>()
    );
    for i in intervals {
        let _ = writeln!(md, "| {} |", cells(i).join(" | "));
    }
    md
}
