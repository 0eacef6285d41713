//! The learning worker: drains `feedback_queue` model by model, learns one example at a time, and
//! commits each model batch in one transaction (parameters, history, version, metrics,
//! acknowledgement, notification), so every event is applied exactly once or dead-lettered.

pub mod batching;
pub mod drift;
pub mod examples;
pub mod maintenance;
pub mod queue;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::batching::{AdaptiveBatching, BatchSizer};
use crate::citus::Topology;
use crate::learner::{reset_state, Learner, ModelKind, ParamState, INTERCEPT};
use crate::models::{self, ModelError, ModelStatus};
use crate::params::{self, ParamChange, UpdateType};
use crate::shadow::{self, feed::LearnedEvent};
use crate::timeline::rollback::{self, RollbackTarget};
use crate::timeline::snapshots::{self, SnapshotKind};
use crate::timeline::version::{self, VersionRecord};

/// The channel the feedback trigger notifies (a hint: workers also poll).
pub const FEEDBACK_CHANNEL: &str = "olps_feedback";

/// `application_name` of the worker's LISTEN connection (visible in pg_stat_activity).
pub const LISTENER_APP_NAME: &str = "olps-worker-listener";

/// Default of [`WorkerConfig::citus_poll_interval`]: plain-SQL feedback on Citus is found within
/// this (plus a batch); an idle worker then costs the cluster two multi-shard statements per
/// interval (`olps bench freshness --plain-sql`, docs/SCALING.md).
pub const CITUS_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Default of [`WorkerConfig::shutdown_grace`].
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Completes `grace` after `shutdown` is cancelled.
async fn shutdown_then_grace(shutdown: &CancellationToken, grace: Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(grace).await;
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    History(#[from] crate::timeline::error::TimelineError),
}

impl WorkerError {
    /// The database error underneath, if any.
    fn database(&self) -> Option<&sqlx::Error> {
        use crate::timeline::error::TimelineError;
        match self {
            WorkerError::Db(e)
            | WorkerError::Model(ModelError::Db(e))
            | WorkerError::History(TimelineError::Db(e))
            | WorkerError::History(TimelineError::Model(ModelError::Db(e))) => Some(e),
            _ => None,
        }
    }

    /// Whether the failure says nothing about the rows of the batch, so that retrying the same
    /// rows is right: the connection or the server (an I/O error, a lost connection, SQLSTATE
    /// classes 08, 53, 57 but `query_canceled`, 58), a transaction that lost a race (class 40:
    /// serialization failure, deadlock), a lock wait that timed out (55P03), or a statement the
    /// deployment cannot run (0A000 `feature_not_supported`: Citus refusing a plan, which no
    /// row causes; dead-lettering would set good rows aside). Any other database error may come
    /// from the rows, and the worker splits the batch to find them.
    pub fn is_transient(&self) -> bool {
        match self.database() {
            Some(sqlx::Error::Database(d)) => match d.code() {
                Some(code) => {
                    let class = &code[..code.len().min(2)];
                    matches!(class, "08" | "40" | "53" | "58")
                        || (class == "57" && code != "57014")
                        || code == "55P03"
                        || code == "0A000"
                }
                None => true,
            },
            // Not an error PostgreSQL reported about a statement: the connection, the pool, the
            // protocol (including a version line that moved under the lock), TLS.
            Some(_) => true,
            None => false,
        }
    }

    /// The message for a dead letter: the database's own words and SQLSTATE.
    fn reason(&self) -> String {
        match self.database() {
            Some(sqlx::Error::Database(d)) => {
                let mut text = d.message().to_string();
                if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    if let Some(detail) = pg.detail() {
                        text.push_str(&format!(" ({detail})"));
                    }
                }
                match d.code() {
                    Some(code) => format!("{text} [SQLSTATE {code}]"),
                    None => text,
                }
            }
            _ => self.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Only these models (empty: all).
    pub models: Vec<Uuid>,
    /// Queue rows claimed per model batch when `adaptive` is None (fixed batches: the same
    /// stream always gives the same versions, as tests and the demo want).
    pub batch_size: i64,
    /// Each batch sized from the model's backlog within these bounds ([`batching`]); `batch_size`
    /// is then not used. `olps worker` uses this unless given `--batch-size`.
    pub adaptive: Option<AdaptiveBatching>,
    /// How often to look for work when no notification arrives.
    pub poll_interval: Duration,
    /// On Citus, look for work at least this often (None: `poll_interval` there too). Rows
    /// written there as plain SQL wake no worker: the statement-level NOTIFY trigger cannot run on
    /// the shards (see `src/citus.sql`), so polling is how workers learn of them, and its interval
    /// is their freshness. Each poll is two statements over every shard, run by the coordinator.
    pub citus_poll_interval: Option<Duration>,
    /// Stop once no pending rows remain for the selected active models.
    pub until_empty: bool,
    /// Recorded as `parameter_updates.source`.
    pub source: String,
    /// How often (at most) to check whether a traffic table has outgrown its planner statistics
    /// or the queue needs a VACUUM ([`maintenance`]); None: never.
    pub maintenance_check: Option<Duration>,
    /// How long a model whose stored state cannot be read is left alone before the worker looks
    /// at it again.
    pub unreadable_retry: Duration,
    /// How long a batch in flight may still run once shutdown is requested; past it, the batch
    /// is abandoned and rolled back as a whole (its rows stay pending).
    pub shutdown_grace: Duration,
    /// How often each model's retention policy is applied ([`maintenance`], [`crate::retention`]);
    /// None: never (then `olps retention run` does it).
    pub retention_every: Option<Duration>,
    /// How long a label naming a prediction that is not logged yet waits for it (counted from
    /// when the label was queued) before it is dead-lettered ([`examples::outcome`]).
    pub label_wait: Duration,
}

/// How often (at most) a worker looks for waiting labels whose prediction is logged now, or
/// whose wait is over.
const WAITING_CHECK: Duration = Duration::from_secs(1);

/// The default [`WorkerConfig::label_wait`]: 10 minutes.
pub const DEFAULT_LABEL_WAIT: Duration = Duration::from_secs(600);

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            models: Vec::new(),
            batch_size: 1000,
            adaptive: None,
            poll_interval: Duration::from_millis(250),
            citus_poll_interval: Some(CITUS_POLL_INTERVAL),
            until_empty: false,
            source: "feedback".into(),
            maintenance_check: Some(Duration::from_secs(1)),
            unreadable_retry: Duration::from_secs(30),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            retention_every: Some(maintenance::RETENTION_EVERY),
            label_wait: DEFAULT_LABEL_WAIT,
        }
    }
}

