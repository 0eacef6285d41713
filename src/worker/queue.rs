//! The work queue (`feedback_queue`): finding models with work, claiming a model's pending rows in
//! queue order, acknowledging applied rows and dead-lettering the ones that cannot be learned.

use sqlx::{FromRow, PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::citus::Topology;

/// A claimed queue row with what the learner needs from its event.
#[derive(Debug, Clone, FromRow)]
pub struct ClaimedRow {
    pub queue_id: Uuid,
    pub feedback_id: Uuid,
    pub entity_id: String,
    pub feedback_type: String,
    pub label: f64,
    pub confidence: Option<f64>,
    /// `metadata->'features'` as JSON text, when the event has it (any JSON type: checked later).
    /// Text, not a parsed value: `jsonb` holds numbers beyond f64 (1e400), and such a row must be
    /// dead-lettered with its reason, not fail the whole claim.
    pub features: Option<String>,
    /// When the event has no features: those of the prediction it names (`prediction_id`), or
    /// else of the latest logged prediction for the entity (JSON text, like `features`).
    pub logged_features: Option<String>,
    /// The prediction the event names, if any (`feedback_events.prediction_id`).
    pub prediction_id: Option<Uuid>,
    /// The logged prediction the features came from: its key (entity, id) and when it was made.
    pub logged_entity: Option<String>,
    pub logged_id: Option<i64>,
    /// When the prediction was made and the event's time (`feedback_events.timestamp`, the
    /// label time), in seconds since the epoch: as float8, since SQL may store any timestamp
    /// (`infinity` too), which must not fail the claim.
    pub logged_epoch: Option<f64>,
    pub label_epoch: f64,
    /// The queue order: `priority DESC, created_at, seq`.
    pub priority: f64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub seq: i64,
    /// `pending` (a row dead-lettered between choosing and locking it is dropped).
    pub status: String,
}

/// Active models with pending work (optionally only among `only`), in random order so that
/// several workers start on different models.
///
/// Each model is checked with one probe of the claim index (a scalar subquery with `LIMIT 1`,
/// which PostgreSQL runs per model and cannot turn into a join). With `EXISTS`, a brand-new
/// database (statistics never analyzed) got a hash semi-join that read every pending row at
/// every pass: 77–100 ms per pass with 98,000 pending (`auto_explain`, issue 16), growing with
/// the backlog.
///
/// On Citus, `models` is a reference table, and Citus runs no correlated subquery under one: there
/// each shard joins its pending rows with its copy of `models` (one probe of the claim index per
/// model), and the coordinator merges the shards' answers.
pub async fn models_with_work(
    db: impl PgExecutor<'_>,
    only: &[Uuid],
    topology: Topology,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let sql = match topology {
        Topology::Single => {
            "SELECT m.model_id FROM models m
             WHERE m.status = 'active'
               AND (cardinality($1::uuid[]) = 0 OR m.model_id = ANY($1::uuid[]))
               AND (SELECT true FROM feedback_queue q
                    WHERE q.model_id = m.model_id AND q.status = 'pending' LIMIT 1)
             ORDER BY random()"
        }
        Topology::Citus => {
            "SELECT w.model_id FROM (
                 SELECT DISTINCT q.model_id FROM feedback_queue q
                 JOIN models m ON m.model_id = q.model_id
                 WHERE m.status = 'active' AND q.status = 'pending'
                   AND (cardinality($1::uuid[]) = 0 OR q.model_id = ANY($1::uuid[]))) w
             ORDER BY random()"
        }
    };
    sqlx::query_scalar(sql).bind(only).fetch_all(db).await
}

