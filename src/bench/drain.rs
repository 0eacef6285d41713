//! `drain`: events per second turned into committed parameter updates with full history.
//!
//! - olps: in-process [`Worker`]s (each with its own pool, as separate processes would have),
//!   restricted to the case's models, over a preloaded queue.
//! - Baseline: a bare set-based SQL drain doing the same claim, parameter writes, history insert,
//!   acknowledgement and version bump per batch with no learning ([`BARE_BATCH_SQL`]).
//! - The naive design of the source document: one transaction per feedback event, one SELECT and
//!   one UPDATE per parameter and one INSERT per history row.
//! - Memory: `olps serve` (ingesting the stream over HTTP) and `olps worker --until-empty`
//!   (draining it) as child processes, their peak resident memory (VmHWM) at each stream size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::data::{self, DrainCheck, Stream};
use super::sys::Child;
use super::{client, Ctx, Figure, Report};
use crate::worker::batching::AdaptiveBatching;
use crate::worker::{Worker, WorkerConfig};

/// Targets (Deliver).
pub const TARGET_RATIO: f64 = 0.8;
pub const TARGET_NAIVE_SPEEDUP: f64 = 100.0;
pub const TARGET_EVENTS_PER_SEC: f64 = 10_000.0;
/// Targets of the default settings (adaptive batching): events/s, and the ratio to a fixed batch
/// of 1,000 in the same run.
pub const TARGET_DEFAULT_EVENTS_PER_SEC: f64 = 25_000.0;
pub const TARGET_DEFAULT_VS_FIXED: f64 = 3.0;

/// No progress for this long fails a case.
const STALL: Duration = Duration::from_secs(180);

/// One batch of the bare-SQL baseline, run after `SELECT ... FROM models ... FOR UPDATE` in the
/// same transaction: claim up to $2 pending rows of model $1 in queue order, sum a dummy gradient
/// per touched parameter (server-side, no learning), update or insert the parameters (as the
/// worker does), append one history
/// row per parameter (its net change in the version), delete the queue rows, mark the events
/// processed, bump the version, record it and notify. Returns the number of claimed rows.
pub const BARE_BATCH_SQL: &str = "
WITH claimed AS (
    SELECT q.id, q.feedback_id, e.feedback_value AS label, e.metadata -> 'features' AS features
    FROM feedback_queue q
    JOIN feedback_events e ON e.model_id = q.model_id AND e.id = q.feedback_id
    WHERE q.model_id = $1 AND q.status = 'pending'
    ORDER BY q.priority DESC, q.created_at, q.seq
    LIMIT $2
    FOR UPDATE OF q SKIP LOCKED
), m AS (
    SELECT version + 1 AS v FROM models WHERE model_id = $1
), grads AS (
    SELECT f.key AS parameter_id, sum(f.value::float8 * (c.label - 0.5)) AS g, count(*) AS n
    FROM claimed c, jsonb_each_text(c.features) f
    GROUP BY f.key
    UNION ALL
    SELECT '__intercept__', sum(c.label - 0.5), count(*) FROM claimed c HAVING count(*) > 0
), cur AS (
    SELECT g.parameter_id, p.current_value AS old_value,
           coalesce(p.current_value, 0) + 0.001 * g.g AS new_value,
           coalesce(p.update_count, 0) + g.n AS cnt
    FROM grads g
    LEFT JOIN model_parameters p ON p.model_id = $1 AND p.parameter_id = g.parameter_id
), updated AS (
    UPDATE model_parameters p SET current_value = c.new_value, update_count = c.cnt,
        version = (SELECT v FROM m), last_updated = now()
    FROM cur c
    WHERE p.model_id = $1 AND p.parameter_id = c.parameter_id AND c.old_value IS NOT NULL
), inserted AS (
    INSERT INTO model_parameters
        (model_id, parameter_id, current_value, update_count, version, last_updated)
    SELECT $1, parameter_id, new_value, cnt, (SELECT v FROM m), now() FROM cur
    WHERE old_value IS NULL
    ORDER BY parameter_id
), history AS (
    INSERT INTO parameter_updates
        (model_id, model_version, parameter_id, old_value, new_value, update_count,
         update_type, learning_rate, source)
    SELECT $1, (SELECT v FROM m), parameter_id, old_value, new_value, cnt,
           'gradient', 0.001, 'bench-bare-sql'
    FROM cur ORDER BY parameter_id
), acked AS (
    -- By key, as the worker acknowledges (arrays of ids): a generic plan estimates the claim
    -- at 30,000 rows and joined it by hashing the whole queue and every event (0.5 s a batch of
    -- 1,000 over a 300,000-event backlog, 2 s over 1M).
    DELETE FROM feedback_queue q
    WHERE q.model_id = $1 AND q.id = ANY(ARRAY(SELECT c.id FROM claimed c))
    RETURNING q.feedback_id
), marked AS (
    UPDATE feedback_events e SET processed = TRUE, applied_version = (SELECT v FROM m)
    WHERE e.model_id = $1 AND e.id = ANY(ARRAY(SELECT a.feedback_id FROM acked a))
), bumped AS (
    UPDATE models SET version = version + 1,
        examples_seen = examples_seen + (SELECT count(*) FROM claimed), updated_at = now()
    WHERE model_id = $1 AND EXISTS (SELECT 1 FROM claimed)
    RETURNING version
), recorded AS (
    INSERT INTO model_versions
        (model_id, model_version, kind, examples, parameters_changed, examples_seen, source)
    SELECT $1, b.version, 'gradient', (SELECT count(*) FROM claimed)::int4,
           (SELECT count(*) FROM cur)::int4, 0, 'bench-bare-sql'
    FROM bumped b
)
-- The notification in the outer query, not in a CTE of its own: Citus materializes such a CTE
-- and refuses its void column (column pg_notify has pseudo-type void).
SELECT (SELECT count(*) FROM claimed)::int8 AS claimed,
       count(pg_notify('olps_model_version',
                       json_build_object('model_id', $1, 'version', b.version)::text))::int8
