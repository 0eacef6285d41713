//! Retention: one policy per model saying how long each kind of row that grows with traffic is
//! kept, and the runs that apply it (the worker's maintenance, `olps retention run`).
//!
//! A run deletes, per model, in batches of at most `batch_rows` rows, one set-based DELETE per
//! batch, each its own short transaction (so no run holds a lock for long):
//! - `prediction_log` rows logged before the horizon, except the latest row of an entity that an
//!   unprocessed event without features (a pending or dead-lettered delayed label) still needs;
//! - processed `feedback_events` applied by a version older than the horizon (never an
//!   unprocessed one);
//! - dead letters (`feedback_queue` rows with status `dead`, and their events) set aside before
//!   the horizon;
//! - `drift_events` detected before the horizon;
//! - versions: the floor of the kept history moves up to the version in force at the horizon (a
//!   snapshot of it is taken, reconstructed inside PostgreSQL, unless one exists), through
//!   `models.history_pruned_through` as `olps history prune` does, so every version from the
//!   floor on stays reachable bit for bit; then the `parameter_updates` rows at or below the
//!   floor and the `model_versions` rows below it go (not those of versions a snapshot refers
//!   to);
//! - snapshots older than their horizon (automatic and manual ones have their own), never the
//!   floor; the retention's own floor snapshots as soon as a newer floor replaces them.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::citus::Topology;
use crate::models::{self, ModelError};
use crate::timeline::error::TimelineError;
use crate::timeline::reconstruct::{self, RECONSTRUCTION_WORK_MEM};
use crate::timeline::snapshots::{SnapshotKind, SYSTEM_LABEL_PREFIX};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// A bad policy or argument; the message names it.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The kinds of rows a policy covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    PredictionLog,
    Feedback,
    DeadLetters,
    Versions,
    DriftEvents,
    AutoSnapshots,
    ManualSnapshots,
}

const DAY: i64 = 86_400;

impl Part {
    pub const ALL: [Part; 7] = [
        Part::PredictionLog,
        Part::Feedback,
        Part::DeadLetters,
        Part::Versions,
        Part::DriftEvents,
        Part::AutoSnapshots,
        Part::ManualSnapshots,
    ];

    /// The name in JSON, in `olps retention show` and (with `-`) of the `set` flag.
    pub fn name(self) -> &'static str {
        match self {
            Part::PredictionLog => "prediction_log",
            Part::Feedback => "feedback",
            Part::DeadLetters => "dead_letters",
            Part::Versions => "versions",
            Part::DriftEvents => "drift_events",
            Part::AutoSnapshots => "auto_snapshots",
            Part::ManualSnapshots => "manual_snapshots",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Part::PredictionLog => "prediction_log_keep",
            Part::Feedback => "feedback_keep",
            Part::DeadLetters => "dead_letters_keep",
            Part::Versions => "versions_keep",
            Part::DriftEvents => "drift_events_keep",
            Part::AutoSnapshots => "auto_snapshots_keep",
            Part::ManualSnapshots => "manual_snapshots_keep",
        }
    }

    /// The default horizon in seconds (None: forever). Why each: README, "Retention".
    pub fn default_keep(self) -> Option<i64> {
        match self {
            // Longer than most label delays (chargebacks, returns); set it above yours.
            Part::PredictionLog => Some(90 * DAY),
            // Learned already (the parameters and their history keep the effect); also the
            // window in which a client may retry an event by its id.
            Part::Feedback => Some(30 * DAY),
            // Time for someone to look, fix and requeue.
            Part::DeadLetters => Some(90 * DAY),
            // Rollbacks and point-in-time reads within a quarter.
            Part::Versions => Some(90 * DAY),
            // A few rows per drift: cheap to keep a year of them.
            Part::DriftEvents => Some(365 * DAY),
            // Full copies of the model; the policy's `keep` count bounds them too.
            Part::AutoSnapshots => Some(30 * DAY),
            // A person made them: kept until deleted, unless the policy says otherwise.
            Part::ManualSnapshots => None,
        }
    }
}

/// How long each kind of row is kept, in seconds (None: forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    keep: [Option<i64>; 7],
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            keep: Part::ALL.map(Part::default_keep),
        }
    }
}

impl RetentionPolicy {
    pub fn get(&self, part: Part) -> Option<i64> {
        self.keep[part as usize]
    }

    pub fn set(&mut self, part: Part, keep: Option<i64>) {
        self.keep[part as usize] = keep;
    }

    fn horizon(&self, part: Part, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.get(part).map(|s| now - Duration::seconds(s))
    }
}

impl Serialize for RetentionPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(Part::ALL.len()))?;
        for part in Part::ALL {
            map.serialize_entry(part.name(), &format_keep(self.get(part)))?;
        }
        map.end()
    }
}

/// The most a horizon may be (as for token expiry): 100 years.
const MAX_KEEP: i64 = 100 * 365 * DAY;

