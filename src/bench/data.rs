//! Benchmark data: a deterministic sparse logistic stream, its encodings (COPY text, JSON request
//! bodies, multi-row INSERT), bulk loading, waiting for a drain, and deleting bench models with
//! every row of theirs.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use uuid::Uuid;

/// One event: feature indexes (distinct, sorted) with values, and a 0/1 label.
#[derive(Debug, Clone)]
pub struct Event {
    pub features: Vec<(u32, f64)>,
    pub label: f64,
}

/// A deterministic stream: `features` features per event from `pool` names `f0..f{pool-1}`, labels
/// from a fixed random linear truth. Event `i` depends only on (seed, i), so chunks can be made in
/// any order.
#[derive(Debug, Clone)]
pub struct Stream {
    pub features: usize,
    pub pool: usize,
    pub seed: u64,
    truth: Arc<Vec<f64>>,
}

impl Stream {
    pub fn new(features: u64, pool: u64, seed: u64) -> Stream {
        let pool = pool.max(1) as usize;
        let features = (features as usize).min(pool);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
        let truth = (0..pool).map(|_| rng.gen_range(-1.0..1.0)).collect();
        Stream {
            features,
            pool,
            seed,
            truth: Arc::new(truth),
        }
    }

    pub fn event(&self, i: u64) -> Event {
        let mut rng =
            rand::rngs::StdRng::seed_from_u64(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i);
        let mut features: Vec<(u32, f64)> = Vec::with_capacity(self.features);
        while features.len() < self.features {
            let index = rng.gen_range(0..self.pool) as u32;
            if features.iter().any(|(j, _)| *j == index) {
                continue;
            }
            // Three decimals: a realistic payload size.
            let value = (rng.gen_range(-2.0..2.0f64) * 1000.0).round() / 1000.0;
            features.push((index, value));
        }
        features.sort_unstable_by_key(|f| f.0);
        let score: f64 = features
            .iter()
            .map(|(j, x)| self.truth[*j as usize] * x)
            .sum();
        Event {
            features,
            label: if score > 0.0 { 1.0 } else { 0.0 },
        }
    }

    /// Features as (name, value), the learner's form.
    pub fn named(event: &Event) -> Vec<(String, f64)> {
        event
            .features
            .iter()
            .map(|(j, x)| (format!("f{j}"), *x))
            .collect()
    }
}

/// `{"features": {...}}`: the stored metadata of an event.
pub fn metadata_json(event: &Event) -> String {
    let mut s = String::with_capacity(16 + event.features.len() * 16);
    s.push_str("{\"features\": {");
    features_json_into(&mut s, event);
    s.push_str("}}");
    s
}

fn features_json_into(s: &mut String, event: &Event) {
    for (k, (j, x)) in event.features.iter().enumerate() {
        if k > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "\"f{j}\": {x}");
    }
}

/// A feedback request body: `{"events": [...]}` for events `range` of the stream.
pub fn feedback_body(stream: &Stream, range: std::ops::Range<u64>) -> Vec<u8> {
    let mut s = String::with_capacity((range.end - range.start) as usize * 200);
    s.push_str("{\"events\": [");
    for (k, i) in range.enumerate() {
        let e = stream.event(i);
        if k > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{{\"entity_id\": \"e{i}\", \"feedback_type\": \"explicit\", \"feedback_value\": {}, \"features\": {{",
            e.label
        );
        features_json_into(&mut s, &e);
        s.push_str("}}");
    }
    s.push_str("]}");
    s.into_bytes()
}

/// A predict request body: one instance, or `{"instances": [...]}` of `n` instances.
pub fn predict_body(stream: &Stream, start: u64, n: u64) -> Vec<u8> {
    let instance = |s: &mut String, i: u64| {
        let e = stream.event(i);
        s.push_str("{\"features\": {");
        features_json_into(s, &e);
        s.push_str("}}");
    };
    let mut s = String::new();
    if n == 1 {
        instance(&mut s, start);
    } else {
        s.push_str("{\"instances\": [");
        for i in 0..n {
            if i > 0 {
                s.push(',');
            }
            instance(&mut s, start + i);
        }
        s.push_str("]}");
    }
    s.into_bytes()
}

/// A predict body for one instance, event `i`, made for `entity` (so the service logs it).
pub fn predict_body_for_entity(stream: &Stream, i: u64, entity: &str) -> Vec<u8> {
    let mut s = String::from("{\"features\": {");
    features_json_into(&mut s, &stream.event(i));
    let _ = write!(s, "}}, \"entity_id\": \"{entity}\"}}");
    s.into_bytes()
}

/// The COPY statement matching [`copy_rows`].
pub const COPY_SQL: &str = "COPY feedback_events (model_id, entity_id, feedback_type, \
     feedback_value, confidence, metadata) FROM STDIN";

/// COPY text rows for events `range` of `model`.
pub fn copy_rows(model: Uuid, stream: &Stream, range: std::ops::Range<u64>) -> Vec<u8> {
    let mut s = String::with_capacity((range.end - range.start) as usize * 220);
    for i in range {
        let e = stream.event(i);
        let _ = writeln!(
            s,
            "{model}\te{i}\texplicit\t{}\t1\t{}",
            e.label,
            copy_escape(&metadata_json(&e))
        );
    }
    s.into_bytes()
}

/// Escapes a value for COPY's text format.
pub fn copy_escape(value: &str) -> String {
    if !value.contains(['\\', '\t', '\n', '\r']) {
        return value.to_string();
    }
    value
        .replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// COPYs rows on one connection in one statement.
pub async fn copy_in(pool: &PgPool, rows: &[u8]) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let mut copy = conn.copy_in_raw(COPY_SQL).await?;
    copy.send(rows).await?;
    copy.finish().await?;
    Ok(())
}

/// Loads `n` events of the stream, starting at `offset`, round-robin over `models` (event i goes
/// to model i mod len), with COPY in chunks of 10,000. Not timed by the callers.
pub async fn load(
    pool: &PgPool,
    models: &[Uuid],
    stream: &Stream,
    offset: u64,
    n: u64,
    done: Option<Arc<AtomicU64>>,
) -> anyhow::Result<()> {
    const CHUNK: u64 = 10_000;
    let per_model = n.div_ceil(models.len() as u64);
    for (m, model) in models.iter().enumerate() {
        let start = offset + m as u64 * per_model;
        let end = offset + ((m as u64 + 1) * per_model).min(n);
        let mut at = start;
        while at < end {
            let to = (at + CHUNK).min(end);
            copy_in(pool, &copy_rows(*model, stream, at..to)).await?;
            if let Some(d) = &done {
                d.fetch_add(to - at, Ordering::Relaxed);
            }
            at = to;
        }
    }
    Ok(())
}

/// Lets the database settle before a measurement: a CHECKPOINT, so the dirty pages and WAL of
/// the previous case (or of loading) are not flushed during this one. Best effort (it needs the
/// pg_checkpoint role or superuser).
pub async fn settle(pool: &PgPool) {
    let _ = sqlx::query("CHECKPOINT").execute(pool).await;
}

/// Events applied so far to the models (the sum of `models.examples_seen`).
pub async fn applied(pool: &PgPool, models: &[Uuid]) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(examples_seen), 0)::int8 FROM models WHERE model_id = ANY($1)",
    )
    .bind(models)
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}

