//! The learning worker: drains `feedback_queue` model by model, learns one example at a time, and
//! commits each model batch in one transaction (parameters, history, version, metrics,
//! acknowledgement, notification), so every event is applied exactly once or dead-lettered.

pub mod drift;
pub mod examples;
pub mod queue;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::learner::{reset_state, Learner, ModelKind, ParamState, INTERCEPT};
use crate::models::{self, ModelError, ModelStatus};
use crate::params::{self, ParamChange, UpdateType};
use crate::timeline::rollback::{self, RollbackTarget};
use crate::timeline::snapshots::{self, SnapshotKind};
use crate::timeline::version::{self, VersionRecord};

/// The channel the feedback trigger notifies (a hint: workers also poll).
pub const FEEDBACK_CHANNEL: &str = "olps_feedback";

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    History(#[from] crate::timeline::error::TimelineError),
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Only these models (empty: all).
    pub models: Vec<Uuid>,
    /// Queue rows claimed per model batch.
    pub batch_size: i64,
    /// How often to look for work when no notification arrives.
    pub poll_interval: Duration,
    /// Stop once no pending rows remain for the selected active models.
    pub until_empty: bool,
    /// Recorded as `parameter_updates.source`.
    pub source: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            models: Vec::new(),
            batch_size: 1000,
            poll_interval: Duration::from_millis(250),
            until_empty: false,
            source: "feedback".into(),
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
    /// Only unusable rows were claimed: set aside, no new version.
    DeadOnly { dead: usize },
    /// Nothing pending for the model.
    Empty,
    /// Another transaction holds the model, or it is not active: try another model.
    Skipped,
}

/// Totals over a worker's run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerStats {
    pub batches: u64,
    pub examples: u64,
    pub dead: u64,
}

/// A model's learner as of a committed version, reused while the database is still at it.
struct Cached {
    version: i64,
    learner: Learner,
}

pub struct Worker {
    pool: PgPool,
    config: WorkerConfig,
    cache: HashMap<Uuid, Cached>,
}

impl Worker {
    pub fn new(pool: PgPool, config: WorkerConfig) -> Worker {
        Worker {
            pool,
            config,
            cache: HashMap::new(),
        }
    }