/// Parses a horizon: a duration (`90d`, `12h`, `30m`, `2w`, `1d12h`) or `forever`.
pub fn parse_keep(text: &str) -> Result<Option<i64>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("forever") {
        return Ok(None);
    }
    match crate::auth::tokens::parse_duration(t) {
        Ok(d) if d.num_seconds() <= MAX_KEEP => Ok(Some(d.num_seconds())),
        _ => Err(format!(
            "'{text}' is not a retention horizon: give a duration of at most 100 years, e.g. 90d, \
             12h, 30m, 2w or 1d12h, or 'forever'"
        )),
    }
}

/// A horizon as `parse_keep` reads it back: `forever`, or the largest units that add up to it.
pub fn format_keep(keep: Option<i64>) -> String {
    let Some(mut s) = keep else {
        return "forever".into();
    };
    let mut out = String::new();
    for (unit, size) in [("d", DAY), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= size {
            out.push_str(&format!("{}{unit}", s / size));
            s %= size;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// A model's policy and whether it was set (else: the defaults).
#[derive(Debug, Clone, Serialize)]
pub struct StoredPolicy {
    pub model_id: Uuid,
    pub policy: RetentionPolicy,
    /// `set` (a row in retention_policies) or `default`.
    pub source: &'static str,
    pub updated_at: Option<DateTime<Utc>>,
}

/// The model's policy (the defaults when none was set).
pub async fn policy(
    conn: &mut PgConnection,
    model_id: Uuid,
) -> Result<StoredPolicy, RetentionError> {
    models::horizon(&mut *conn, model_id).await?;
    let columns: Vec<String> = Part::ALL
        .iter()
        .map(|p| format!("extract(epoch FROM {})::int8", p.column()))
        .collect();
    let row: Option<(Vec<Option<i64>>, DateTime<Utc>)> = sqlx::query_as(&format!(
        "SELECT ARRAY[{}], updated_at FROM retention_policies WHERE model_id = $1",
        columns.join(", ")
    ))
    .bind(model_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some((keep, updated_at)) => {
            let mut policy = RetentionPolicy::default();
            for (part, k) in Part::ALL.into_iter().zip(keep) {
                policy.set(part, k);
            }
            StoredPolicy {
                model_id,
                policy,
                source: "set",
                updated_at: Some(updated_at),
            }
        }
        None => StoredPolicy {
            model_id,
            policy: RetentionPolicy::default(),
            source: "default",
            updated_at: None,
        },
    })
}

/// Stores a model's whole policy (every part, so later changes of the defaults do not change a
/// policy someone set).
pub async fn set_policy(
    conn: &mut PgConnection,
    model_id: Uuid,
    policy: &RetentionPolicy,
) -> Result<StoredPolicy, RetentionError> {
    for part in Part::ALL {
        if let Some(k) = policy.get(part) {
            if !(1..=MAX_KEEP).contains(&k) {
                return Err(RetentionError::Invalid(format!(
                    "{}: must be between 1 second and 100 years, or forever; got {k} seconds",
                    part.name()
                )));
            }
        }
    }
    models::horizon(&mut *conn, model_id).await?;
    let columns: Vec<&str> = Part::ALL.iter().map(|p| p.column()).collect();
    let values: Vec<String> = (0..Part::ALL.len())
        .map(|i| format!("${}::int8 * interval '1 second'", i + 2))
        .collect();
    let updates: Vec<String> = columns
        .iter()
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    // `updated_at` from the inserted row: Citus refuses a non-IMMUTABLE function (now()) in
    // DO UPDATE SET on a distributed table.
    let sql = format!(
        "INSERT INTO retention_policies (model_id, {}, updated_at) VALUES ($1, {}, now())
         ON CONFLICT (model_id) DO UPDATE SET {}, updated_at = EXCLUDED.updated_at",
        columns.join(", "),
        values.join(", "),
        updates.join(", ")
    );
    let mut query = sqlx::query(&sql).bind(model_id);
    for part in Part::ALL {
        query = query.bind(policy.get(part));
    }
    query.execute(&mut *conn).await?;
    self::policy(conn, model_id).await
}

/// Forgets a model's policy: it uses the defaults again.
pub async fn reset_policy(
    conn: &mut PgConnection,
    model_id: Uuid,
) -> Result<StoredPolicy, RetentionError> {
    models::horizon(&mut *conn, model_id).await?;
    sqlx::query("DELETE FROM retention_policies WHERE model_id = $1")
        .bind(model_id)
        .execute(&mut *conn)
        .await?;
    policy(conn, model_id).await
}

/// How much one run may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rows per DELETE (one short transaction each).
    pub batch_rows: i64,
    /// Batches per table (and snapshots) per model and run; None: until done.
    pub max_batches: Option<u32>,
}

impl Limits {
    /// `olps retention run`: until done.
    pub const UNBOUNDED: Limits = Limits {
        batch_rows: 5_000,
        max_batches: None,
    };
    /// The worker: at most 50,000 rows per table and model per run; the rest next time.
    pub const WORKER: Limits = Limits {
        batch_rows: 5_000,
        max_batches: Some(10),
    };
}

/// The tables a run deletes from, in the order it reports them (and the `table` label of the
/// metrics).
pub const TABLES: [&str; 8] = [
    "prediction_log",
    "feedback_events",
    "feedback_queue",
    "drift_events",
    "parameter_updates",
    "model_versions",
    "snapshots",
    "snapshot_parameters",
];

/// Where the kept history starts after a run (or would, in a dry run).
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// The floor before the run (`models.history_pruned_through`).
    pub previous: i64,
    /// The version in force at the versions horizon: it and every later version stay reachable.
    pub version: i64,
    pub snapshot_id: Option<Uuid>,
    /// Whether the run took (or would take) a snapshot of `version` for it.
    pub snapshot_taken: bool,
}