impl WorkerConfig {
    /// How long an idle worker waits for a notification before it polls, on `topology`.
    pub fn poll_interval_on(&self, topology: Topology) -> Duration {
        match (topology, self.citus_poll_interval) {
            (Topology::Citus, Some(citus)) => citus.min(self.poll_interval),
            _ => self.poll_interval,
        }
    }
}

/// What one attempt at a model batch did.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOutcome {
    /// A new version was committed.
    Applied {
        version: i64,
        examples: usize,
        dead: usize,
        parameters_changed: usize,
    },
    /// Only rows that cannot be learned were claimed (or one row that the database refused,
    /// found by splitting a failing batch): set aside, no new version.
    DeadOnly { dead: usize },
    /// Nothing pending for the model.
    Empty,
    /// Another transaction holds the model, or it is not active, or its stored state is
    /// unreadable (set aside for a while): try another model.
    Skipped,
}

/// Totals over a worker's run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerStats {
    pub batches: u64,
    pub examples: u64,
    pub dead: u64,
    /// Attempts at a batch that failed and were rolled back (then split, or retried).
    pub failures: u64,
    /// Time spent in the applied batches (claim, learn, write, commit), in seconds: divided by
    /// `examples`, the cost per event.
    pub batch_seconds: f64,
    /// Claims made (successful claim statements, empty ones included), their total and longest
    /// time in seconds: what a bloated queue slows down first.
    pub claims: u64,
    pub claim_seconds: f64,
    pub claim_max_seconds: f64,
}

impl WorkerStats {
    /// Adds another run's totals to these.
    pub fn add(&mut self, other: &WorkerStats) {
        self.batches += other.batches;
        self.examples += other.examples;
        self.dead += other.dead;
        self.failures += other.failures;
        self.batch_seconds += other.batch_seconds;
        self.claims += other.claims;
        self.claim_seconds += other.claim_seconds;
        self.claim_max_seconds = self.claim_max_seconds.max(other.claim_max_seconds);
    }
}

/// A model's learner as of a committed version, reused while the database is still at it.
struct Cached {
    version: i64,
    learner: Learner,
}

/// A model whose last batch failed for a reason that may lie in its rows: its next claims are
/// smaller, halving at each failure, until the failing rows are found (bisection).
///
/// The first `window` pending rows contain a row that failed (they were the failing claim).
/// Each claim takes at most `limit` rows. A failing claim of n > 1 rows becomes the window,
/// and the limit halves; an applied claim consumes its rows from the window; a failing claim of
/// one row is that row: it is dead-lettered with the database's message, and the model goes
/// back to full batches. So a model with one bad row among n makes at most about log2(n)
/// failed attempts before it is set aside, every other row is applied once, in queue order, one
/// version per applied claim, and no model retries the same failing batch forever.
#[derive(Debug, Clone, Copy)]
struct Isolation {
    window: usize,
    limit: i64,
    /// Failed attempts in a row (for the log).
    failures: u32,
}