    /// One batch of one model, in one transaction.
    pub async fn run_batch(&mut self, model_id: Uuid) -> Result<BatchOutcome, WorkerError> {
        let started = Instant::now();
        let mut tx = self.pool.begin().await?;
        // Early returns end the transaction explicitly: a dropped one is rolled back only when
        // its pooled connection is next used, and would hold the model's lock until then.
        let Some(model) = models::lock(&mut tx, model_id, true).await? else {
            tx.rollback().await?;
            return Ok(BatchOutcome::Skipped);
        };
        if model.status != ModelStatus::Active {
            tx.rollback().await?;
            return Ok(BatchOutcome::Skipped);
        }
        let rows = queue::claim(&mut tx, model_id, self.config.batch_size).await?;
        if rows.is_empty() {
            tx.rollback().await?;
            return Ok(BatchOutcome::Empty);
        }

        let mut examples = Vec::with_capacity(rows.len());
        let mut dead = Vec::new();
        for row in &rows {
            match examples::example_from_row(row, model.kind) {
                Ok(example) => examples.push((row.queue_id, example)),
                Err(reason) => dead.push((row.queue_id, reason)),
            }
        }
        queue::dead_letter(&mut tx, model_id, &dead).await?;
        if examples.is_empty() {
            tx.commit().await?;
            tracing::warn!(%model_id, dead = dead.len(), "dead-lettered a batch of unusable rows");
            crate::metrics::worker_dead(&model.name, dead.len() as u64);
            return Ok(BatchOutcome::DeadOnly { dead: dead.len() });
        }

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
        // before the batch and the rate of its last step.
        let mut before: BTreeMap<String, (Option<ParamState>, f64)> = BTreeMap::new();
        let (mut loss_sum, mut correct) = (0.0, 0i32);
        for (_, example) in &examples {
            for name in Learner::touched_parameters(example) {
                if !before.contains_key(name) {
                    let old = cached.learner.params.get(name).copied();
                    before.insert(name.to_string(), (old, 0.0));
                }
            }
            let step = cached.learner.learn(example);
            loss_sum += step.loss;
            if (step.prediction >= 0.5) == (example.label >= 0.5) {
                correct += 1;
            }
            for name in Learner::touched_parameters(example) {
                if let Some(entry) = before.get_mut(name) {
                    entry.1 = step.learning_rate;
                }
            }
        }
        let drift_events = cached.learner.take_drift_events();
        if std::mem::take(&mut cached.learner.reset_happened) {
            // A `reset` adaptation reset the parameters in memory. Every stored parameter this
            // batch did not touch is reset from its stored state, exactly as the learner did (or
            // would have, for those this worker never loaded).
            let config = cached.learner.config.clone();
            for (name, mut state) in params::load_all(&mut *tx, model_id).await? {
                if before.contains_key(&name) {
                    continue;
                }
                before.insert(
                    name.clone(),
                    (Some(state), cached.learner.effective_learning_rate()),
                );
                reset_state(&config, &mut state, name == INTERCEPT);
                cached.learner.params.insert(name, state);
            }
        }
        let changes: Vec<ParamChange> = before
            .into_iter()
            .filter_map(|(name, (old, rate))| {
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
            let label = format!("auto-before-adaptation-v{version}");
            snapshots::copy(
                &mut tx,
                model_id,
                model.version,
                model.examples_seen,
                Some(&label),
                SnapshotKind::Auto,
            )
            .await?;
        }
        params::write_changes(
            &mut tx,
            model_id,
            version,
            UpdateType::Gradient,
            &self.config.source,
            &changes,
        )
        .await?;
        let applied: Vec<Uuid> = examples.iter().map(|(id, _)| *id).collect();
        queue::acknowledge(&mut tx, model_id, version, &applied).await?;
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
        drift::record_events(&mut tx, model_id, version, &drift_events).await?;
        version::commit_version(
            &mut tx,
            model_id,
            version,
            cached.learner.examples_seen,
            &record,
        )
        .await?;
        snapshots::maybe_auto_snapshot(&mut tx, model_id, version).await?;
        tx.commit().await?;
        crate::metrics::worker_batch(&model.name, examples.len(), dead.len(), loss_sum);

        cached.version = version;
        self.cache.insert(model_id, cached);
        if model.settings.guard.enabled {
            self.guard(model_id, version, &model.settings.guard).await?;
        }
        tracing::info!(
            %model_id,
            version,
            examples = examples.len(),
            dead = dead.len(),
            parameters_changed = changes.len(),
            mean_loss = loss_sum / examples.len() as f64,
            ms = started.elapsed().as_secs_f64() * 1e3,
            drifts = drift_events.len(),
            "applied batch"
        );
        for event in &drift_events {
            tracing::warn!(%model_id, version, detector = %event.detector, statistic = event.statistic,
                threshold = event.threshold, at_example = event.at_example,
                adaptation = ?event.adaptation, "concept drift detected");
        }
        Ok(BatchOutcome::Applied {
            version,
            examples: examples.len(),
            dead: dead.len(),
            parameters_changed: changes.len(),
        })
    }

    /// The guard against bad learning, after a committed batch: when the windowed loss has
    /// degraded past the threshold relative to the best recent snapshot, quarantine the model
    /// (workers skip it; its feedback stays pending) and roll it back to that snapshot.
    async fn guard(
        &mut self,
        model_id: Uuid,
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

    /// One pass over the models with work: a batch each. Returns what was done.
    pub async fn run_pass(&mut self) -> Result<WorkerStats, WorkerError> {
        let mut stats = WorkerStats {
            dead: queue::dead_letter_unknown_models(&self.pool).await?,
            ..WorkerStats::default()
        };
        crate::metrics::worker_dead("unknown model", stats.dead);
        for model_id in queue::models_with_work(&self.pool, &self.config.models).await? {
            match self.run_batch(model_id).await? {
                BatchOutcome::Applied { examples, dead, .. } => {
                    stats.batches += 1;
                    stats.examples += examples as u64;
                    stats.dead += dead as u64;
                }
                BatchOutcome::DeadOnly { dead } => stats.dead += dead as u64,
                BatchOutcome::Empty | BatchOutcome::Skipped => {}
            }
        }
        Ok(stats)
    }

    /// Runs until `shutdown` is cancelled (or, with `until_empty`, until no work is left). A
    /// batch in progress is finished, never half-applied: cancellation is checked between batches.
    pub async fn run(&mut self, shutdown: CancellationToken) -> Result<WorkerStats, WorkerError> {
        let mut total = WorkerStats::default();
        let mut listener = match PgListener::connect_with(&self.pool).await {
            Ok(mut l) => match l.listen(FEEDBACK_CHANNEL).await {
                Ok(()) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; polling only");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "no listener connection; polling only");
                None
            }
        };
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let pass = match self.run_pass().await {
                Ok(pass) => pass,
                Err(e) => {
                    // A failed batch was rolled back as a whole; drop cached state and retry.
                    tracing::error!(error = %e, "batch failed; retrying after the poll interval");
                    self.cache.clear();
                    WorkerStats::default()
                }
            };
            total.batches += pass.batches;
            total.examples += pass.examples;
            total.dead += pass.dead;
            if pass.batches > 0 || pass.dead > 0 {
                continue;
            }
            if self.config.until_empty
                && queue::pending_count(&self.pool, &self.config.models).await? == 0
            {
                break;
            }
            // Idle: wait for a notification (a hint), the poll tick, or shutdown.
            let poll = tokio::time::sleep(self.config.poll_interval);
            match listener.as_mut() {
                Some(l) => tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = poll => {},
                    notification = l.recv() => {
                        if let Err(e) = notification {
                            tracing::warn!(error = %e, "notification connection lost; it reconnects, polling meanwhile");
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                _ = tokio::time::sleep(self.config.poll_interval) => {},
                            }
                        }
                    }
                },
                None => tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = poll => {},
                },
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