/// What a run did to one model (or, with `dry_run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    pub model_id: Uuid,
    pub model: String,
    pub dry_run: bool,
    pub at: DateTime<Utc>,
    pub policy: RetentionPolicy,
    pub policy_source: &'static str,
    /// Rows deleted (would be deleted) per table, in [`TABLES`] order.
    pub deleted: Vec<(String, i64)>,
    pub floor: Option<Floor>,
    /// False when the batch limit stopped it: the next run goes on.
    pub complete: bool,
    /// What was kept and why, for people.
    pub notes: Vec<String>,
    /// Of the `prediction_log` rows deleted, those no label trained on (the predictions whose
    /// label never came). Not counted by a dry run.
    pub unlabeled_predictions: i64,
}

impl ModelReport {
    pub fn deleted(&self, table: &str) -> i64 {
        self.deleted
            .iter()
            .find(|(t, _)| t == table)
            .map_or(0, |(_, n)| *n)
    }

    fn add(&mut self, table: &str, rows: i64) {
        if let Some(entry) = self.deleted.iter_mut().find(|(t, _)| t == table) {
            entry.1 += rows;
        }
    }
}

// Candidate rows per table, for $1 the model, $2 the horizon and $3 a version bound. Each is
// used as is to count (dry run) and with `LIMIT $4` inside a DELETE.

/// The latest logged row of an entity stays while an unprocessed event of the entity without
/// features (pending, or dead-lettered and perhaps requeued later) may still read it: the claim
/// takes the features of the latest row (`queue::claim`, `logged_features`).
const PREDICTION_LOG: &str = "
    SELECT p.entity_id, p.id FROM prediction_log p
    WHERE p.model_id = $1 AND p.logged_at < $2
      AND NOT (NOT EXISTS (SELECT 1 FROM prediction_log n
                           WHERE n.model_id = $1 AND n.entity_id = p.entity_id AND n.id > p.id)
               AND EXISTS (SELECT 1 FROM feedback_events e
                           WHERE e.model_id = $1 AND e.entity_id = p.entity_id
                             AND NOT e.processed
                             AND NOT coalesce(e.metadata ? 'features', false)))
      -- A prediction an unprocessed label names by its id stays too.
      AND NOT EXISTS (SELECT 1 FROM feedback_events e
                      WHERE e.model_id = $1 AND e.prediction_id = p.prediction_id
                        AND NOT e.processed)";

/// Processed events applied by a version made before the horizon ($3) and, for the BRIN index,
/// stamped before it (a client may stamp an event with any time).
const FEEDBACK: &str = "
    SELECT e.id FROM feedback_events e
    WHERE e.model_id = $1 AND e.processed AND e.applied_version <= $3 AND e.timestamp < $2";

const DEAD_LETTERS: &str = "
    SELECT q.id, q.dead_at FROM feedback_queue q
    WHERE q.model_id = $1 AND q.status = 'dead' AND q.dead_at < $2";

const DRIFT_EVENTS: &str = "
    SELECT d.id FROM drift_events d WHERE d.model_id = $1 AND d.detected_at < $2";

/// History at or below the floor ($3): no reconstruction reads it once the floor is there.
const HISTORY: &str = "
    SELECT u.model_version, u.parameter_id FROM parameter_updates u
    WHERE u.model_id = $1 AND u.model_version <= $3";

/// Version rows below the floor ($3) made before the horizon, but not those a snapshot refers
/// to (a rollback to a snapshot restores the learner state recorded with its version).
const VERSIONS: &str = "
    SELECT v.model_version FROM model_versions v
    WHERE v.model_id = $1 AND v.model_version < $3 AND v.created_at < $2
      AND NOT EXISTS (SELECT 1 FROM snapshots s
                      WHERE s.model_id = $1 AND s.model_version = v.model_version)";

/// The label of the snapshot a run takes as the floor of the kept history at `version`.
pub fn floor_label(version: i64) -> String {
    format!("{SYSTEM_LABEL_PREFIX}retention-floor-v{version}")
}

/// Snapshots past their horizon ($2 automatic, $3 manual; NULL: kept), and the run's own floor
/// snapshots below the floor ($4), never one at the floor. ($4 is the floor, as text, so that
/// the one statement serves both.)
const SNAPSHOTS: &str = "
    SELECT s.snapshot_id, s.model_version FROM snapshots s
    WHERE s.model_id = $1 AND NOT ($4 > 0 AND s.model_version = $4)
      AND ((s.kind = 'auto' AND s.created_at < $2)
           OR (s.kind = 'manual' AND s.created_at < $3)
           OR (s.kind = 'auto' AND s.model_version < $4 AND s.label LIKE $5))";