/// Makes the rest of the caller's transaction plan its statements so that their cost does not
/// depend on what the table statistics say about the model:
/// - `plan_cache_mode = force_generic_plan`: a model the statistics do not know yet (new since
///   the last ANALYZE, e.g. its first burst of feedback) is estimated at one row, and custom plans
///   for that estimate scan all of the model's queue rows or events once per claimed row (0.65 s
///   for a 1,000-row claim over 5,000 events, growing quadratically, and the same in the
///   acknowledgement). Generic plans estimate `model_id = $1` from the column's distinct count
///   and keep the primary-key lookups (2.7 ms for the same claim); they are also planned once per
///   connection instead of at every batch.
///   On Citus custom plans are forced instead: the coordinator routes a statement to its node by
///   the value of `model_id`, which a generic plan does not have ("could not create distributed
///   plan"); the nodes plan their shard's statement themselves.
/// - `enable_seqscan = off`: a generic plan made while a table was empty (a new database, or
///   just after a bulk delete and VACUUM) scans whole tables for the rest of the connection's
///   life; with sequential scans priced out it uses the indexes every hot statement has. At
///   1,000 events/s right after a bulk delete this took the median freshness from 104 ms to
///   18 ms (`olps bench freshness`).
pub async fn plan_for_any_statistics(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let settings = format!(
        "SELECT set_config('plan_cache_mode', {GENERIC_PLANS_UNLESS_CITUS}, true),
                set_config('enable_seqscan', 'off', true)"
    );
    sqlx::query(&settings).execute(conn).await?;
    Ok(())
}

/// `force_generic_plan`, or `force_custom_plan` on Citus (see [`plan_for_any_statistics`]); the
/// catalog lookup costs nothing next to the statement it is part of.
const GENERIC_PLANS_UNLESS_CITUS: &str =
    "CASE WHEN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')
          THEN 'force_custom_plan' ELSE 'force_generic_plan' END";

/// Under contention, each priority level below the highest pending one gets one row of a claim
/// for every `LOWER_LEVEL_SPACING` rows of the highest: the fair-share rule that bounds how long
/// lower priorities wait (see [`claim`]).
pub const LOWER_LEVEL_SPACING: i64 = 10;

/// The least number of rows of each backlogged lower priority level that a claim of `limit`
/// rows takes, when `levels` priority levels are pending (see [`claim`]): a pending row with
/// `n` rows of its own level ahead of it is claimed within `ceil((n + 1) / share)` claims of
/// its model, however much higher-priority feedback arrives meanwhile. None when the claim is
/// too small to give every level a row (`limit < levels`).
pub fn lower_level_share(limit: i64, levels: i64) -> Option<i64> {
    let lower = (levels - 1).max(0);
    (limit > lower).then(|| (limit - 1 - lower) / (LOWER_LEVEL_SPACING + lower) + 1)
}