/// Polls every 10 ms until `target` events are applied to the models; returns when that was
/// first seen. Fails when nothing moves for `stall`.
pub async fn wait_applied(
    pool: &PgPool,
    models: &[Uuid],
    target: u64,
    done: &AtomicU64,
    stall: Duration,
) -> anyhow::Result<Instant> {
    let mut last = (0u64, Instant::now());
    loop {
        let n = applied(pool, models).await?;
        done.store(n, Ordering::Relaxed);
        if n >= target {
            return Ok(Instant::now());
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > stall {
            bail!(
                "no progress for {:?}: {n} of {target} events applied",
                stall
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a drain left behind, checked after each case.
#[derive(Debug, Clone, Default, serde::Serialize, sqlx::FromRow)]
pub struct DrainCheck {
    pub events: i64,
    pub processed: i64,
    pub queue_left: i64,
    pub versions: i64,
    pub history_rows: i64,
    pub parameters: i64,
}

pub async fn check(pool: &PgPool, models: &[Uuid]) -> anyhow::Result<DrainCheck> {
    Ok(sqlx::query_as(
        "SELECT (SELECT count(*) FROM feedback_events WHERE model_id = ANY($1)) AS events,
                (SELECT count(*) FROM feedback_events WHERE model_id = ANY($1) AND processed)
                    AS processed,
                (SELECT count(*) FROM feedback_queue WHERE model_id = ANY($1)) AS queue_left,
                (SELECT coalesce(sum(version), 0)::int8 FROM models WHERE model_id = ANY($1))
                    AS versions,
                (SELECT count(*) FROM parameter_updates WHERE model_id = ANY($1)) AS history_rows,
                (SELECT count(*) FROM model_parameters WHERE model_id = ANY($1)) AS parameters",
    )
    .bind(models)
    .fetch_one(pool)
    .await?)
}

/// Deletes models and every row of theirs: each table with a `model_id` column (foreign keys
/// permitting, in as many passes as needed), then the models. Vacuums what it emptied in bulk.
pub async fn delete_models(pool: &PgPool, ids: &[Uuid]) -> anyhow::Result<()> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_attribute a ON a.attrelid = c.oid
         WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema()
           AND a.attname = 'model_id' AND NOT a.attisdropped AND c.relname <> 'models'
         ORDER BY c.relname",
    )
    .fetch_all(pool)
    .await?;
    let mut left = tables.clone();
    let mut deleted_rows = 0u64;
    for _pass in 0..6 {
        let mut failed = Vec::new();
        let mut last_error = None;
        for table in &left {
            match sqlx::query(&format!("DELETE FROM \"{table}\" WHERE model_id = ANY($1)"))
                .bind(ids)
                .execute(pool)
                .await
            {
                Ok(done) => deleted_rows += done.rows_affected(),
                Err(e) => {
                    failed.push(table.clone());
                    last_error = Some(e);
                }
            }
        }
        left = failed;
        if left.is_empty() {
            break;
        }
        if _pass == 5 {
            bail!(
                "cannot delete bench rows from {}: {}",
                left.join(", "),
                last_error.map(|e| e.to_string()).unwrap_or_default()
            );
        }
    }
    sqlx::query("DELETE FROM models WHERE model_id = ANY($1)")
        .bind(ids)
        .execute(pool)
        .await?;
    if deleted_rows > 50_000 {
        // Keep later measurements off the dead rows of earlier ones.
        for table in &tables {
            let _ = sqlx::query(&format!("VACUUM (ANALYZE) \"{table}\""))
                .execute(pool)
                .await;
        }
        let _ = sqlx::query("VACUUM (ANALYZE) models").execute(pool).await;
    }
    Ok(())
}

/// Bench models left by earlier, interrupted runs (name prefix `bench-`).
pub async fn leftover_models(pool: &PgPool) -> anyhow::Result<Vec<Uuid>> {
    Ok(
        sqlx::query_scalar("SELECT model_id FROM models WHERE name LIKE 'bench-%'")
            .fetch_all(pool)
            .await?,
    )
}