/// Planner settings of a batch's transaction (see `trim`).
const FIND_BATCH_BY_KEY: &[(&str, &str)] =
    &[("enable_hashjoin", "off"), ("enable_mergejoin", "off")];

/// Counts, or deletes in batches, the candidates of one table. Returns the rows and whether it
/// finished (false: stopped by the batch limit).
#[allow(clippy::too_many_arguments)]
async fn trim(
    conn: &mut PgConnection,
    topology: Topology,
    delete: &str,
    candidates: &str,
    model_id: Uuid,
    horizon: DateTime<Utc>,
    bound: i64,
    limits: Limits,
    dry_run: bool,
    mut also_counted: Option<&mut i64>,
) -> Result<(i64, bool), sqlx::Error> {
    if dry_run {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM ({candidates}) c"))
            .bind(model_id)
            .bind(horizon)
            .bind(bound)
            .fetch_one(&mut *conn)
            .await?;
        return Ok((n, true));
    }
    let sql = delete.replace("{candidates}", candidates);
    let settings = topology.set_local(FIND_BATCH_BY_KEY);
    let (mut total, mut batches) = (0, 0);
    loop {
        if limits.max_batches.is_some_and(|max| batches >= max) {
            return Ok((total, false));
        }
        let started = std::time::Instant::now();
        let mut tx = conn.begin().await?;
        // The rows of a batch are found by key, never by hashing or sorting the whole table
        // against them: a hash join read all 200,000 rows of prediction_log for every batch of
        // 5,000 (1.2 s a batch; shared server, autovacuum off). On Citus the setting must reach
        // the node holding the model's shard, which plans the batch (see `set_local`).
        // As text (several statements, one round trip); `sqlx::raw_sql` here made the worker's
        // maintenance future not `Send`.
        sqlx::Executor::execute(&mut *tx, settings.as_str()).await?;
        let row = sqlx::query(&sql)
            .bind(model_id)
            .bind(horizon)
            .bind(bound)
            .bind(limits.batch_rows)
            .fetch_one(&mut *tx)
            .await?;
        let n: i64 = row.try_get(0)?;
        // A statement may count a subset of its rows in a second column.
        if let Some(counted) = also_counted.as_deref_mut() {
            *counted += row.try_get::<i64, _>(1)?;
        }
        tx.commit().await?;
        tracing::debug!(%model_id, rows = n, ms = started.elapsed().as_secs_f64() * 1e3,
            table = sql.split("DELETE FROM ").nth(1).and_then(|t| t.split_whitespace().next()),
            "retention batch");
        total += n;
        batches += 1;
        if n < limits.batch_rows {
            return Ok((total, true));
        }
    }
}

/// Applies a model's policy (or, with `dry_run`, counts what it would delete and changes
/// nothing). Runs statement by statement on `conn`, which must not be in a transaction: each
/// batch commits on its own.
pub async fn run_model(
    conn: &mut PgConnection,
    model_id: Uuid,
    limits: Limits,
    dry_run: bool,
) -> Result<ModelReport, RetentionError> {
    if limits.batch_rows < 1 {
        return Err(RetentionError::Invalid(format!(
            "batch size: must be 1 or more, got {}",
            limits.batch_rows
        )));
    }
    let stored = policy(&mut *conn, model_id).await?;
    let (name, now): (String, DateTime<Utc>) =
        sqlx::query_as("SELECT name, now() FROM models WHERE model_id = $1")
            .bind(model_id)
            .fetch_one(&mut *conn)
            .await?;
    let mut report = ModelReport {
        model_id,
        model: name,
        dry_run,
        at: now,
        policy: stored.policy,
        policy_source: stored.source,
        deleted: TABLES.iter().map(|t| (t.to_string(), 0)).collect(),
        floor: None,
        complete: true,
        notes: Vec::new(),
        unlabeled_predictions: 0,
    };
    let applied = apply(&mut *conn, &mut report, limits).await;
    if !dry_run {
        // What was deleted before a failure counts too.
        record(&mut *conn, &report).await?;
    }
    applied.map(|()| report)
}