/// What a committed attempt did, for what follows the commit.
#[allow(clippy::large_enum_variant)] // one per batch, moved once
enum Committed {
    DeadOnly {
        dead: usize,
    },
    Version {
        cached: Cached,
        examples: usize,
        dead: usize,
        parameters_changed: usize,
        loss_sum: f64,
        drift_events: Vec<crate::learner::drift::DriftEvent>,
        /// Label time minus prediction time of the events trained on logged predictions (s).
        label_delays: Vec<f64>,
    },
}

pub struct Worker {
    pool: PgPool,
    config: WorkerConfig,
    cache: HashMap<Uuid, Cached>,
    isolation: HashMap<Uuid, Isolation>,
    /// Each model's adaptive claim limit (with `config.adaptive`).
    sizers: HashMap<Uuid, BatchSizer>,
    /// Models whose stored state is unreadable, and when to look at them again.
    unreadable: HashMap<Uuid, Instant>,
    maintenance_checked: Option<Instant>,
    maintenance: Option<tokio::task::JoinHandle<()>>,
    /// Claim timings since the last pass took them: (claims, seconds, longest).
    claim_times: (u64, f64, f64),
    /// When waiting labels were last woken or expired ([`queue::wake_or_expire_waiting`]).
    waiting_checked: Option<Instant>,
    /// Found out at the first pass (a few statements differ on Citus).
    topology: Option<Topology>,
}

impl Worker {
    pub fn new(pool: PgPool, config: WorkerConfig) -> Worker {
        Worker {
            pool,
            config,
            cache: HashMap::new(),
            isolation: HashMap::new(),
            sizers: HashMap::new(),
            unreadable: HashMap::new(),
            maintenance_checked: None,
            maintenance: None,
            claim_times: (0, 0.0, 0.0),
            waiting_checked: None,
            topology: None,
        }
    }

    /// The rows the next claim of a model takes: a split's limit after a failure, else the
    /// fixed batch size or the model's adaptive limit.
    fn claim_limit(&self, model_id: Uuid) -> i64 {
        match self.isolation.get(&model_id) {
            Some(iso) => iso.limit,
            None => self.batch_limit(model_id),
        }
    }

    /// The claim limit outside of a split.
    fn batch_limit(&self, model_id: Uuid) -> i64 {
        match self.config.adaptive {
            Some(bounds) => self
                .sizers
                .get(&model_id)
                .map_or(bounds.min, BatchSizer::limit),
            None => self.config.batch_size,
        }
    }

    /// What a claim of `limit` rows found (`claimed` rows; the batch took `elapsed`), for the
    /// adaptive limit. A claim made while splitting says nothing about the backlog.
    fn sized(&mut self, model_id: Uuid, limit: i64, claimed: usize, elapsed: Duration) {
        let Some(bounds) = self.config.adaptive else {
            return;
        };
        if self.isolation.contains_key(&model_id) {
            return;
        }
        let sizer = self
            .sizers
            .entry(model_id)
            .or_insert_with(|| BatchSizer::new(bounds));
        if claimed == 0 {
            sizer.observe_empty();
        } else {
            sizer.observe(limit, claimed, elapsed);
        }
    }

    /// How long an idle worker waits for a notification before it looks for work: shorter on
    /// Citus ([`WorkerConfig::citus_poll_interval`]), once the first pass has found out.
    pub fn poll_interval(&self) -> Duration {
        match self.topology {
            Some(topology) => self.config.poll_interval_on(topology),
            None => self.config.poll_interval,
        }
    }

    /// Whether some model is being split after a failure (its next attempt should not wait).
    fn splitting(&self) -> bool {
        self.isolation.values().any(|i| i.window > 0)
    }

    /// Models set aside because their stored state is unreadable, dropping those due again.
    fn unreadable_models(&mut self) -> Vec<Uuid> {
        let now = Instant::now();
        self.unreadable.retain(|_, until| *until > now);
        self.unreadable.keys().copied().collect()
    }