/// Claims up to `limit` pending rows of one model, locking them for the caller's transaction,
/// and returns them in queue order (priority, then time, then insertion order): the order the
/// learner applies them in. It first makes the transaction's plans independent of the
/// statistics (the settings of [`plan_for_any_statistics`], and more).
///
/// Which rows: when everything pending fits in the claim, all of it, so a normal (shallow) queue
/// is learned exactly in queue order. When more is pending, the priority levels share the claim
/// (no starvation): the rows of each pending priority level are ranked oldest first (rank
/// 0, 1, 2, …), a row of the highest level gets slot = rank and a row of any lower level slot =
/// rank × [`LOWER_LEVEL_SPACING`], and the claim takes the rows with the smallest slots (ties:
/// higher priority first, then queue order). So under a flood of higher-priority feedback every
/// lower level still gets its oldest rows into every claim ([`lower_level_share`] of them), and
/// with nothing but one level pending it is plain queue order. The rule depends only on what is
/// pending, not on the claim's size, so a smaller claim takes a subset of a larger one (the
/// splitting of a failing batch relies on that).
///
/// Each level's rows come from the claim index in its order (one index range per level, found
/// by a "loose index scan" over the levels). With one level pending (the usual case) that order
/// is the claim, and the rows are locked as the index gives them (`one_level` below); with more,
/// they are ranked and the chosen ones locked by primary key, a second lookup per row that made
/// the claim take 1.5× as long (medians of 8 `EXPLAIN ANALYZE`s of a 10,000-row claim, 231 ms
/// against 154 ms). Both branches are in the one statement, so the choice is made on the
/// statement's own snapshot. Each claimed row's event is looked up by its
/// primary key in a subquery of its own (`LATERAL … OFFSET 0`, which PostgreSQL plans separately
/// and runs once per claimed row), so the lookup cannot become a scan of all the model's events
/// joined afterwards. A plan of that shape, made while the tables were empty and kept by the
/// connection, made every claim read all of the model's events once per claimed row: 42 s for a
/// 1,000-row claim over 50,000 events.
/// Every table is filtered on `model_id = $1` itself, not only through a join, so that Citus
/// sees the statement touches one node and sends it there whole.
pub async fn claim(
    conn: &mut PgConnection,
    model_id: Uuid,
    limit: i64,
) -> Result<Vec<ClaimedRow>, sqlx::Error> {
    // The settings of [`plan_for_any_statistics`], and more for the rest of the batch's
    // transaction: only the claim index can serve the claim, since it alone gives the rows in
    // queue order, and with sorts and bitmap scans priced out no plan that reads all of the
    // model's queue rows (live, dead-lettered, and the deleted ones a VACUUM has not removed
    // yet) and sorts them can look cheaper, whatever the statistics say about how many are
    // pending. (The sorts that remain, of at most `limit` rows per level, have no alternative.)
    // The batch's later statements need none of it (they look rows up by key). No JIT: a plan
    // that keeps a priced-out node costs over 1e10, and compiling it took 0.9 s. No Memoize:
    // the claim's lookups are by keys that do not repeat (each event once), so its cache only
    // missed, 11% of a 10,000-row claim (median of 12 `EXPLAIN ANALYZE`s each way).
    let settings = format!(
        "SELECT set_config('plan_cache_mode', {GENERIC_PLANS_UNLESS_CITUS}, true),
                set_config('enable_seqscan', 'off', true),
                set_config('enable_sort', 'off', true),
                set_config('enable_bitmapscan', 'off', true),
                set_config('enable_memoize', 'off', true),
                set_config('jit', 'off', true)"
    );
    sqlx::query(&settings).execute(&mut *conn).await?;
    let mut rows: Vec<ClaimedRow> = sqlx::query_as(
        "WITH RECURSIVE levels AS (
             (SELECT priority AS p FROM feedback_queue
              WHERE model_id = $1 AND status = 'pending'
              ORDER BY priority DESC LIMIT 1)
             UNION ALL
             SELECT (SELECT q.priority FROM feedback_queue q
                     WHERE q.model_id = $1 AND q.status = 'pending' AND q.priority < l.p
                     ORDER BY q.priority DESC LIMIT 1)
             FROM levels l WHERE l.p IS NOT NULL
         ),
         one_level AS MATERIALIZED (
             SELECT count(*) = 1 AS yes FROM levels WHERE p IS NOT NULL
         ),
         -- One level pending: queue order is the claim.
         plain AS (
             SELECT id, model_id, feedback_id, priority, created_at, seq, status
             FROM feedback_queue
             WHERE model_id = $1 AND status = 'pending' AND (SELECT yes FROM one_level)
             ORDER BY priority DESC, created_at, seq
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         ),
         ranked AS (
             SELECT c.id, c.gen, c.priority, c.created_at, c.seq,
                    (row_number() OVER (PARTITION BY c.priority ORDER BY c.created_at, c.seq) - 1)
                    * CASE WHEN c.priority = (SELECT max(p) FROM levels) THEN 1 ELSE $3 END
                        AS slot
             FROM levels l
             CROSS JOIN LATERAL (
                 SELECT id, gen, priority, created_at, seq FROM feedback_queue
                 WHERE model_id = $1 AND status = 'pending' AND priority = l.p
                 ORDER BY created_at, seq
                 LIMIT $2) c
             WHERE l.p IS NOT NULL AND NOT (SELECT yes FROM one_level)
         ),
         chosen AS (
             SELECT id, gen FROM ranked ORDER BY slot, priority DESC, created_at, seq LIMIT $2
         ),
         fair AS (
             SELECT q.* FROM chosen c
             CROSS JOIN LATERAL (
                 SELECT id, model_id, feedback_id, priority, created_at, seq, status
                 FROM feedback_queue
                 WHERE model_id = $1 AND id = c.id AND gen = c.gen
                 FOR UPDATE SKIP LOCKED) q
         ),
         q AS (SELECT * FROM plain UNION ALL SELECT * FROM fair)
         SELECT q.id AS queue_id, q.feedback_id, e.entity_id, e.feedback_type, e.label,
                e.confidence, e.features, coalesce(pid.features, ent.features) AS logged_features,
                e.prediction_id, coalesce(pid.entity_id, ent.entity_id) AS logged_entity,
                coalesce(pid.id, ent.id) AS logged_id,
                extract(epoch FROM coalesce(pid.logged_at, ent.logged_at))::float8
                    AS logged_epoch,
                extract(epoch FROM e.label_at)::float8 AS label_epoch,
                q.priority, q.created_at, q.seq, q.status
         FROM q
         CROSS JOIN LATERAL (
             SELECT ev.entity_id, ev.feedback_type, ev.feedback_value AS label, ev.confidence,
                    (ev.metadata -> 'features')::text AS features,
                    coalesce(ev.metadata ? 'features', false) AS has_features,
                    ev.prediction_id, ev.timestamp AS label_at
             FROM feedback_events ev
             WHERE ev.model_id = $1 AND ev.id = q.feedback_id
             OFFSET 0) e
         -- A label naming its prediction trains on exactly that one (unique index lookup) ...
         LEFT JOIN LATERAL (
             SELECT p.entity_id, p.id, p.features::text AS features, p.logged_at
             FROM prediction_log p
             WHERE p.model_id = $1 AND p.prediction_id = e.prediction_id AND NOT e.has_features
             OFFSET 0) pid ON TRUE
         -- ... one naming none on the latest logged prediction of its entity.
         LEFT JOIN LATERAL (
             SELECT p.entity_id, p.id, p.features::text AS features, p.logged_at
             FROM prediction_log p
             WHERE p.model_id = $1 AND p.entity_id = e.entity_id AND e.prediction_id IS NULL
               AND NOT e.has_features
             ORDER BY p.id DESC LIMIT 1) ent ON TRUE",
    )
    .bind(model_id)
    .bind(limit)
    .bind(LOWER_LEVEL_SPACING)
    .fetch_all(conn)
    .await?;
    // The `fair` branch locks each chosen row by primary key, in its generation only, without a
    // condition on `status` (one there would let the planner walk the claim index instead), so
    // a row whose status changed since the ranking's snapshot is dropped here.
    rows.retain(|r| r.status == "pending");
    // In queue order: the order the learner applies a batch in, whichever rows it holds.
    rows.sort_by(|a, b| {
        b.priority
            .total_cmp(&a.priority)
            .then(a.created_at.cmp(&b.created_at))
            .then(a.seq.cmp(&b.seq))
    });
    Ok(rows)
}