/// The body of [`run_model`]: fills in `report` as it goes.
async fn apply(
    conn: &mut PgConnection,
    report: &mut ModelReport,
    limits: Limits,
) -> Result<(), RetentionError> {
    let (model_id, dry_run, now, policy) =
        (report.model_id, report.dry_run, report.at, report.policy);
    let topology = Topology::detect(&mut *conn).await?;
    // `{candidates}` is filled in by `trim`; `also` is checked again on each row deleted.
    let by_id = |table: &str, key: &str, also: &str| {
        format!(
            "WITH gone AS (
                 DELETE FROM {table} d WHERE d.model_id = $1 {also}
                   AND d.{key} = ANY(ARRAY(SELECT c.{key} FROM ({{candidates}}) c LIMIT $4))
                 RETURNING 1)
             SELECT count(*) FROM gone"
        )
    };

    if let Some(horizon) = policy.horizon(Part::PredictionLog, now) {
        let (n, done) = trim(
            conn,
            topology,
            "WITH gone AS (
                 DELETE FROM prediction_log d WHERE d.model_id = $1
                   AND (d.entity_id, d.id) IN (SELECT c.entity_id, c.id FROM ({candidates}) c
                                               LIMIT $4)
                 RETURNING d.labeled_at IS NULL AS unlabeled)
             SELECT count(*), count(*) FILTER (WHERE unlabeled) FROM gone",
            PREDICTION_LOG,
            model_id,
            horizon,
            0,
            limits,
            dry_run,
            Some(&mut report.unlabeled_predictions),
        )
        .await?;
        report.add("prediction_log", n);
        report.complete &= done;
        // What is left older than the horizon once done is what a delayed label still needs.
        let old: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM prediction_log WHERE model_id = $1 AND logged_at < $2",
        )
        .bind(model_id)
        .bind(horizon)
        .fetch_one(&mut *conn)
        .await?;
        let kept = if dry_run { old - n } else { old };
        if kept > 0 && done {
            report.notes.push(format!(
                "kept {kept} prediction_log rows older than the horizon: the latest prediction \
                 of an entity whose delayed label (feedback without features) is not applied yet"
            ));
        }
    }

    if let Some(horizon) = policy.horizon(Part::Feedback, now) {
        // The newest version made before the horizon: rows of later versions may be missing
        // below the floor only, where this stays a lower bound.
        let applied_before: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(model_version), 0) FROM model_versions
             WHERE model_id = $1 AND created_at < $2",
        )
        .bind(model_id)
        .bind(horizon)
        .fetch_one(&mut *conn)
        .await?;
        let (n, done) = trim(
            conn,
            topology,
            &by_id("feedback_events", "id", "AND d.processed"),
            FEEDBACK,
            model_id,
            horizon,
            applied_before,
            limits,
            dry_run,
            None,
        )
        .await?;
        report.add("feedback_events", n);
        report.complete &= done;
    }

    if let Some(horizon) = policy.horizon(Part::DeadLetters, now) {
        let (queue, events, done) =
            trim_dead_letters(conn, model_id, horizon, limits, dry_run).await?;
        report.add("feedback_queue", queue);
        report.add("feedback_events", events);
        report.complete &= done;
    }

    if let Some(horizon) = policy.horizon(Part::DriftEvents, now) {
        let (n, done) = trim(
            conn,
            topology,
            &by_id("drift_events", "id", ""),
            DRIFT_EVENTS,
            model_id,
            horizon,
            0,
            limits,
            dry_run,
            None,
        )
        .await?;
        report.add("drift_events", n);
        report.complete &= done;
    }

    // Versions: move the floor, then delete what lies below it.
    let versions_horizon = policy.horizon(Part::Versions, now);
    if let Some(horizon) = versions_horizon {
        let keep = policy.get(Part::Versions).unwrap_or(0);
        report.floor =
            advance_floor(conn, model_id, horizon, keep, dry_run, &mut report.notes).await?;
    }
    let pruned_through = match &report.floor {
        Some(floor) => floor.version,
        None => models::horizon(&mut *conn, model_id).await?.pruned_through,
    };
    if pruned_through > 0 {
        let (n, done) = trim(
            conn,
            topology,
            "WITH gone AS (
                 DELETE FROM parameter_updates d WHERE d.model_id = $1
                   AND (d.model_version, d.parameter_id) IN (
                       SELECT c.model_version, c.parameter_id FROM ({candidates}) c LIMIT $4)
                 RETURNING 1)
             SELECT count(*) FROM gone",
            HISTORY,
            model_id,
            now,
            pruned_through,
            limits,
            dry_run,
            None,
        )
        .await?;
        report.add("parameter_updates", n);
        report.complete &= done;
    }

    // Snapshots before version rows: a version whose last snapshot goes now loses its row in
    // this run too.
    let (snapshots, parameters, doomed, done) = trim_snapshots(
        conn,
        model_id,
        &policy,
        now,
        pruned_through,
        limits,
        dry_run,
    )
    .await?;
    report.add("snapshots", snapshots);
    report.add("snapshot_parameters", parameters);
    report.complete &= done;

    if let (Some(horizon), true) = (versions_horizon, pruned_through > 0) {
        let (n, done) = if dry_run {
            // As the run would find them: without the snapshots it would delete first.
            let n: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM ({}) c",
                VERSIONS.replace(
                    "WHERE s.model_id = $1 AND s.model_version = v.model_version",
                    "WHERE s.model_id = $1 AND s.model_version = v.model_version
                       AND NOT (s.snapshot_id = ANY($4))"
                )
            ))
            .bind(model_id)
            .bind(horizon)
            .bind(pruned_through)
            .bind(&doomed)
            .fetch_one(&mut *conn)
            .await?;
            (n, true)
        } else {
            trim(
                conn,
                topology,
                &by_id("model_versions", "model_version", ""),
                VERSIONS,
                model_id,
                horizon,
                pruned_through,
                limits,
                dry_run,
                None,
            )
            .await?
        };
        report.add("model_versions", n);
        report.complete &= done;
    }

    if !report.complete {
        report.notes.push(
            "stopped at the batch limit of this run; the next run goes on where it stopped".into(),
        );
    }
    Ok(())
}