    /// One batch of one model, in one transaction.
    ///
    /// An error means the attempt failed and was rolled back as a whole (nothing of it is
    /// stored). The worker then remembers the failure: when the database refused something
    /// the rows may cause, the model's next claims are smaller, down to the one row that fails,
    /// which the next call dead-letters with the database's message (see [`Isolation`]); a
    /// transient failure (connection, serialization) is retried as it is.
    pub async fn run_batch(&mut self, model_id: Uuid) -> Result<BatchOutcome, WorkerError> {
        let started = Instant::now();
        let limit = self.claim_limit(model_id);
        let mut tx = self.pool.begin().await?;
        // Early returns end the transaction explicitly: a dropped one is rolled back only when
        // its pooled connection is next used, and would hold the model's lock until then.
        let model = match models::lock(&mut tx, model_id, true).await {
            Ok(Some(model)) if model.status == ModelStatus::Active => model,
            Ok(_) => {
                tx.rollback().await?;
                return Ok(BatchOutcome::Skipped);
            }
            Err(e) => {
                let _ = tx.rollback().await;
                if let ModelError::CorruptSettings { name, .. } = &e {
                    // Only this model stops: its feedback stays queued, the others drain.
                    tracing::error!(%model_id, error = %e, retry_in_s = self.config.unreadable_retry.as_secs_f64(),
                        "model set aside: its stored state is unreadable");
                    crate::metrics::worker_unreadable(name);
                    self.unreadable
                        .insert(model_id, Instant::now() + self.config.unreadable_retry);
                    self.cache.remove(&model_id);
                    return Ok(BatchOutcome::Skipped);
                }
                return Err(e.into());
            }
        };
        self.unreadable.remove(&model_id);
        let claim_started = Instant::now();
        let claimed = queue::claim(&mut tx, model_id, limit).await;
        if claimed.is_ok() {
            let secs = claim_started.elapsed().as_secs_f64();
            self.claim_times.0 += 1;
            self.claim_times.1 += secs;
            self.claim_times.2 = self.claim_times.2.max(secs);
        }
        let rows = match claimed {
            Ok(rows) if rows.is_empty() => {
                tx.rollback().await?;
                self.isolation.remove(&model_id);
                self.sized(model_id, limit, 0, started.elapsed());
                return Ok(BatchOutcome::Empty);
            }
            Ok(rows) => rows,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(e.into());
            }
        };