/// Deletes the applied queue rows and marks their events processed by `version`, in one
/// statement. `queue_ids` are in the order the batch learned them: each event records its place
/// (`applied_position`, from 1), so a replay can learn them again in the same order, and its
/// prequential prediction and loss (`scored`, in the same order: made before it was learned), so
/// a champion and its challengers can be compared over the same events ([`crate::shadow`]).
pub async fn acknowledge(
    conn: &mut PgConnection,
    model_id: Uuid,
    version: i64,
    queue_ids: &[Uuid],
    scored: &[(f64, f64)],
) -> Result<u64, sqlx::Error> {
    if queue_ids.is_empty() {
        return Ok(0);
    }
    let (predictions, losses): (Vec<f64>, Vec<f64>) = scored.iter().copied().unzip();
    let done = sqlx::query(
        "WITH done AS (
             DELETE FROM feedback_queue WHERE model_id = $1 AND id = ANY($2::uuid[])
             RETURNING id, feedback_id
         )
         UPDATE feedback_events e
         SET processed = TRUE, applied_version = $3, applied_position = o.position::integer,
             prequential_prediction = o.prediction, prequential_loss = o.loss
         FROM done
         JOIN unnest($2::uuid[], $4::float8[], $5::float8[]) WITH ORDINALITY
             AS o(id, prediction, loss, position) ON o.id = done.id
         WHERE e.model_id = $1 AND e.id = done.feedback_id",
    )
    .bind(model_id)
    .bind(queue_ids)
    .bind(version)
    .bind(&predictions)
    .bind(&losses)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Sets pending rows aside with their reasons; their events stay unprocessed. They move to the