/// Dead letters and their events, in one statement per batch (the events are unprocessed, so
/// they go only with their queue row). Rows a requeue holds are skipped.
async fn trim_dead_letters(
    conn: &mut PgConnection,
    model_id: Uuid,
    horizon: DateTime<Utc>,
    limits: Limits,
    dry_run: bool,
) -> Result<(i64, i64, bool), sqlx::Error> {
    if dry_run {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM ({DEAD_LETTERS}) c"))
            .bind(model_id)
            .bind(horizon)
            .fetch_one(&mut *conn)
            .await?;
        return Ok((n, n, true));
    }
    let (mut queue, mut events, mut batches) = (0, 0, 0);
    loop {
        if limits.max_batches.is_some_and(|max| batches >= max) {
            return Ok((queue, events, false));
        }
        let (q, e): (i64, i64) = sqlx::query_as(&format!(
            "WITH gone AS (
                 DELETE FROM feedback_queue d
                 WHERE d.model_id = $1 AND d.status = 'dead'
                   AND d.id = ANY(ARRAY(SELECT c.id FROM ({DEAD_LETTERS}) c
                                        ORDER BY c.dead_at LIMIT $3 FOR UPDATE SKIP LOCKED))
                 RETURNING d.feedback_id
             ), events AS (
                 DELETE FROM feedback_events e
                 WHERE e.model_id = $1 AND NOT e.processed
                   AND e.id IN (SELECT feedback_id FROM gone)
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM events)"
        ))
        .bind(model_id)
        .bind(horizon)
        .bind(limits.batch_rows)
        .fetch_one(&mut *conn)
        .await?;
        queue += q;
        events += e;
        batches += 1;
        if q < limits.batch_rows {
            return Ok((queue, events, true));
        }
    }
}

/// Moves the floor of the kept history up to the version in force at the horizon, when that is
/// at least a tenth of the horizon (at most a day) above the current floor (so a floor snapshot
/// is taken at most about once a day, not at every run). Returns the new floor, or None.
async fn advance_floor(
    conn: &mut PgConnection,
    model_id: Uuid,
    horizon: DateTime<Utc>,
    keep: i64,
    dry_run: bool,
    notes: &mut Vec<String>,
) -> Result<Option<Floor>, RetentionError> {
    let h = models::horizon(&mut *conn, model_id).await?;
    let step = Duration::seconds((keep / 10).min(DAY));
    let (version, stepped): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(max(model_version) FILTER (WHERE created_at < $2), 0),
                coalesce(max(model_version) FILTER (WHERE created_at < $3), 0)
         FROM model_versions WHERE model_id = $1",
    )
    .bind(model_id)
    .bind(horizon)
    .bind(horizon - step)
    .fetch_one(&mut *conn)
    .await?;
    if stepped <= h.pruned_through {
        return Ok(None);
    }
    let existing: Option<Uuid> = sqlx::query_scalar(
        "SELECT snapshot_id FROM snapshots WHERE model_id = $1 AND model_version = $2
         ORDER BY created_at, snapshot_id LIMIT 1",
    )
    .bind(model_id)
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    if dry_run {
        notes.push(format!(
            "would move the floor of the kept history from version {} to {version} (the version \
             in force at the horizon {horizon}){}",
            h.pruned_through,
            if existing.is_some() {
                ", starting from its snapshot"
            } else {
                ", taking a snapshot of it"
            }
        ));
        return Ok(Some(Floor {
            previous: h.pruned_through,
            version,
            snapshot_id: existing,
            snapshot_taken: existing.is_none(),
        }));
    }
    let mut tx = conn.begin().await?;
    // Share-locked until commit: a `snapshot delete` of it waits, then sees the new floor.
    let existing: Option<Uuid> = sqlx::query_scalar(
        "SELECT snapshot_id FROM snapshots WHERE model_id = $1 AND model_version = $2
         ORDER BY created_at, snapshot_id LIMIT 1 FOR KEY SHARE",
    )
    .bind(model_id)
    .bind(version)
    .fetch_optional(&mut *tx)
    .await?;
    let (snapshot_id, taken) = match existing {
        Some(id) => (id, false),
        None => match snapshot_at(&mut tx, model_id, version, h).await? {
            Some(id) => (id, true),
            None => {
                tx.rollback().await?;
                notes.push(
                    "the floor did not move: history was pruned meanwhile; the next run \
                     tries again"
                        .into(),
                );
                return Ok(None);
            }
        },
    };
    // Last, like `history prune`: the model's row lock is held only for the commit.
    models::raise_pruned_through(&mut *tx, model_id, version).await?;
    tx.commit().await?;
    notes.push(format!(
        "moved the floor of the kept history from version {} to {version}: versions \
         {version}..={} stay reachable",
        h.pruned_through, h.current
    ));
    Ok(Some(Floor {
        previous: h.pruned_through,
        version,
        snapshot_id: Some(snapshot_id),
        snapshot_taken: taken,
    }))
}