FROM bumped b";

/// One bare-SQL batch of one model in its own transaction. None: the model is locked by another
/// connection; Some(n): n rows were applied (0: nothing pending).
pub async fn bare_batch(
    conn: &mut sqlx::PgConnection,
    model: Uuid,
    batch: i64,
) -> anyhow::Result<Option<i64>> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    let locked: Option<i64> =
        sqlx::query_scalar("SELECT version FROM models WHERE model_id = $1 FOR UPDATE SKIP LOCKED")
            .bind(model)
            .fetch_optional(&mut *tx)
            .await?;
    if locked.is_none() {
        tx.rollback().await?;
        return Ok(None);
    }
    // Plan-stable like the worker (see `worker::queue::claim`).
    crate::worker::queue::plan_for_any_statistics(&mut tx).await?;
    let (claimed,): (i64,) = sqlx::query_as(BARE_BATCH_SQL)
        .bind(model)
        .bind(batch)
        .fetch_one(&mut *tx)
        .await?;
    if claimed == 0 {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(Some(claimed))
}

/// Bare-SQL drain on one connection: round-robin over the models (starting at `offset`) until
/// none has pending rows or `cancel` fires.
pub async fn bare_drain(
    pool: PgPool,
    models: Vec<Uuid>,
    batch: i64,
    offset: usize,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    loop {
        let (mut progressed, mut skipped) = (false, false);
        for k in 0..models.len() {
            if cancel.is_cancelled() {
                return Ok(());
            }
            match bare_batch(&mut conn, models[(k + offset) % models.len()], batch).await? {
                None => skipped = true,
                Some(n) => progressed |= n > 0,
            }
        }
        if !progressed && !skipped {
            return Ok(());
        }
        if !progressed {
            // Everything locked by the other connections: wait a little (a worker waits for a
            // notification or its poll), without spinning on the shared cores.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Bare-SQL drain of one model on one connection with the given batch sizes in turn (those an
/// adaptive worker chose), then the last size until nothing is pending or `cancel` fires.
pub async fn bare_drain_sizes(
    pool: PgPool,
    model: Uuid,
    sizes: Arc<Vec<i64>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let last = sizes.last().copied().unwrap_or(1000).max(1);
    let mut next = sizes.iter().copied();
    while !cancel.is_cancelled() {
        let size = next.next().unwrap_or(last).max(1);
        match bare_batch(&mut conn, model, size).await? {
            Some(0) => return Ok(()),
            Some(_) => {}
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    Ok(())
}

/// Bare-SQL drain that waits for work like the worker does (LISTEN olps_feedback, or a poll every
/// `poll`: the worker's interval on the same topology) until cancelled: the freshness baseline.
pub async fn bare_drain_listening(
    pool: PgPool,
    models: Vec<Uuid>,
    batch: i64,
    poll: Duration,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(crate::worker::FEEDBACK_CHANNEL).await?;
    while !cancel.is_cancelled() {
        bare_drain(pool.clone(), models.clone(), batch, 0, cancel.clone()).await?;
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(poll) => {},
            n = listener.recv() => { n?; }
        }
    }
    Ok(())
}

/// What one drain case measured.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub events: u64,
    pub secs: f64,
    pub check: DrainCheck,
    /// Drift events the worker recorded (0 for the baselines).
    pub drift_events: i64,
    /// The rate of each run when the case was repeated.
    pub runs: Vec<f64>,
    /// The rows of each version's batch, in version order (model by model).
    pub batch_sizes: Vec<i64>,
}

impl CaseResult {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.secs
    }

    /// Repeated runs as one: the mean rate (events over the mean time), the first run's checks,
    /// and each run's rate in `runs`.
    fn mean(runs: Vec<CaseResult>) -> CaseResult {
        let rates: Vec<f64> = runs.iter().map(CaseResult::rate).collect();
        let secs = runs.iter().map(|r| r.secs).sum::<f64>() / runs.len() as f64;
        let mut first = runs.into_iter().next().expect("at least one run");
        first.secs = secs;
        first.runs = rates;
        first
    }

    /// The mean rows per batch.
    pub fn mean_batch(&self) -> f64 {
        self.batch_sizes.iter().sum::<i64>() as f64 / self.batch_sizes.len().max(1) as f64
    }

    fn details(&self, figure: Figure) -> Figure {
        let c = &self.check;
        figure
            .detail("events", self.events)
            .detail("seconds", self.secs)
            .detail("applied", c.processed)
            .detail("queue_left", c.queue_left)
            .detail("versions", c.versions)
            .detail("history_rows", c.history_rows)
            .detail(
                "history_rows_per_event",
                c.history_rows as f64 / self.events.max(1) as f64,
            )
            .detail(
                "events_per_version",
                self.events as f64 / c.versions.max(1) as f64,
            )
            .detail("drift_events", self.drift_events)
            .detail("runs_events_per_sec", self.runs.clone())
            .detail("mean_batch", self.mean_batch())
            .detail(
                "max_batch",
                self.batch_sizes.iter().copied().max().unwrap_or(0),
            )
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Drainer {
    Olps,
    BareSql,
}

/// Creates `models` models, preloads `n` events (untimed), drains them with `workers` olps
/// workers or bare-SQL connections, checks every event was applied, deletes the models.
pub async fn case(ctx: &Ctx, drainer: Drainer, shape: Shape, n: u64) -> anyhow::Result<CaseResult> {
    let label = match drainer {
        Drainer::Olps => "drain-olps",
        Drainer::BareSql => "drain-bare",
    };
    let settings = match &shape.settings {
        Some(s) => s.clone(),
        None => ctx.settings()?,
    };
    let created = ctx
        .create_models_with(label, shape.models, &settings)
        .await?;
    let ids: Vec<Uuid> = created.iter().map(|m| m.model_id).collect();
    let result = case_on(ctx, drainer, &shape, &ids, n).await;
    ctx.cleanup(&ids).await?;
    result
}

/// The shape of a drain case: workers (or bare-SQL connections), models, batch size, the
/// models' learner settings (None: the bench settings) and how batches are sized.
#[derive(Debug, Clone)]
pub struct Shape {
    pub workers: usize,
    pub models: usize,
    pub batch: i64,
    pub settings: Option<crate::learner::LearnerConfig>,
    pub sizing: Sizing,
}

/// How a drain case sizes its batches.
#[derive(Debug, Clone, Default)]
pub enum Sizing {
    /// Every batch `Shape::batch` rows.
    #[default]
    Fixed,
    /// The worker's adaptive batching (olps only).
    Adaptive(AdaptiveBatching),
    /// These batch sizes in turn (bare SQL only, one worker, one model): an adaptive run's.
    Replay(Arc<Vec<i64>>),
}

async fn case_on(
    ctx: &Ctx,
    drainer: Drainer,
    shape: &Shape,
    ids: &[Uuid],
    n: u64,
) -> anyhow::Result<CaseResult> {
    let workers = shape.workers;
    let batching = match &shape.sizing {
        Sizing::Fixed => format!("batch {}", shape.batch),
        Sizing::Adaptive(b) => format!(
            "adaptive batches {}-{} within {} ms",
            b.min,
            b.max,
            b.budget.as_millis()
        ),
        Sizing::Replay(sizes) => format!("the {} batch sizes of the adaptive run", sizes.len()),
    };
    let what = format!(
        "{} drain, {workers} worker(s), {} model(s), {batching}",
        match drainer {
            Drainer::Olps => "olps",
            Drainer::BareSql => "bare-SQL",
        },
        ids.len(),
    );
    let stream = Stream::new(ctx.args.features, ctx.args.feature_pool, 7);
    {
        let loaded = Arc::new(AtomicU64::new(0));
        let _progress = ctx.progress(&format!("loading {what}"), n, loaded.clone());
        data::load(&ctx.pool, ids, &stream, 0, n, Some(loaded)).await?;
    }
    // No ANALYZE here: a burst of a new model's feedback meets statistics that do not know it,
    // as in production.
    super::data::settle(&ctx.pool).await;
    let batch = shape.batch;
    let pools = {
        let mut pools = Vec::with_capacity(workers);
        for _ in 0..workers {
            pools.push(crate::db::connect(&ctx.url, 4).await?);
        }
        pools
    };
    let done = Arc::new(AtomicU64::new(0));
    let _progress = ctx.progress(&what, n, done.clone());
    let cancel = CancellationToken::new();
    let mut set: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let started = Instant::now();
    for (k, pool) in pools.iter().enumerate() {
        let (pool, ids, cancel) = (pool.clone(), ids.to_vec(), cancel.clone());
        let sizing = shape.sizing.clone();
        match drainer {
            Drainer::Olps => {
                set.spawn(async move {
                    let config = WorkerConfig {
                        models: ids,
                        batch_size: batch,
                        adaptive: match sizing {
                            Sizing::Adaptive(bounds) => Some(bounds),
                            _ => None,
                        },
                        ..WorkerConfig::default()
                    };
                    Worker::new(pool, config).run(cancel).await?;
                    Ok(())
                });
            }
            Drainer::BareSql => {
                set.spawn(async move {
                    match sizing {
                        Sizing::Replay(sizes) if ids.len() == 1 => {
                            bare_drain_sizes(pool, ids[0], sizes, cancel.clone()).await?
                        }
                        _ => bare_drain(pool, ids, batch, k, cancel.clone()).await?,
                    }
                    // Stay alive until the case ends, like a worker would.
                    cancel.cancelled().await;
                    Ok(())
                });
            }
        }
    }
    let wait = data::wait_applied(&ctx.pool, ids, n, &done, STALL);
    tokio::pin!(wait);
    let finished = loop {
        tokio::select! {
            at = &mut wait => break at?,
            joined = set.join_next() => match joined {
                Some(Ok(Err(e))) => {
                    cancel.cancel();
                    return Err(e.context(format!("{what} failed")));
                }
                Some(Err(e)) => {
                    cancel.cancel();
                    bail!("{what}: a drain task panicked: {e}");
                }
                Some(Ok(Ok(()))) => {}
                None => break (&mut wait).await?,
            }
        }
    };
    let secs = (finished - started).as_secs_f64();
    cancel.cancel();
    while let Some(joined) = set.join_next().await {
        joined.context("drain task panicked")??;
    }
    for pool in pools {
        pool.close().await;
    }
    let check = data::check(&ctx.pool, ids).await?;
    if check.processed as u64 != n || check.queue_left != 0 {
        bail!(
            "{what}: {} of {n} events processed, {} queue rows left",
            check.processed,
            check.queue_left
        );
    }
    let drift_events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM drift_events WHERE model_id = ANY($1)")
            .bind(ids)
            .fetch_one(&ctx.pool)
            .await?;
    let batch_sizes = batch_sizes(&ctx.pool, ids).await?;
    let result = CaseResult {
        events: n,
        secs,
        check,
        drift_events,
        runs: Vec::new(),
        batch_sizes,
    };
    ctx.say(&format!(
        "{what}: {:.0} events/s ({} versions, mean batch {:.0}, {:.2} history rows/event)",
        result.rate(),
        result.check.versions,
        result.mean_batch(),
        result.check.history_rows as f64 / n as f64
    ));
    Ok(result)
}

/// The rows of each version's batch (applied and dead-lettered), model by model in version order.
async fn batch_sizes(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT (v.examples + coalesce(v.dead_lettered, 0))::int8 FROM model_versions v
         JOIN unnest($1::uuid[]) WITH ORDINALITY AS m(id, k) ON v.model_id = m.id
         WHERE v.kind = 'gradient'
         ORDER BY m.k, v.model_version",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// Runs the case with olps and with the bare-SQL baseline, alternating which goes first so
/// neither always gets the fresher tables.
async fn pair(
    ctx: &Ctx,
    shape: &Shape,
    n: u64,
    flip: &mut bool,
) -> anyhow::Result<(CaseResult, CaseResult)> {
    let mut olps_runs = Vec::new();
    let mut bare_runs = Vec::new();
    for _ in 0..ctx.args.repeat.max(1) {
        if *flip {
            bare_runs.push(case(ctx, Drainer::BareSql, shape.clone(), n).await?);
            olps_runs.push(case(ctx, Drainer::Olps, shape.clone(), n).await?);
        } else {
            olps_runs.push(case(ctx, Drainer::Olps, shape.clone(), n).await?);
            bare_runs.push(case(ctx, Drainer::BareSql, shape.clone(), n).await?);
        }
        *flip = !*flip;
    }
    Ok((CaseResult::mean(olps_runs), CaseResult::mean(bare_runs)))
}

/// The default settings (adaptive batching) with olps, then the bare drain replaying the batch
/// sizes the worker chose, `--repeat` times; the means.
async fn adaptive_pair(
    ctx: &Ctx,
    bounds: AdaptiveBatching,
    n: u64,
) -> anyhow::Result<(CaseResult, CaseResult)> {
    let mut olps_runs = Vec::new();
    let mut bare_runs = Vec::new();
    for _ in 0..ctx.args.repeat.max(1) {
        let shape = Shape {
            workers: 1,
            models: 1,
            batch: bounds.max,
            settings: None,
            sizing: Sizing::Adaptive(bounds),
        };
        let olps = case(ctx, Drainer::Olps, shape, n).await?;
        let shape = Shape {
            workers: 1,
            models: 1,
            batch: bounds.max,
            settings: None,
            sizing: Sizing::Replay(Arc::new(olps.batch_sizes.clone())),
        };
        bare_runs.push(case(ctx, Drainer::BareSql, shape, n).await?);
        olps_runs.push(olps);
    }
    Ok((CaseResult::mean(olps_runs), CaseResult::mean(bare_runs)))
}

/// The naive design: one transaction per event; per parameter one SELECT of its value, one
/// UPDATE (an INSERT when it does not exist yet: the documented UPDATE alone would skip it) and
/// one INSERT of its history row; SGD on the logistic loss computed client-side.
pub async fn naive_drain(pool: &PgPool, model: Uuid, done: &AtomicU64) -> anyhow::Result<()> {
    const LR: f64 = 0.02;
    let mut conn = pool.acquire().await?;
    loop {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let version: i64 =
            sqlx::query_scalar("SELECT version FROM models WHERE model_id = $1 FOR UPDATE")
                .bind(model)
                .fetch_one(&mut *tx)
                .await?;
        let row: Option<(Uuid, Uuid, f64, serde_json::Value)> = sqlx::query_as(
            "SELECT q.id, q.feedback_id, e.feedback_value, e.metadata -> 'features'
             FROM feedback_queue q
             JOIN feedback_events e ON e.model_id = q.model_id AND e.id = q.feedback_id
             WHERE q.model_id = $1 AND q.status = 'pending'
             ORDER BY q.priority DESC, q.created_at, q.seq
             LIMIT 1
             FOR UPDATE OF q SKIP LOCKED",
        )
        .bind(model)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((queue_id, event_id, label, features)) = row else {
            tx.rollback().await?;
            return Ok(());
        };
        let mut inputs: Vec<(String, f64)> = features
            .as_object()
            .context("features")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
            .collect();
        inputs.push((crate::learner::INTERCEPT.to_string(), 1.0));
        let mut old = Vec::with_capacity(inputs.len());
        for (name, _) in &inputs {
            let value: Option<f64> = sqlx::query_scalar(
                "SELECT current_value FROM model_parameters
                 WHERE model_id = $1 AND parameter_id = $2",
            )
            .bind(model)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
            old.push(value);
        }
        let margin: f64 = inputs
            .iter()
            .zip(&old)
            .map(|((_, x), w)| w.unwrap_or(0.0) * x)
            .sum();
        let gradient = crate::learner::sigmoid(margin) - label;
        let v = version + 1;
        let new: Vec<f64> = inputs
            .iter()
            .zip(&old)
            .map(|((_, x), w)| w.unwrap_or(0.0) - LR * gradient * x)
            .collect();
        for (((name, _), w), value) in inputs.iter().zip(&old).zip(&new) {
            let updated = sqlx::query(
                "UPDATE model_parameters SET current_value = $3, last_updated = now(), version = $4
                 WHERE model_id = $1 AND parameter_id = $2",
            )
            .bind(model)
            .bind(name)
            .bind(value)
            .bind(v)
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 0 {
                debug_assert!(w.is_none());
                sqlx::query(
                    "INSERT INTO model_parameters (model_id, parameter_id, current_value, version)
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(model)
                .bind(name)
                .bind(value)
                .bind(v)
                .execute(&mut *tx)
                .await?;
            }
        }
        for (((name, _), w), value) in inputs.iter().zip(&old).zip(&new) {
            sqlx::query(
                "INSERT INTO parameter_updates (id, model_id, parameter_id, old_value, new_value,
                     update_type, learning_rate, timestamp, source, metadata, model_version)
                 VALUES ($1, $2, $3, $4, $5, 'gradient', $6, now(), 'bench-naive', '{}', $7)",
            )
            .bind(Uuid::new_v4())
            .bind(model)
            .bind(name)
            .bind(w)
            .bind(value)
            .bind(LR)
            .bind(v)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM feedback_queue WHERE model_id = $1 AND id = $2")
            .bind(model)
            .bind(queue_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE feedback_events SET processed = TRUE, applied_version = $3
             WHERE model_id = $1 AND id = $2",
        )
        .bind(model)
        .bind(event_id)
        .bind(v)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE models SET version = $2, examples_seen = examples_seen + 1, updated_at = now()
             WHERE model_id = $1",
        )
        .bind(model)
        .bind(v)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO model_versions (model_id, model_version, kind, examples, source)
             VALUES ($1, $2, 'gradient', 1, 'bench-naive')",
        )
        .bind(model)
        .bind(v)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        done.fetch_add(1, Ordering::Relaxed);
    }
}

async fn naive_case(ctx: &Ctx, n: u64) -> anyhow::Result<CaseResult> {
    let model = ctx.create_models("drain-naive", 1).await?[0].model_id;
    let result = async {
        let stream = Stream::new(ctx.args.features, ctx.args.feature_pool, 7);
        data::load(&ctx.pool, &[model], &stream, 0, n, None).await?;
        let done = Arc::new(AtomicU64::new(0));
        let _progress = ctx.progress("naive design", n, done.clone());
        let started = Instant::now();
        naive_drain(&ctx.pool, model, &done).await?;
        let secs = started.elapsed().as_secs_f64();
        let check = data::check(&ctx.pool, &[model]).await?;
        if check.processed as u64 != n {
            bail!("naive design: {} of {n} events processed", check.processed);
        }
        ctx.say(&format!("naive design: {:.0} events/s", n as f64 / secs));
        Ok(CaseResult {
            events: n,
            secs,
            check,
            drift_events: 0,
            runs: Vec::new(),
            batch_sizes: Vec::new(),
        })
    }
    .await;
    ctx.cleanup(&[model]).await?;
    result
}

/// Memory at one stream size: `olps serve` ingests `n` events over HTTP (C connections, 1,000
/// events a request), then `olps worker --until-empty` drains them; both as child processes.
pub struct MemoryResult {
    pub events: u64,
    pub serve_peak_kib: u64,
    pub worker_peak_kib: u64,
    pub ingest_rate: f64,
    pub drain_rate: f64,
}

async fn memory_case(ctx: &Ctx, n: u64) -> anyhow::Result<MemoryResult> {
    let model = ctx.create_models("drain-memory", 1).await?[0].model_id;
    let result = memory_case_on(ctx, model, n).await;
    ctx.cleanup(&[model]).await?;
    result
}

async fn memory_case_on(ctx: &Ctx, model: Uuid, n: u64) -> anyhow::Result<MemoryResult> {
    let bin = ctx.olps_bin()?;
    let conns = ctx.args.connections as usize;
    let port = super::sys::free_port()?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let serve = Child::spawn(
        &bin,
        &[
            "serve".into(),
            "--listen".into(),
            addr.to_string(),
            "--pool-size".into(),
            (conns + 2).to_string(),
            // Loopback, and measuring memory: no tokens.
            "--no-auth".into(),
        ],
        &ctx.url,
    )?;
    // Wait for the service.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut c) = client::Conn::connect(addr).await {
            if let Ok(r) = c.get("/healthz").await {
                if r.status == 200 {
                    break;
                }
            }
        }
        if Instant::now() > deadline {
            serve.stop().await;
            bail!("olps serve did not come up on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stream = Stream::new(ctx.args.features, ctx.args.feature_pool, 13);
    let done = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let ingest = {
        let _progress = ctx.progress(
            &format!("memory: olps serve ingesting {n} events"),
            n,
            done.clone(),
        );
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let (stream, next, done) = (stream.clone(), next.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn = client::Conn::connect(addr).await?;
                let path = format!("/v1/models/{model}/feedback");
                loop {
                    let start = next.fetch_add(1000, Ordering::Relaxed);
                    if start >= n {
                        return anyhow::Ok(());
                    }
                    let end = (start + 1000).min(n);
                    let body = data::feedback_body(&stream, start..end);
                    let r = conn.post_json(&path, &body).await?;
                    if r.status != 202 {
                        bail!(
                            "feedback answered {}: {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        );
                    }
                    done.fetch_add(end - start, Ordering::Relaxed);
                }
            }));
        }
        let mut failed = None;
        for t in tasks {
            if let Err(e) = t.await.map_err(anyhow::Error::from).and_then(|r| r) {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            serve.stop().await;
            return Err(e.context("ingest into olps serve"));
        }
        n as f64 / started.elapsed().as_secs_f64()
    };
    let serve_peak_kib = serve.stop().await;

    let done = Arc::new(AtomicU64::new(0));
    // The worker with its default settings (adaptive batching, as the bench's flags bound it).
    let bounds = ctx.adaptive()?;
    let started = Instant::now();
    let worker = Child::spawn(
        &bin,
        &[
            "worker".into(),
            "--until-empty".into(),
            "--model".into(),
            model.to_string(),
            "--min-batch".into(),
            bounds.min.to_string(),
            "--max-batch".into(),
            bounds.max.to_string(),
            "--batch-budget-ms".into(),
            bounds.budget.as_millis().to_string(),
        ],
        &ctx.url,
    )?;
    let worker_peak_kib = {
        let _progress = ctx.progress(
            &format!("memory: olps worker draining {n} events"),
            n,
            done.clone(),
        );
        let monitor = {
            let (pool, done) = (ctx.pool.clone(), done.clone());
            tokio::spawn(async move {
                loop {
                    if let Ok(a) = data::applied(&pool, &[model]).await {
                        done.store(a, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        };
        let peak = worker.wait(Duration::from_secs(3600)).await;
        monitor.abort();
        peak?
    };
    let drain_rate = n as f64 / started.elapsed().as_secs_f64();
    let check = data::check(&ctx.pool, &[model]).await?;
    if check.processed as u64 != n {
        bail!(
            "memory case: olps worker --until-empty applied {} of {n} events",
            check.processed
        );
    }
    ctx.say(&format!(
        "memory at {n} events: serve peak {} MiB, worker peak {} MiB",
        serve_peak_kib / 1024,
        worker_peak_kib / 1024
    ));
    Ok(MemoryResult {
        events: n,
        serve_peak_kib,
        worker_peak_kib,
        ingest_rate: ingest,
        drain_rate,
    })
}

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let n = ctx.args.events.unwrap_or(50_000).max(1);
    let several = ctx.args.models.max(1) as usize;
    let worker_counts: Vec<usize> = match ctx.args.workers {
        Some(w) => vec![w as usize],
        None => vec![1, 2],
    };
    let mut model_counts = vec![1];
    if several > 1 {
        model_counts.push(several);
    }
    let batch = ctx.args.batch_size;

    let mut olps_single: Option<CaseResult> = None;
    let mut bare_single: Option<CaseResult> = None;
    let mut best_single: Option<(i64, CaseResult)> = None;
    let mut flip = false;
    for &w in &worker_counts {
        for &m in &model_counts {
            let shape = Shape {
                workers: w,
                models: m,
                batch,
                settings: None,
                sizing: Sizing::Fixed,
            };
            let (olps, bare) = pair(ctx, &shape, n, &mut flip).await?;
            let name = format!(
                "{w} worker{}, {m} model{}, batch {batch}",
                if w == 1 { "" } else { "s" },
                if m == 1 { "" } else { "s" }
            );
            let figure = Figure::new("drain", &name, "events/s", olps.rate())
                .baseline("bare set-based SQL drain", bare.rate())
                .target_ratio_at_least(TARGET_RATIO);
            let figure = olps
                .details(figure)
                .detail(
                    "baseline_history_rows_per_event",
                    bare.check.history_rows as f64 / n as f64,
                )
                .detail("baseline_versions", bare.check.versions);
            report.add(figure);
            if w == 1 && m == 1 {
                best_single = Some((batch, olps.clone()));
                olps_single = Some(olps);
                bare_single = Some(bare);
            }
        }
    }

    if let (Some(single), Some(bare)) = (&olps_single, &bare_single) {
        // The default settings: batches sized from the backlog, against the fixed batch above
        // and against the bare drain at the very batch sizes the worker chose.
        let bounds = ctx.adaptive()?;
        let (default, replayed) = adaptive_pair(ctx, bounds, n).await?;
        let described = format!(
            "adaptive {}-{} rows within {} ms; mean batch {:.0}, largest {}, {} versions",
            bounds.min,
            bounds.max,
            bounds.budget.as_millis(),
            default.mean_batch(),
            default.batch_sizes.iter().copied().max().unwrap_or(0),
            default.check.versions
        );
        report.add(
            default
                .details(
                    Figure::new(
                        "drain",
                        "1 worker, 1 model, default settings",
                        "events/s",
                        default.rate(),
                    )
                    .baseline(&format!("olps, fixed batch {batch}"), single.rate())
                    .target_ratio_at_least(TARGET_DEFAULT_VS_FIXED)
                    .note(described.clone()),
                )
                .detail("batch_sizes", default.batch_sizes.clone()),
        );
        report.add(
            default.details(
                Figure::new(
                    "drain",
                    "1 worker, 1 model, default settings, against the bare drain",
                    "events/s",
                    default.rate(),
                )
                .baseline(
                    "bare set-based SQL drain, the same batch sizes",
                    replayed.rate(),
                )
                .target_ratio_at_least(TARGET_RATIO),
            ),
        );
        report.add(
            default.details(
                Figure::new(
                    "drain",
                    "1 worker, 1 model, default settings: absolute",
                    "events/s",
                    default.rate(),
                )
                .target_value_at_least(TARGET_DEFAULT_EVENTS_PER_SEC, "events/s")
                .note(format!(
                    "{} events of {} features from {} names",
                    n, ctx.args.features, ctx.args.feature_pool
                )),
            ),
        );

        // What the default settings cost: the same case with drift detection off (no drift
        // adaptations, so no automatic snapshots before them).
        let mut no_drift = ctx.settings()?;
        no_drift.drift.detector = crate::learner::drift::DetectorKind::None;
        let shape = Shape {
            workers: 1,
            models: 1,
            batch,
            settings: Some(no_drift),
            sizing: Sizing::Fixed,
        };
        let quiet = case(ctx, Drainer::Olps, shape, n).await?;
        let drifts = single.drift_events;
        report.add(
            quiet
                .details(
                    Figure::new(
                        "drain",
                        &format!("1 worker, 1 model, batch {batch}, drift detection off"),
                        "events/s",
                        quiet.rate(),
                    )
                    .baseline("bare set-based SQL drain (above)", bare.rate())
                    .target_ratio_at_least(TARGET_RATIO),
                )
                .note(format!(
                    "with the default settings, drift was detected {drifts} times in {} versions; \
                     each adaptation snapshots the whole model inside the batch's transaction",
                    single.check.versions
                )),
        );

        // Larger batches: fewer history rows per event (one per parameter changed per version).
        let sweep: Vec<i64> = ctx
            .args
            .batch_sweep
            .clone()
            .unwrap_or_else(|| vec![batch * 2, batch * 5])
            .into_iter()
            .filter(|b| *b > 0 && *b != batch)
            .collect();
        for b in sweep {
            let shape = Shape {
                workers: 1,
                models: 1,
                batch: b,
                settings: None,
                sizing: Sizing::Fixed,
            };
            let (olps, bare) = pair(ctx, &shape, n, &mut flip).await?;
            report.add(
                olps.details(
                    Figure::new(
                        "drain",
                        &format!("1 worker, 1 model, batch {b}"),
                        "events/s",
                        olps.rate(),
                    )
                    .baseline("bare set-based SQL drain", bare.rate())
                    .target_ratio_at_least(TARGET_RATIO),
                ),
            );
            if best_single
                .as_ref()
                .is_none_or(|(_, r)| olps.rate() > r.rate())
            {
                best_single = Some((b, olps));
            }
        }
        let (best_batch, best) = best_single.clone().expect("the default batch was measured");
        report.add(
            best.details(
                Figure::new(
                    "drain",
                    &format!("1 worker, 1 model: absolute, best batch ({best_batch})"),
                    "events/s",
                    best.rate(),
                )
                .target_value_at_least(TARGET_EVENTS_PER_SEC, "events/s")
                .note(format!(
                    "{} features per event from {} names; durable commits; default learner \
                     settings",
                    ctx.args.features, ctx.args.feature_pool
                )),
            ),
        );
        let naive_n = ctx.args.naive_events.unwrap_or(300).max(1);
        let naive = naive_case(ctx, naive_n).await?;
        report.add(
            naive.details(
                Figure::new(
                    "drain",
                    "speedup over the naive design (1 worker, 1 model)",
                    "events/s",
                    single.rate(),
                )
                .baseline(&format!("naive design, {naive_n} events"), naive.rate())
                .target_ratio_at_least(TARGET_NAIVE_SPEEDUP)
                .note(
                    "naive: one transaction per event, one SELECT + UPDATE per parameter and one \
                     INSERT per history row (the source document's loop)",
                ),
            ),
        );
        report.add(
            Figure::new(
                "drain",
                "speedup over the naive design, default settings",
                "events/s",
                default.rate(),
            )
            .baseline(&format!("naive design, {naive_n} events"), naive.rate())
            .target_ratio_at_least(TARGET_NAIVE_SPEEDUP),
        );
        if best_batch != batch {
            report.add(
                Figure::new(
                    "drain",
                    &format!("speedup over the naive design, best batch ({best_batch})"),
                    "events/s",
                    best.rate(),
                )
                .baseline(&format!("naive design, {naive_n} events"), naive.rate())
                .target_ratio_at_least(TARGET_NAIVE_SPEEDUP),
            );
        }
    }

    // Memory at two stream sizes, ten times apart: --memory-events, else a tenth of --events and
    // --events, else 100k and 1M.
    let sizes = match (&ctx.args.memory_events, ctx.args.events) {
        (Some(sizes), _) => sizes.clone(),
        (None, Some(events)) => vec![(events / 10).max(1), events.max(1)],
        (None, None) => vec![100_000, 1_000_000],
    };
    let mut first: Option<MemoryResult> = None;
    for size in sizes.into_iter().filter(|s| *s > 0) {
        let mem = memory_case(ctx, size).await?;
        let mib = |kib: u64| kib as f64 / 1024.0;
        for (what, peak) in [
            ("olps worker --until-empty", mem.worker_peak_kib),
            ("olps serve (HTTP ingest)", mem.serve_peak_kib),
        ] {
            let mut figure = Figure::new(
                "drain",
                &format!(
                    "{what}: peak RSS at {} events",
                    super::report::number(size as f64)
                ),
                "MiB",
                mib(peak),
            )
            .lower_is_better()
            .detail("events", size)
            .detail("ingest_events_per_sec", mem.ingest_rate)
            .detail("drain_events_per_sec", mem.drain_rate);
            if let Some(f) = &first {
                let base = if what.starts_with("olps worker") {
                    f.worker_peak_kib
                } else {
                    f.serve_peak_kib
                };
                figure = figure
                    .baseline(
                        &format!("same at {} events", super::report::number(f.events as f64)),
                        mib(base),
                    )
                    .target_ratio_at_most(1.25);
            }
            report.add(figure);
        }
        if first.is_none() {
            first = Some(mem);
        }
    }
    Ok(())
}