/// dead letters' partition (generation -1), out of the generations that rotate.
pub async fn dead_letter(
    conn: &mut PgConnection,
    model_id: Uuid,
    rows: &[(Uuid, String)],
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let reasons: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let done = sqlx::query(
        "UPDATE feedback_queue q
         SET status = 'dead', dead_reason = u.reason, dead_at = now(), gen = -1
         FROM unnest($2::uuid[], $3::text[]) AS u(id, reason)
         WHERE q.model_id = $1 AND q.id = u.id AND q.status = 'pending'",
    )
    .bind(model_id)
    .bind(&ids)
    .bind(&reasons)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Sets claimed rows aside until the prediction they name is logged (status `waiting`, in the
/// partition that does not rotate); [`wake_or_expire_waiting`] takes them from there.
pub async fn wait_for_prediction(
    conn: &mut PgConnection,
    model_id: Uuid,
    queue_ids: &[Uuid],
) -> Result<u64, sqlx::Error> {
    if queue_ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "UPDATE feedback_queue SET status = 'waiting', gen = -1
         WHERE model_id = $1 AND id = ANY($2::uuid[]) AND status = 'pending'",
    )
    .bind(model_id)
    .bind(queue_ids)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// What [`wake_or_expire_waiting`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waited {
    /// Labels whose prediction is now logged: pending again, in their place in queue order.
    pub woken: u64,
    /// Labels whose prediction was not logged within the wait: dead-lettered with the reason.
    pub expired: u64,
}

/// Takes every waiting label (see [`wait_for_prediction`]) whose prediction is now logged back
/// to the queue (status `pending`, its priority, time and order kept), and dead-letters those
/// that have waited longer than `wait` since they were queued, in one statement. Its cost grows
/// with the number of waiting rows (found through their partial index), not with the queue.
pub async fn wake_or_expire_waiting(
    db: impl PgExecutor<'_>,
    wait: std::time::Duration,
) -> Result<Waited, sqlx::Error> {
    let (woken, expired): (i64, i64) = sqlx::query_as(
        "WITH waiting AS (
             SELECT q.model_id, q.id, q.gen, e.prediction_id,
                    EXISTS (SELECT 1 FROM prediction_log p
                            WHERE p.model_id = q.model_id AND p.prediction_id = e.prediction_id)
                        AS logged
             FROM feedback_queue q
             JOIN feedback_events e ON e.model_id = q.model_id AND e.id = q.feedback_id
             WHERE q.status = 'waiting'
         ),
         changed AS (
             UPDATE feedback_queue q
             SET status = CASE WHEN w.logged THEN 'pending' ELSE 'dead' END,
                 gen = CASE WHEN w.logged THEN olps_queue_generation(now()) ELSE -1 END,
                 dead_at = CASE WHEN w.logged THEN NULL ELSE now() END,
                 dead_reason = CASE WHEN w.logged THEN NULL ELSE
                     'prediction_id: prediction ' || w.prediction_id || ' was not logged within '
                     || $1::float8 || ' s of the label (label wait deadline): it was never made '
                     || 'with an entity_id, or its log record was lost (see '
                     || 'olps_prediction_log_dropped_total) or deleted by retention; send the '
                     || 'label with its features, or requeue it once the prediction is logged' END
             FROM waiting w
             WHERE q.model_id = w.model_id AND q.id = w.id AND q.gen = w.gen
               AND q.status = 'waiting'
               AND (w.logged OR q.created_at < now() - $1::float8 * interval '1 second')
             RETURNING q.status
         )
         SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'dead')
         FROM changed",
    )
    .bind(wait.as_secs_f64())
    .fetch_one(db)
    .await?;
    Ok(Waited {
        woken: woken as u64,
        expired: expired as u64,
    })
}