/// A snapshot of an earlier `version`, reconstructed inside PostgreSQL from the nearest
/// snapshot at or below it and the history above that (`olps_parameters_from`), in the caller's
/// transaction. None when history it needs was pruned after `h` was read.
async fn snapshot_at(
    tx: &mut PgConnection,
    model_id: Uuid,
    version: i64,
    h: models::Horizon,
) -> Result<Option<Uuid>, RetentionError> {
    sqlx::query(RECONSTRUCTION_WORK_MEM)
        .execute(&mut *tx)
        .await?;
    let base = reconstruct::base_for(&mut *tx, model_id, version, h, true).await?;
    let snapshot_id: Uuid = sqlx::query_scalar(
        "INSERT INTO snapshots (model_id, model_version, label, kind, examples_seen)
         SELECT $1, $2, $3, $4, v.examples_seen FROM model_versions v
         WHERE v.model_id = $1 AND v.model_version = $2
         RETURNING snapshot_id",
    )
    .bind(model_id)
    .bind(version)
    .bind(floor_label(version))
    .bind(SnapshotKind::Auto)
    .fetch_one(&mut *tx)
    .await?;
    let copied = sqlx::query(
        "INSERT INTO snapshot_parameters
             (model_id, snapshot_id, parameter_id, value, opt_m, opt_v, update_count,
              feature_mean, feature_m2, last_version)
         SELECT $1, $2, a.parameter_id, a.value, a.opt_m, a.opt_v, a.update_count,
                a.feature_mean, a.feature_m2, a.last_version
         FROM olps_parameters_from($1, $3, $4, $5) a",
    )
    .bind(model_id)
    .bind(snapshot_id)
    .bind(version)
    .bind(base.version)
    .bind(base.snapshot_id)
    .execute(&mut *tx)
    .await?
    .rows_affected() as i64;
    // A `history prune` that committed while the copy was being planned could have deleted rows
    // above the base; its raised floor says so.
    let pruned_through: i64 =
        sqlx::query_scalar("SELECT history_pruned_through FROM models WHERE model_id = $1")
            .bind(model_id)
            .fetch_one(&mut *tx)
            .await?;
    if pruned_through > base.version {
        return Ok(None);
    }
    sqlx::query(
        "UPDATE snapshots SET parameter_count = $3 WHERE model_id = $1 AND snapshot_id = $2",
    )
    .bind(model_id)
    .bind(snapshot_id)
    .bind(copied)
    .execute(&mut *tx)
    .await?;
    Ok(Some(snapshot_id))
}

/// Snapshots past their horizon, one per transaction (a snapshot is a whole model's rows):
/// locked first, skipping those a read, rollback or prune holds, and checked against the floor
/// read after the lock, so the floor of the kept history is never deleted.
#[allow(clippy::too_many_arguments)]
async fn trim_snapshots(
    conn: &mut PgConnection,
    model_id: Uuid,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
    floor: i64,
    limits: Limits,
    dry_run: bool,
) -> Result<(i64, i64, Vec<Uuid>, bool), sqlx::Error> {
    let auto = policy.horizon(Part::AutoSnapshots, now);
    let manual = policy.horizon(Part::ManualSnapshots, now);
    let own = format!("{}%", floor_label(0).trim_end_matches('0'));
    if dry_run {
        let doomed: Vec<(Uuid, i64)> = sqlx::query_as(&format!(
            "SELECT s.snapshot_id, s.parameter_count FROM snapshots s
             WHERE s.model_id = $1 AND s.snapshot_id IN (SELECT c.snapshot_id FROM ({SNAPSHOTS}) c)"
        ))
        .bind(model_id)
        .bind(auto)
        .bind(manual)
        .bind(floor)
        .bind(&own)
        .fetch_all(&mut *conn)
        .await?;
        let rows = doomed.iter().map(|d| d.1).sum();
        return Ok((
            doomed.len() as i64,
            rows,
            doomed.into_iter().map(|d| d.0).collect(),
            true,
        ));
    }
    let (mut headers, mut rows, mut done) = (0, 0, 0u32);
    let mut skipped: Vec<Uuid> = Vec::new();
    loop {
        if limits.max_batches.is_some_and(|max| done >= max) {
            return Ok((headers, rows, Vec::new(), false));
        }
        let mut tx = conn.begin().await?;
        let victim: Option<(Uuid, i64)> = sqlx::query_as(&format!(
            "SELECT s.snapshot_id, s.model_version FROM snapshots s
             WHERE s.model_id = $1
               AND s.snapshot_id IN (SELECT c.snapshot_id FROM ({SNAPSHOTS}) c)
               AND NOT (s.snapshot_id = ANY($6))
             ORDER BY s.created_at, s.snapshot_id LIMIT 1 FOR UPDATE SKIP LOCKED"
        ))
        .bind(model_id)
        .bind(auto)
        .bind(manual)
        .bind(floor)
        .bind(&own)
        .bind(&skipped)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((snapshot_id, version)) = victim else {
            tx.rollback().await?;
            return Ok((headers, rows, Vec::new(), true));
        };
        let pruned_through: i64 =
            sqlx::query_scalar("SELECT history_pruned_through FROM models WHERE model_id = $1")
                .bind(model_id)
                .fetch_one(&mut *tx)
                .await?;
        if pruned_through > 0 && version == pruned_through {
            tx.rollback().await?;
            skipped.push(snapshot_id);
            continue;
        }
        let (h, p): (i64, i64) = sqlx::query_as(
            "WITH header AS (
                 DELETE FROM snapshots WHERE model_id = $1 AND snapshot_id = $2 RETURNING 1
             ), params AS (
                 DELETE FROM snapshot_parameters WHERE model_id = $1 AND snapshot_id = $2
                 RETURNING 1
             )
             SELECT (SELECT count(*) FROM header), (SELECT count(*) FROM params)",
        )
        .bind(model_id)
        .bind(snapshot_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        headers += h;
        rows += p;
        done += 1;
    }
}

