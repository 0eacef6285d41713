//! Keeping the worker's statements as cheap on a table that has grown for days as on a new one,
//! whatever autovacuum does (it may be off, lag on large tables, or be turned off for the queue
//! tables): the worker refreshes the planner statistics of the tables it reads and writes when
//! they have outgrown them, and vacuums the queue when deleted rows pile up in it.
//!
//! Reproduced without this (autovacuum off, a worker started on empty tables, 400 events/s of
//! plain-SQL feedback): plans made while the tables were empty and kept by the connections read
//! ever more of the model's events per batch, 0.2 ms per event at first and 10 ms per event
//! after 30 s, 62 s per 1,000-event batch after 3 minutes, the queue growing without bound. And
//! the queue, whose rows are deleted as they are applied, keeps every deleted row (and its index
//! entries) until a VACUUM: a claim then reads all of them, 8.5 ms per claim after 58,000
//! events and growing with every event.
//!
//! The queue also rotates (migration V40): its generations (partitions) are TRUNCATEd once
//! drained ([`rotate_queue`]), which, unlike VACUUM, works while an old snapshot is open.
//!
//! They run in a task of their own, at most once per check interval and one at a time, so a
//! batch never waits for them. So does retention ([`crate::retention`]): each model's policy is
//! applied about once per [`RETENTION_EVERY`], in bounded batches.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

/// Dead (deleted, not yet vacuumed) queue rows tolerated before the worker vacuums the queue:
/// at least this many, and more than [`VACUUM_DEAD_PER_LIVE`] times the live rows.
pub const VACUUM_DEAD_MIN: i64 = 10_000;
pub const VACUUM_DEAD_PER_LIVE: i64 = 4;

/// Refreshes the planner's statistics of the tables the worker reads and writes that have grown
/// past their bound since they were last gathered: at least 1,000 live rows and more than twice
/// the rows the statistics know, or 500 if they know fewer (`olps_analyze_grown_tables()`,
/// migration V20, which runs `ANALYZE (SKIP_LOCKED)` as the tables' owner, so a worker role
/// without ownership may call it). Returns the tables analyzed.
///
/// An ANALYZE also invalidates every cached plan that reads the table, so the next batch is
/// planned for what the table is now. The bound makes it rare: a table is analyzed about
/// log2(rows / 500) times in its life, however fast it grows, and a queue whose length goes up
/// and down under a thousand rows is not analyzed again and again.
pub async fn refresh_statistics(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT unnest(olps_analyze_grown_tables())")
        .fetch_all(pool)
        .await
}

/// Vacuums `feedback_queue` when its dead rows pass the bound ([`VACUUM_DEAD_MIN`],
/// [`VACUUM_DEAD_PER_LIVE`]); returns whether it did. `VACUUM (SKIP_LOCKED)`: skipped when
/// another VACUUM (autovacuum) holds the table. It needs the table's owner (or a superuser):
/// for another role PostgreSQL skips it with a warning, and autovacuum has to do it.
pub async fn vacuum_queue_if_needed(pool: &PgPool) -> Result<Option<(i64, i64)>, sqlx::Error> {
    // Over its partitions: a partitioned table keeps no rows of its own.
    let (dead, live): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(n_dead_tup), 0)::int8, coalesce(sum(n_live_tup), 0)::int8
         FROM pg_stat_user_tables
         WHERE relid IN (SELECT relid FROM pg_partition_tree('feedback_queue'))",
    )
    .fetch_one(pool)
    .await?;
    if dead < VACUUM_DEAD_MIN || dead <= VACUUM_DEAD_PER_LIVE * live {
        return Ok(None);
    }
    sqlx::raw_sql("VACUUM (SKIP_LOCKED) feedback_queue")
        .execute(pool)
        .await?;
    Ok(Some((dead, live)))
}

/// How often the worker applies each model's retention policy (at most
/// [`crate::retention::Limits::WORKER`] per table and model each time).
pub const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Rows left in the next queue generation that are moved out (to the current generation, or to
/// the dead letters') so that it can be truncated before it becomes current again; with more
/// left (a backlog), it is left alone until they are drained.
pub const ROTATE_MOVE_MAX: i32 = 10_000;

/// How long the rotation waits for a generation's lock before it gives up (and backs off): a
/// claim in progress holds it for its batch, and new claims queue behind the wait.
pub const ROTATE_LOCK_TIMEOUT_MS: i32 = 200;

/// Truncates the queue generations that are drained (`olps_rotate_queue()`, migration V40);
/// returns the generations truncated, with the rows moved out of each first.
pub async fn rotate_queue(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT unnest(olps_rotate_queue($1, $2))")
        .bind(ROTATE_MOVE_MAX)
        .bind(ROTATE_LOCK_TIMEOUT_MS)
        .fetch_all(pool)
        .await
}

/// One round of each, and retention for the models (of `retention`'s list; all when empty) that
/// are due; failures are logged, never fatal.
pub async fn run(pool: PgPool, retention: Option<(Vec<Uuid>, Duration)>) {
    let started = Instant::now();
    match refresh_statistics(&pool).await {
        Ok(tables) if tables.is_empty() => {}
        Ok(tables) => {
            for table in &tables {
                crate::metrics::worker_maintenance(table, "analyze");
            }
            tracing::info!(tables = ?tables, ms = started.elapsed().as_secs_f64() * 1e3,
                "refreshed planner statistics of tables that had grown");
        }
        Err(e) => tracing::warn!(error = %e, "could not refresh planner statistics"),
    }
    let started = Instant::now();
    match vacuum_queue_if_needed(&pool).await {
        Ok(None) => {}
        Ok(Some((dead, live))) => {
            crate::metrics::worker_maintenance("feedback_queue", "vacuum");
            tracing::info!(
                dead,
                live,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "vacuumed feedback_queue"
            );
        }
        Err(e) => tracing::warn!(error = %e, "could not vacuum feedback_queue"),
    }
    let started = Instant::now();
    match rotate_queue(&pool).await {
        Ok(done) if done.is_empty() => {}
        Ok(done) => {
            for _ in &done {
                crate::metrics::worker_maintenance("feedback_queue", "truncate");
            }
            tracing::debug!(generations = ?done, ms = started.elapsed().as_secs_f64() * 1e3,
                "truncated drained queue generations");
        }
        Err(e) => tracing::warn!(error = %e, "could not rotate feedback_queue"),
    }
    if let Some((models, every)) = retention {
        let started = Instant::now();
        match crate::retention::run_due(&pool, &models, every, crate::retention::Limits::WORKER)
            .await
        {
            Ok(reports) => {
                for r in reports
                    .iter()
                    .filter(|r| r.deleted.iter().any(|(_, n)| *n > 0))
                {
                    tracing::info!(model = %r.model, deleted = ?r.deleted, complete = r.complete,
                        ms = started.elapsed().as_secs_f64() * 1e3, "retention");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not apply retention"),
        }
    }
}