        let attempt = match self.apply(&mut tx, &model, &rows).await {
            Ok(done) => tx.commit().await.map(|()| done).map_err(WorkerError::from),
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
            }
        };
        match attempt {
            Ok(done) => {
                // Sized before `applied` ends a split: the claim was made while splitting.
                self.sized(model_id, limit, rows.len(), started.elapsed());
                self.applied(model_id, rows.len());
                Ok(self.after_commit(&model, done, started).await)
            }
            Err(e) => {
                // The cached learner moved past the database's version; it was taken out of the
                // cache for this attempt and is dropped with it.
                self.failed(&model, &rows, e).await
            }
        }
    }

    /// An applied (committed) claim of `rows` rows: it consumes them from the failure window.
    fn applied(&mut self, model_id: Uuid, rows: usize) {
        if let Some(iso) = self.isolation.get_mut(&model_id) {
            iso.failures = 0;
            iso.window = iso.window.saturating_sub(rows);
            if iso.window == 0 {
                self.isolation.remove(&model_id);
            } else {
                iso.limit = iso.limit.min(iso.window as i64);
            }
        }
    }

    /// A failed attempt at `rows`: split the batch, or set its one row aside, or (transient)
    /// retry it as it is. Returns the attempt's error, or the dead letter of the one row.
    async fn failed(
        &mut self,
        model: &models::Model,
        rows: &[queue::ClaimedRow],
        error: WorkerError,
    ) -> Result<BatchOutcome, WorkerError> {
        let model_id = model.model_id;
        let transient = error.is_transient();
        crate::metrics::worker_failure(&model.name, transient);
        let batch_size = self.batch_limit(model_id);
        let iso = self.isolation.entry(model_id).or_insert(Isolation {
            window: 0,
            limit: batch_size,
            failures: 0,
        });
        iso.failures += 1;
        if transient {
            tracing::warn!(%model_id, rows = rows.len(), attempt = iso.failures, error = %error,
                "batch failed for a reason outside its rows; retrying it as it is");
            return Err(error);
        }
        if rows.len() > 1 {
            iso.window = rows.len();
            iso.limit = rows.len().div_ceil(2) as i64;
            tracing::warn!(%model_id, rows = rows.len(), attempt = iso.failures, next_claim = iso.limit,
                error = %error, "batch failed in the database; splitting it to find the rows that fail");
            return Err(error);
        }
        // One row that the database refuses on its own: set it aside with the database's words.
        let row = &rows[0];
        let reason = format!(
            "the database refused this event when the worker applied it: {}; fix the cause, then \
             requeue it (olps deadletters requeue)",
            error.reason()
        );
        let mut tx = self.pool.begin().await?;
        let dead = queue::dead_letter(&mut tx, model_id, &[(row.queue_id, reason.clone())]).await?;
        tx.commit().await?;
        self.isolation.remove(&model_id);
        tracing::error!(%model_id, queue_id = %row.queue_id, feedback_id = %row.feedback_id,
            reason = %reason, "row set aside: the database refused it (found by splitting its batch)");
        crate::metrics::worker_set_aside(&model.name, dead);
        Ok(BatchOutcome::DeadOnly {
            dead: dead as usize,
        })
    }

    /// Learns the claimed rows and writes the batch in the caller's transaction (which the
    /// caller commits, or rolls back on an error).
    async fn apply(
        &mut self,
        tx: &mut PgConnection,
        model: &models::Model,
        rows: &[queue::ClaimedRow],
    ) -> Result<Committed, WorkerError> {
        let model_id = model.model_id;
        let mut examples = Vec::with_capacity(rows.len());
        let mut dead = Vec::new();
        let mut waiting = Vec::new();
        // Logged predictions the batch trains on: marked labeled, and their label delays.
        let mut labeled: Vec<(&str, i64)> = Vec::new();
        let mut label_delays = Vec::new();
        // What the challengers get copied, in learning order ([`shadow::feed`]).
        let mut learned = Vec::with_capacity(rows.len());
        let now = chrono::Utc::now();
        for row in rows {
            match examples::outcome(row, model.kind, self.config.label_wait, now) {
                examples::Outcome::Learn(example) => {
                    examples.push((row.queue_id, example));
                    learned.push(LearnedEvent {
                        feedback_id: row.feedback_id,
                        logged_features: match row.features {
                            Some(_) => None,
                            None => row.logged_features.as_deref(),
                        },
                    });
                    if let (None, Some(entity), Some(id), Some(at)) = (
                        &row.features,
                        &row.logged_entity,
                        row.logged_id,
                        row.logged_epoch,
                    ) {
                        labeled.push((entity.as_str(), id));
                        label_delays.push(row.label_epoch - at);
                    }
                }
                examples::Outcome::Wait => waiting.push(row.queue_id),
                examples::Outcome::Dead(reason) => dead.push((row.queue_id, reason)),
            }
        }
        queue::dead_letter(&mut *tx, model_id, &dead).await?;
        queue::wait_for_prediction(&mut *tx, model_id, &waiting).await?;
        if examples.is_empty() {
            return Ok(Committed::DeadOnly { dead: dead.len() });
        }
        queue::mark_labeled(&mut *tx, model_id, &labeled).await?;

        // The in-memory learner is trusted only at the version the database is at.
        let mut cached = match self.cache.remove(&model_id) {
            Some(c) if c.version == model.version && c.learner.config == model.settings => c,
            _ => Cached {
                version: model.version,
                learner: Learner::new(model.kind, model.settings.clone()),
            },
        };
        cached.learner.examples_seen = model.examples_seen;
        cached
            .learner
            .restore_model_state(model.learner_state.clone());
        let missing: Vec<&str> = {
            let mut names: Vec<&str> = examples
                .iter()
                .flat_map(|(_, e)| Learner::touched_parameters(e))
                .filter(|name| !cached.learner.params.contains_key(*name))
                .collect();
            names.sort_unstable();
            names.dedup();
            names
        };
        if !missing.is_empty() {
            for (name, state) in params::load(&mut *tx, model_id, &missing).await? {
                cached.learner.params.insert(name, state);
            }
        }

        // Learn one example at a time, in queue order; remember each touched parameter's state
        // before the batch and the rate of its last step. Found by hashing its name: a map
        // ordered by name (string comparisons at every touch) was the worker's largest CPU cost;
        // the changes are sorted once, below.
        let mut before: Vec<(String, Option<ParamState>, f64)> = Vec::new();
        let mut slot: HashMap<&str, usize> = HashMap::new();
        let (mut loss_sum, mut correct) = (0.0f64, 0i32);
        // Each example's prequential prediction and loss, stored with its event.
        let mut scored = Vec::with_capacity(examples.len());
        for (_, example) in &examples {
            for name in Learner::touched_parameters(example) {
                slot.entry(name).or_insert_with(|| {
                    let old = cached.learner.params.get(name).copied();
                    before.push((name.to_string(), old, 0.0));
                    before.len() - 1
                });
            }
            let step = cached.learner.learn(example);
            scored.push((step.prediction, step.loss));
            // Saturated: a batch of huge losses stays a finite number in model_versions.
            loss_sum = (loss_sum + step.loss).min(f64::MAX);
            if (step.prediction >= 0.5) == (example.label >= 0.5) {
                correct += 1;
            }
            for name in Learner::touched_parameters(example) {
                before[slot[name]].2 = step.learning_rate;
            }
        }
        let drift_events = cached.learner.take_drift_events();
        if std::mem::take(&mut cached.learner.reset_happened) {
            // A `reset` adaptation reset the parameters in memory. Every stored parameter this
            // batch did not touch is reset from its stored state, exactly as the learner did (or
            // would have, for those this worker never loaded).
            let config = cached.learner.config.clone();
            for (name, mut state) in params::load_all(&mut *tx, model_id).await? {
                if slot.contains_key(name.as_str()) {
                    continue;
                }
                before.push((
                    name.clone(),
                    Some(state),
                    cached.learner.effective_learning_rate(),
                ));
                reset_state(&config, &mut state, name == INTERCEPT);
                cached.learner.params.insert(name, state);
            }
        }
        // By name: the order the history is written in (index locality).
        before.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let changes: Vec<ParamChange> = before
            .into_iter()
            .filter_map(|(name, old, rate)| {
                let new = cached.learner.param(&name);
                let unchanged = old.is_some_and(|o| params::same_bits(&o, &new))
                    || (old.is_none() && params::same_bits(&ParamState::default(), &new));
                (!unchanged).then_some(ParamChange {
                    parameter_id: name,
                    old,
                    new,
                    learning_rate: Some(rate),
                })
            })
            .collect();

        let version = model.version + 1;
        if drift_events
            .iter()
            .any(|e| e.adaptation != crate::learner::drift::Adaptation::None)
        {
            // The state before the adaptation, as a rollback target for the guard. It is taken
            // before this batch's changes are written, so it is exactly the previous version.
            // In the system's own label namespace: a user cannot have taken the label.
            let label = snapshots::before_adaptation_label(version);
            snapshots::copy(
                &mut *tx,
                model_id,
                model.version,
                model.examples_seen,
                Some(&label),
                SnapshotKind::Auto,
            )
            .await?;
        }
        params::write_changes(
            &mut *tx,
            model_id,
            version,
            UpdateType::Gradient,
            &self.config.source,
            &changes,
        )
        .await?;
        let applied: Vec<Uuid> = examples.iter().map(|(id, _)| *id).collect();
        queue::acknowledge(&mut *tx, model_id, version, &applied, &scored).await?;
        if shadow::feed::copy_batch(&mut *tx, model_id, &learned).await? > 0 {
            // On Citus the feedback trigger does not notify (src/citus.sql).
            queue::notify_workers(&mut *tx).await?;
        }
        let record = VersionRecord {
            kind: UpdateType::Gradient,
            examples: examples.len() as i32,
            loss_sum,
            correct: (model.kind == ModelKind::Logistic).then_some(correct),
            dead_lettered: dead.len() as i32,
            parameters_changed: changes.len() as i32,
            learning_rate: Some(cached.learner.effective_learning_rate()),
            rolled_back_to: None,
            source: Some(self.config.source.clone()),
            learner_state: Some(
                serde_json::to_value(cached.learner.model_state()).expect("state serializes"),
            ),
        };
        drift::record_events(&mut *tx, model_id, version, &drift_events).await?;
        version::commit_version(
            &mut *tx,
            model_id,
            version,
            cached.learner.examples_seen,
            &record,
        )
        .await?;
        snapshots::maybe_auto_snapshot(&mut *tx, model_id, version).await?;
        cached.version = version;
        Ok(Committed::Version {
            label_delays,
            cached,
            examples: examples.len(),
            dead: dead.len(),
            parameters_changed: changes.len(),
            loss_sum,
            drift_events,
        })
    }

    /// What follows a committed batch: metrics, the cache, the guard, the log.
    async fn after_commit(
        &mut self,
        model: &models::Model,
        done: Committed,
        started: Instant,
    ) -> BatchOutcome {
        let model_id = model.model_id;
        let Committed::Version {
            cached,
            examples,
            dead,
            parameters_changed,
            loss_sum,
            drift_events,
            label_delays,
        } = done
        else {
            let Committed::DeadOnly { dead } = done else {
                unreachable!()
            };
            if dead > 0 {
                tracing::warn!(%model_id, dead, "dead-lettered a batch of unusable rows");
            }
            crate::metrics::worker_dead(&model.name, dead as u64);
            return BatchOutcome::DeadOnly { dead };
        };
        let version = cached.version;
        crate::metrics::worker_batch(&model.name, examples, dead, loss_sum);
        crate::metrics::label_delays(&model.name, &label_delays);
        self.cache.insert(model_id, cached);
        if model.settings.guard.enabled {
            // The batch is committed whatever the guard does; a failed check is tried again
            // after the next batch.
            if let Err(e) = self
                .guard(model_id, &model.name, version, &model.settings.guard)
                .await
            {
                tracing::error!(%model_id, version, error = %e, "guard check failed");
            }
        }
        tracing::info!(
            %model_id,
            version,
            examples,
            dead,
            parameters_changed,
            mean_loss = loss_sum / examples as f64,
            ms = started.elapsed().as_secs_f64() * 1e3,
            drifts = drift_events.len(),
            "applied batch"
        );
        for event in &drift_events {
            crate::metrics::drift_detected(&model.name, &event.detector, event.adaptation);
            tracing::warn!(%model_id, version, detector = %event.detector, statistic = event.statistic,
                threshold = event.threshold, at_example = event.at_example,
                adaptation = ?event.adaptation, "concept drift detected");
        }
        BatchOutcome::Applied {
            version,
            examples,
            dead,
            parameters_changed,
        }
    }

    /// The guard against bad learning, after a committed batch: when the windowed loss has
    /// degraded past the threshold relative to the best recent snapshot, quarantine the model
    /// (workers skip it; its feedback stays pending) and roll it back to that snapshot.
    async fn guard(
        &mut self,
        model_id: Uuid,
        model_name: &str,
        version: i64,
        guard: &crate::learner::GuardConfig,
    ) -> Result<(), WorkerError> {
        let Some(trip) = crate::monitor::check_guard(&self.pool, model_id, version, guard).await?
        else {
            return Ok(());
        };
        let reason = trip.reason(version);
        // Quarantine first, so no batch can slip in between the rollback and the quarantine.
        if crate::monitor::quarantine(&self.pool, model_id, &reason).await? {
            crate::metrics::quarantined(model_name);
            self.cache.remove(&model_id);
            let target = RollbackTarget::Snapshot(trip.snapshot_id.to_string());
            let mut tx = self.pool.begin().await?;
            let outcome = rollback::rollback(&mut tx, model_id, &target).await?;
            tx.commit().await?;
            tracing::error!(
                %model_id,
                version,
                rolled_back_to = trip.snapshot_version,
                rollback_version = outcome.version,
                current_loss = trip.current_loss,
                snapshot_loss = trip.snapshot_loss,
                "guard tripped: model rolled back and quarantined"
            );
        }
        Ok(())
    }

    /// One pass over the models with work: a batch each. Returns what was done. A model whose
    /// batch fails does not stop the pass: the others get their batch.
    pub async fn run_pass(&mut self) -> Result<WorkerStats, WorkerError> {
        self.run_pass_until(&CancellationToken::new()).await
    }

    /// [`Self::run_pass`] that stops between models once `shutdown` is cancelled, and rolls back
    /// a batch still running `shutdown_grace` after it.
    async fn run_pass_until(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<WorkerStats, WorkerError> {
        self.maybe_maintain();
        let topology = match self.topology {
            Some(t) => t,
            None => *self.topology.insert(Topology::detect(&self.pool).await?),
        };
        let mut stats = WorkerStats {
            dead: queue::dead_letter_unknown_models(&self.pool, topology).await?,
            ..WorkerStats::default()
        };
        crate::metrics::worker_dead("unknown model", stats.dead);
        if self
            .waiting_checked
            .is_none_or(|at| at.elapsed() >= WAITING_CHECK)
        {
            self.waiting_checked = Some(Instant::now());
            // A failure only delays the waiting labels (the next check retries); batches go on.
            match queue::wake_or_expire_waiting(&self.pool, self.config.label_wait).await {
                Ok(waited) => {
                    crate::metrics::labels_waited(waited.woken, waited.expired);
                    stats.dead += waited.expired;
                    if waited.expired > 0 {
                        tracing::warn!(
                            expired = waited.expired,
                            wait_s = self.config.label_wait.as_secs_f64(),
                            "labels dead-lettered: their prediction was not logged within the \
                             label wait"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "waiting labels: check failed; retried in a second")
                }
            }
        }
        let unreadable = self.unreadable_models();
        for model_id in queue::models_with_work(&self.pool, &self.config.models, topology).await? {
            if shutdown.is_cancelled() {
                break;
            }
            if unreadable.contains(&model_id) {
                continue;
            }
            let started = Instant::now();
            let grace = self.config.shutdown_grace;
            let outcome = {
                let batch = self.run_batch(model_id);
                tokio::pin!(batch);
                tokio::select! {
                    outcome = &mut batch => Some(outcome),
                    _ = shutdown_then_grace(shutdown, grace) => None,
                }
            };
            let Some(outcome) = outcome else {
                // Dropping the batch's future drops its transaction: PostgreSQL rolls it back as
                // a whole (at the latest when this process exits and its connection closes), so
                // its rows stay pending and nothing of it is stored.
                tracing::warn!(%model_id, grace_s = grace.as_secs_f64(),
                    "shutdown: the batch in flight did not finish within the grace period; \
                     abandoned, rolled back, its rows stay pending");
                self.cache.remove(&model_id);
                break;
            };
            match outcome {
                Ok(BatchOutcome::Applied { examples, dead, .. }) => {
                    stats.batch_seconds += started.elapsed().as_secs_f64();
                    stats.batches += 1;
                    stats.examples += examples as u64;
                    stats.dead += dead as u64;
                }
                Ok(BatchOutcome::DeadOnly { dead }) => stats.dead += dead as u64,
                Ok(BatchOutcome::Empty | BatchOutcome::Skipped) => {}
                Err(e) => {
                    // Logged with what happens next where it failed; nothing of it is stored.
                    tracing::debug!(%model_id, error = %e, "batch attempt failed");
                    stats.failures += 1;
                }
            }
        }
        let (claims, secs, max) = std::mem::take(&mut self.claim_times);
        stats.claims = claims;
        stats.claim_seconds = secs;
        stats.claim_max_seconds = max;
        Ok(stats)
    }

    /// At most once per `maintenance_check`, and never two at once: refresh the planner
    /// statistics of tables that have grown and vacuum a bloated queue ([`maintenance::run`]),
    /// in a task of its own so that no batch waits for it.
    fn maybe_maintain(&mut self) {
        let Some(every) = self.config.maintenance_check else {
            return;
        };
        if self
            .maintenance_checked
            .is_some_and(|at| at.elapsed() < every)
            || self.maintenance.as_ref().is_some_and(|t| !t.is_finished())
        {
            return;
        }
        self.maintenance_checked = Some(Instant::now());
        let retention = self
            .config
            .retention_every
            .map(|every| (self.config.models.clone(), every));
        self.maintenance = Some(tokio::spawn(maintenance::run(self.pool.clone(), retention)));
    }

    /// Runs until `shutdown` is cancelled (or, with `until_empty`, until no work is left). A
    /// batch in progress is finished, never half-applied: cancellation is checked between
    /// batches, and a batch still running `shutdown_grace` after it is rolled back as a whole
    /// (its rows stay pending for the next worker).
    ///
    /// Work is found by polling every `poll_interval`, and sooner on a notification: the LISTEN
    /// connection is kept up in the background ([`crate::notify`]: it reconnects by itself with
    /// capped exponential backoff and jitter, also when the first attempt fails), and one wake-up
    /// takes every notification queued since the last, so a burst costs one pass.
    pub async fn run(&mut self, shutdown: CancellationToken) -> Result<WorkerStats, WorkerError> {
        let mut total = WorkerStats::default();
        let mut wakeups = crate::notify::Subscription::start(
            &self.pool,
            crate::notify::ListenConfig::new(LISTENER_APP_NAME, &[FEEDBACK_CHANNEL]),
        );
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let pass = match self.run_pass_until(&shutdown).await {
                Ok(pass) => pass,
                Err(e) => {
                    // Finding work failed (the database is away, most likely): nothing was
                    // half-done; drop cached state and try again after the poll interval.
                    tracing::error!(error = %e, "worker pass failed; retrying after the poll interval");
                    self.cache.clear();
                    WorkerStats::default()
                }
            };
            total.add(&pass);
            // A model being split after a failure tries its smaller claim at once.
            if pass.batches > 0 || pass.dead > 0 || self.splitting() {
                continue;
            }
            if self.config.until_empty {
                let set_aside = self.unreadable_models();
                if queue::pending_count(&self.pool, &self.config.models, &set_aside).await? == 0 {
                    break;
                }
            }
            // Idle: wait for a notification (a hint), the poll tick, or shutdown.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.poll_interval()) => {},
                wake = wakeups.wait() => {
                    tracing::trace!(notifications = wake.notifications.len(),
                        reconnects = wake.reconnects, "worker woken");
                }
            }
        }
        tracing::info!(
            batches = total.batches,
            examples = total.examples,
            dead = total.dead,
            "worker stopped"
        );
        Ok(total)
    }
}