/// Adds a run's counts to `retention_stats` and stamps its time, in one statement.
async fn record(conn: &mut PgConnection, report: &ModelReport) -> Result<(), sqlx::Error> {
    let tables: Vec<&str> = report.deleted.iter().map(|(t, _)| t.as_str()).collect();
    let rows: Vec<i64> = report.deleted.iter().map(|(_, n)| *n).collect();
    sqlx::query(
        "INSERT INTO retention_stats (model_id, table_name, rows_deleted, last_run_at,
                                      unlabeled_predictions)
         SELECT $1, u.t, u.n, now(), CASE WHEN u.t = 'prediction_log' THEN $4 ELSE 0 END
         FROM unnest($2::text[], $3::int8[]) AS u(t, n)
         WHERE EXISTS (SELECT 1 FROM models WHERE model_id = $1)
         ON CONFLICT (model_id, table_name) DO UPDATE
         SET rows_deleted = retention_stats.rows_deleted + EXCLUDED.rows_deleted,
             unlabeled_predictions = retention_stats.unlabeled_predictions
                                     + EXCLUDED.unlabeled_predictions,
             last_run_at = EXCLUDED.last_run_at",
    )
    .bind(report.model_id)
    .bind(&tables)
    .bind(&rows)
    .bind(report.unlabeled_predictions)
    .execute(conn)
    .await?;
    Ok(())
}

/// The advisory lock that lets one retention run at a time per database (workers and the
/// command line): the bytes of "olps_ret".
const RUN_LOCK: i64 = 0x6f6c_7073_5f72_6574;

/// Runs retention for the models (among `only`, if given; all otherwise) that no run has
/// visited for `every`, unless another process is running it now (then nothing). The worker's
/// maintenance calls this; one model's failure is logged and the others go on.
pub async fn run_due(
    pool: &PgPool,
    only: &[Uuid],
    every: std::time::Duration,
    limits: Limits,
) -> Result<Vec<ModelReport>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RUN_LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(Vec::new());
    }
    let result = async {
        // An uncorrelated NOT IN: Citus refuses a correlated subquery (NOT EXISTS … WHERE
        // s.model_id = m.model_id) under the reference table `models`.
        let due: Vec<Uuid> = sqlx::query_scalar(
            "SELECT m.model_id FROM models m
             WHERE (cardinality($1::uuid[]) = 0 OR m.model_id = ANY($1::uuid[]))
               AND m.model_id NOT IN (
                   SELECT s.model_id FROM retention_stats s
                   WHERE s.last_run_at > now() - $2::float8 * interval '1 second')
             ORDER BY m.model_id",
        )
        .bind(only)
        .bind(every.as_secs_f64())
        .fetch_all(&mut *conn)
        .await?;
        let mut reports = Vec::new();
        for model_id in due {
            match run_model(&mut conn, model_id, limits, false).await {
                Ok(report) => reports.push(report),
                Err(e) => {
                    tracing::warn!(%model_id, error = %e, "retention run failed; next run retries");
                    // Stamped all the same, so a failing model is retried at the next interval,
                    // not at every maintenance round.
                    let stamp = ModelReport {
                        model_id,
                        model: String::new(),
                        dry_run: false,
                        at: Utc::now(),
                        policy: RetentionPolicy::default(),
                        policy_source: "default",
                        deleted: TABLES.iter().map(|t| (t.to_string(), 0)).collect(),
                        floor: None,
                        complete: false,
                        notes: Vec::new(),
                        unlabeled_predictions: 0,
                    };
                    record(&mut conn, &stamp).await?;
                }
            }
        }
        Ok::<_, sqlx::Error>(reports)
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(RUN_LOCK)
        .execute(&mut *conn)
        .await;
    result
}

/// Runs retention for the given models (all when empty) now, waiting for a run in another
/// process to finish first: `olps retention run`.
pub async fn run_now(
    pool: &PgPool,
    model_ids: &[Uuid],
    limits: Limits,
    dry_run: bool,
) -> Result<Vec<ModelReport>, RetentionError> {
    let mut conn = pool.acquire().await?;
    let ids: Vec<Uuid> = if model_ids.is_empty() {
        sqlx::query_scalar("SELECT model_id FROM models ORDER BY name")
            .fetch_all(&mut *conn)
            .await?
    } else {
        model_ids.to_vec()
    };
    if !dry_run {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(RUN_LOCK)
            .execute(&mut *conn)
            .await?;
    }
    let mut reports = Vec::new();
    let mut failure = None;
    for id in ids {
        match run_model(&mut conn, id, limits, dry_run).await {
            Ok(r) => reports.push(r),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    if !dry_run {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(RUN_LOCK)
            .execute(&mut *conn)
            .await;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(reports),
    }
}