/// Marks the logged predictions that labels trained on (`labeled_at`), one statement per batch:
/// retention counts those that expire without a label.
pub async fn mark_labeled(
    conn: &mut PgConnection,
    model_id: Uuid,
    logged: &[(&str, i64)],
) -> Result<u64, sqlx::Error> {
    if logged.is_empty() {
        return Ok(0);
    }
    let entity: Vec<&str> = logged.iter().map(|l| l.0).collect();
    let id: Vec<i64> = logged.iter().map(|l| l.1).collect();
    let done = sqlx::query(
        "UPDATE prediction_log p SET labeled_at = now()
         FROM unnest($2::text[], $3::int8[]) AS u(entity_id, id)
         WHERE p.model_id = $1 AND p.entity_id = u.entity_id AND p.id = u.id
           AND p.labeled_at IS NULL",
    )
    .bind(model_id)
    .bind(&entity)
    .bind(&id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Dead-letters pending rows whose model does not exist (plain-SQL inserts are not checked
/// against `models`, so they can name any UUID).
///
/// It runs before every pass, so it must not read every pending row: the distinct models with
/// pending rows are found with one probe of the claim index per model (a recursive "loose index
/// scan"), and only when one of them is unknown are its rows updated, by the claim index (in a
/// transaction planned by [`plan_for_any_statistics`]). (Checking every pending row took 0.1 s
/// per pass at 1M pending rows, once per batch; one statement doing both, with the unknown models
/// as an array, was planned as a sequential scan of the queue on a brand-new database: 34 ms per
/// pass with 98,000 pending, for an array that is almost always empty.)
///
/// Citus runs no recursive CTE over a distributed table: there each shard checks its own pending
/// rows against `models` (a reference table, so the check runs on the shards), in parallel.
pub async fn dead_letter_unknown_models(
    pool: &PgPool,
    topology: Topology,
) -> Result<u64, sqlx::Error> {
    if topology == Topology::Citus {
        let done = sqlx::query(
            "UPDATE feedback_queue q
             SET status = 'dead', dead_at = now(),
                 dead_reason = 'unknown model ' || q.model_id::text || ': no such model_id in models'
             WHERE q.status = 'pending'
               AND NOT EXISTS (SELECT 1 FROM models m WHERE m.model_id = q.model_id)",
        )
        .execute(pool)
        .await?;
        return Ok(done.rows_affected());
    }
    let unknown: Vec<Uuid> = sqlx::query_scalar(
        "WITH RECURSIVE pending AS (
             (SELECT model_id FROM feedback_queue WHERE status = 'pending'
              ORDER BY model_id LIMIT 1)
             UNION ALL
             SELECT (SELECT q.model_id FROM feedback_queue q
                     WHERE q.status = 'pending' AND q.model_id > p.model_id
                     ORDER BY q.model_id LIMIT 1)
             FROM pending p WHERE p.model_id IS NOT NULL
         )
         SELECT p.model_id FROM pending p
         WHERE p.model_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM models m WHERE m.model_id = p.model_id)",
    )
    .fetch_all(pool)
    .await?;
    if unknown.is_empty() {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    plan_for_any_statistics(&mut tx).await?;
    // Still unknown: a model created meanwhile under that id keeps its rows.
    let done = sqlx::query(
        "UPDATE feedback_queue q
         SET status = 'dead', dead_at = now(), gen = -1,
             dead_reason = 'unknown model ' || q.model_id || ': no such model_id in models'
         WHERE q.status = 'pending' AND q.model_id = ANY($1::uuid[])
           AND NOT EXISTS (SELECT 1 FROM models m WHERE m.model_id = q.model_id)",
    )
    .bind(&unknown)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}

/// Pending rows of active models (among `only`, if given), leaving out the models in `except`.
pub async fn pending_count(
    db: impl PgExecutor<'_>,
    only: &[Uuid],
    except: &[Uuid],
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM feedback_queue q JOIN models m ON m.model_id = q.model_id
         WHERE q.status = 'pending' AND m.status = 'active'
           AND (cardinality($1::uuid[]) = 0 OR q.model_id = ANY($1::uuid[]))
           AND NOT (q.model_id = ANY($2::uuid[]))",
    )
    .bind(only)
    .bind(except)
    .fetch_one(db)
    .await
}

/// A dead-lettered queue row with its event: what `olps deadletters list` shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, FromRow)]
pub struct DeadLetter {
    pub queue_id: Uuid,
    pub model_id: Uuid,
    /// None when the model does not exist (feedback written by SQL for an unknown model).
    pub model_name: Option<String>,
    pub feedback_id: Uuid,
    pub entity_id: String,
    pub feedback_type: String,
    pub feedback_value: f64,
    pub confidence: Option<f64>,
    pub metadata: Option<serde_json::Value>,
    pub dead_reason: Option<String>,
    pub dead_at: Option<chrono::DateTime<chrono::Utc>>,
    pub priority: f64,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Which dead letters to list or requeue. Every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only this model's.
    pub model_id: Option<Uuid>,
    /// Only these rows, each given by its queue row id or its event's id (`feedback_id`).
    pub ids: Vec<Uuid>,
    /// Only rows whose reason matches this case-insensitive `LIKE` pattern anywhere (`%` and `_`
    /// are wildcards; a plain text is a substring).
    pub reason_like: Option<String>,
}

/// Dead letters, newest first (at most `limit`).
pub async fn dead_letters(
    db: impl PgExecutor<'_>,
    filter: &DeadLetterFilter,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    sqlx::query_as(
        "SELECT q.id AS queue_id, q.model_id, m.name AS model_name, q.feedback_id, e.entity_id,
                e.feedback_type, e.feedback_value, e.confidence, e.metadata, q.dead_reason,
                q.dead_at, q.priority, q.created_at
         FROM feedback_queue q
         JOIN feedback_events e ON e.model_id = q.model_id AND e.id = q.feedback_id
         LEFT JOIN models m ON m.model_id = q.model_id
         WHERE q.status = 'dead'
           AND ($1::uuid IS NULL OR q.model_id = $1)
           AND (cardinality($2::uuid[]) = 0 OR q.id = ANY($2) OR q.feedback_id = ANY($2))
           AND ($3::text IS NULL OR q.dead_reason ILIKE '%' || $3 || '%')
         ORDER BY q.dead_at DESC, q.seq DESC
         LIMIT $4",
    )
    .bind(filter.model_id)
    .bind(&filter.ids)
    .bind(&filter.reason_like)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// A dead letter put back in the queue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, FromRow)]
pub struct Requeued {
    pub queue_id: Uuid,
    pub model_id: Uuid,
    pub feedback_id: Uuid,
}

/// Puts dead letters back in the queue (status `pending`, reason cleared), keeping their
/// priority, `created_at` and `seq`: each goes back to its place in queue order, ahead of the
/// feedback that arrived after it. Its event is learned once, like any pending row, after the
/// fix that made it learnable (or dead-lettered again, with the new reason). Returns the rows
/// requeued, in queue order; the caller notifies the workers ([`notify_workers`]).
pub async fn requeue(
    db: impl PgExecutor<'_>,
    filter: &DeadLetterFilter,
) -> Result<Vec<Requeued>, sqlx::Error> {
    let mut rows: Vec<(Requeued, f64, chrono::DateTime<chrono::Utc>, i64)> =
        sqlx::query_as::<_, (Uuid, Uuid, Uuid, f64, chrono::DateTime<chrono::Utc>, i64)>(
            "UPDATE feedback_queue q
         SET status = 'pending', dead_reason = NULL, dead_at = NULL, gen = DEFAULT
         WHERE q.status = 'dead'
           AND ($1::uuid IS NULL OR q.model_id = $1)
           AND (cardinality($2::uuid[]) = 0 OR q.id = ANY($2) OR q.feedback_id = ANY($2))
           AND ($3::text IS NULL OR q.dead_reason ILIKE '%' || $3 || '%')
         RETURNING q.id, q.model_id, q.feedback_id, q.priority, q.created_at, q.seq",
        )
        .bind(filter.model_id)
        .bind(&filter.ids)
        .bind(&filter.reason_like)
        .fetch_all(db)
        .await?
        .into_iter()
        .map(
            |(queue_id, model_id, feedback_id, priority, created_at, seq)| {
                (
                    Requeued {
                        queue_id,
                        model_id,
                        feedback_id,
                    },
                    priority,
                    created_at,
                    seq,
                )
            },
        )
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Wakes the workers (`NOTIFY olps_feedback`), as a feedback insert does.
pub async fn notify_workers(db: impl PgExecutor<'_>) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(super::FEEDBACK_CHANNEL)
        .execute(db)
        .await?;
    Ok(())
}
