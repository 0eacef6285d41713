//! The serving cache: one immutable in-memory copy of each served model at one committed
//! version, swapped atomically when a newer version is loaded.
//!
//! A prediction takes the current [`ServedModel`] (an `Arc`, one atomic load) and computes with
//! it alone, so every answer comes from exactly one version and names it, and a reload (which
//! builds the next copy off to the side) never blocks or mixes into predictions on the old one.
//! A version is read in one `REPEATABLE READ` snapshot: `models.version` and the parameters come
//! from the same committed state (invariant 3).
//!
//! Refresh is incremental when it can be: only the parameters whose `model_parameters.version`
//! is newer than the cached version are read and applied to a copy of the cached map. It falls
//! back to a full load when a version in between is not a plain learned batch (a rollback or any
//! other kind), or when the model's kind or settings changed.
//!
//! Pinned predictions (`version` or `snapshot` in the request): each model's slot also keeps
//! its [`RECENT_VERSIONS`] most recent other versions (those it served before a refresh replaced
//! them, and those loaded for a pinned request), so a prediction at a recent version is answered
//! from memory; any other reachable version is reconstructed once from the database
//! ([`crate::timeline::reconstruct::parameters_at`]) and then kept among the recent ones.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use prometheus::IntCounter;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::learner::{Learner, ParamState};
use crate::metrics;
use crate::models::{self, Model, ModelError};
use crate::params;
use crate::timeline::error::TimelineError;
use crate::timeline::reconstruct::{self, At};
use crate::timeline::snapshots::{self, Lock};
use crate::timeline::version;

/// Versions other than the current one that each model's slot keeps in memory for pinned
/// predictions (each a full copy of the parameters: the memory cost).
pub const RECENT_VERSIONS: usize = 4;

/// Models with more parameters than this are copied and patched on the blocking thread pool, so
/// a big reload does not hold up the async workers that answer predictions.
const BLOCKING_BUILD_THRESHOLD: usize = 20_000;

/// One model at one committed version, as predictions see it. Immutable once built.
#[derive(Debug)]
pub struct ServedModel {
    pub model_id: Uuid,
    pub name: String,
    /// The committed version these parameters belong to.
    pub version: i64,
    pub learner: Learner,
    /// `olps_predictions_total{model}` for this model (resolved once, not per request).
    pub predictions: IntCounter,
}

impl ServedModel {
    fn new(model: &Model, params: HashMap<String, ParamState>) -> ServedModel {
        let mut learner = Learner::new(model.kind, model.settings.clone());
        learner.params = params;
        learner.examples_seen = model.examples_seen;
        learner.restore_model_state(model.learner_state.clone());
        ServedModel {
            model_id: model.model_id,
            name: model.name.clone(),
            version: model.version,
            learner,
            predictions: metrics::global()
                .predictions
                .with_label_values(&[&model.name]),
        }
    }
}

struct Slot {
    current: ArcSwap<ServedModel>,
    /// The highest version anyone has asked this slot to reach.
    wanted: AtomicI64,
    /// Whether a background refresh of this slot is running.
    refreshing: AtomicBool,
    /// Recent versions other than `current`, most recently used first (at most
    /// [`RECENT_VERSIONS`]).
    recent: Mutex<VecDeque<Arc<ServedModel>>>,
}

impl Slot {
    /// Keeps `served` among the recent versions (moved to the front if already there).
    fn remember(&self, served: Arc<ServedModel>) {
        let mut recent = self.recent.lock().expect("recent lock");
        recent.retain(|r| r.version != served.version);
        recent.push_front(served);
        recent.truncate(RECENT_VERSIONS);
    }

    /// The slot's copy of `version`, if it is the current one or a recent one.
    fn at(&self, version: i64) -> Option<Arc<ServedModel>> {
        let current = self.current.load_full();
        if current.version == version {
            return Some(current);
        }
        let mut recent = self.recent.lock().expect("recent lock");
        let i = recent.iter().position(|r| r.version == version)?;
        let hit = recent.remove(i).expect("found above");
        recent.push_front(hit.clone());
        Some(hit)
    }
}

/// How a refresh went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// The cache already had the latest version.
    UpToDate(i64),
    /// Loaded from scratch.
    Full(i64),
    /// Patched with the parameters changed since the cached version.
    Incremental(i64),
}

/// The in-memory models of one service.
pub struct ModelCache {
    pool: PgPool,
    slots: RwLock<HashMap<Uuid, Arc<Slot>>>,
    /// Names already resolved to UUIDs (names are unique and never change).
    names: RwLock<HashMap<String, Uuid>>,
}

/// A read-only transaction whose statements all see one snapshot.
async fn snapshot(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
}

async fn find_by_id(conn: &mut PgConnection, model_id: Uuid) -> Result<Model, ModelError> {
    models::find(conn, &model_id.to_string()).await
}

impl ModelCache {
    pub fn new(pool: PgPool) -> ModelCache {
        ModelCache {
            pool,
            slots: RwLock::new(HashMap::new()),
            names: RwLock::new(HashMap::new()),
        }
    }

    fn slot(&self, model_id: Uuid) -> Option<Arc<Slot>> {
        self.slots
            .read()
            .expect("cache lock")
            .get(&model_id)
            .cloned()
    }

    /// The models held in memory and their versions.
    pub fn versions(&self) -> Vec<(Uuid, i64)> {
        self.slots
            .read()
            .expect("cache lock")
            .iter()
            .map(|(id, slot)| (*id, slot.current.load().version))
            .collect()
    }

    /// The cached copy of a model, without touching the database.
    pub fn cached(&self, model_id: Uuid) -> Option<Arc<ServedModel>> {
        self.slot(model_id).map(|s| s.current.load_full())
    }

    /// Resolves a model given by UUID or name; a name not seen yet is looked up once.
    async fn resolve(&self, key: &str) -> Result<Uuid, ModelError> {
        if let Ok(id) = Uuid::parse_str(key) {
            return Ok(id);
        }
        if let Some(id) = self.names.read().expect("cache lock").get(key) {
            return Ok(*id);
        }
        let id = models::resolve_id(&self.pool, key).await?;
        self.names
            .write()
            .expect("cache lock")
            .insert(key.to_string(), id);
        Ok(id)
    }

    /// The model to predict with: the cached copy (no database access), or, the first time a
    /// model is asked for, its latest committed version loaded now.
    pub async fn get(&self, key: &str) -> Result<Arc<ServedModel>, ModelError> {
        let model_id = self.resolve(key).await?;
        if let Some(served) = self.cached(model_id) {
            return Ok(served);
        }
        let loaded = self.load_full(model_id).await?;
        Ok(self.install(loaded, "full"))
    }

    /// The model at a pinned committed version: from memory when the slot holds it (the current
    /// or a recent version), otherwise reconstructed from the database in one snapshot and then
    /// kept among the recent versions. Errors: no such model (404), a version beyond the current
    /// one (404), a pruned version (410).
    pub async fn get_version(
        &self,
        key: &str,
        version: i64,
    ) -> Result<Arc<ServedModel>, TimelineError> {
        let current = self.get(key).await?;
        let slot = self.slot(current.model_id);
        if let Some(hit) = slot.as_ref().and_then(|s| s.at(version)) {
            metrics::global()
                .pinned_predictions
                .with_label_values(&["memory"])
                .inc();
            return Ok(hit);
        }
        let loaded = Arc::new(self.load_version(current.model_id, version).await?);
        metrics::global()
            .pinned_predictions
            .with_label_values(&["database"])
            .inc();
        if let Some(slot) = slot {
            slot.remember(loaded.clone());
        }
        Ok(loaded)
    }

    /// The model at the version of one of its snapshots (by UUID or label): see
    /// [`ModelCache::get_version`]. An unknown snapshot is a 404.
    pub async fn get_snapshot(
        &self,
        key: &str,
        snapshot: &str,
    ) -> Result<Arc<ServedModel>, TimelineError> {
        let model_id = self.resolve(key).await?;
        let mut conn = self.pool.acquire().await?;
        let found = snapshots::find(&mut conn, model_id, snapshot, Lock::None).await?;
        drop(conn);
        self.get_version(key, found.model_version).await
    }

    /// Reconstructs a committed version from the database (a point-in-time read), with the
    /// example count and learner state recorded with it.
    async fn load_version(
        &self,
        model_id: Uuid,
        version: i64,
    ) -> Result<ServedModel, TimelineError> {
        let mut tx = self.pool.begin().await?;
        let read = reconstruct::parameters_at(&mut tx, model_id, At::Version(version)).await?;
        let mut model = find_by_id(&mut tx, model_id).await?;
        // Version 0 has no row; retention may have deleted an old one (the parameters are
        // still exact: the state recorded with a version does not change predictions).
        let recorded: Option<(i64, Option<serde_json::Value>)> = sqlx::query_as(
            "SELECT examples_seen, learner_state FROM model_versions
             WHERE model_id = $1 AND model_version = $2",
        )
        .bind(model_id)
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let (examples_seen, state) = recorded.unwrap_or((0, None));
        model.version = read.version;
        model.examples_seen = examples_seen;
        model.learner_state = state
            .and_then(|s| serde_json::from_value(s).ok())
            .unwrap_or_default();
        let params = read
            .parameters
            .iter()
            .map(|p| (p.parameter_id.clone(), p.state()))
            .collect();
        Ok(ServedModel::new(&model, params))
    }

    /// The versions a model's slot holds besides the current one, most recently used first.
    pub fn recent_versions(&self, model_id: Uuid) -> Vec<i64> {
        self.slot(model_id).map_or_else(Vec::new, |slot| {
            let recent = slot.recent.lock().expect("recent lock");
            recent.iter().map(|r| r.version).collect()
        })
    }

    /// Forgets a model (deleted from the database).
    pub fn evict(&self, model_id: Uuid) {
        if let Some(slot) = self.slots.write().expect("cache lock").remove(&model_id) {
            let name = slot.current.load().name.clone();
            tracing::info!(%model_id, name, "serving: model deleted; no longer served");
            let _ = metrics::global()
                .serving_version
                .remove_label_values(&[&name]);
        }
        self.names
            .write()
            .expect("cache lock")
            .retain(|_, id| *id != model_id);
    }

    /// Puts a freshly loaded copy in place unless the slot already holds a newer version.
    /// Returns what the slot holds afterwards.
    fn install(&self, loaded: ServedModel, mode: &str) -> Arc<ServedModel> {
        let loaded = Arc::new(loaded);
        let m = metrics::global();
        let mut slots = self.slots.write().expect("cache lock");
        let slot = slots.entry(loaded.model_id).or_insert_with(|| {
            Arc::new(Slot {
                current: ArcSwap::new(loaded.clone()),
                wanted: AtomicI64::new(loaded.version),
                refreshing: AtomicBool::new(false),
                recent: Mutex::new(VecDeque::new()),
            })
        });
        let current = slot.current.load_full();
        let winner = if Arc::ptr_eq(&current, &loaded) || current.version < loaded.version {
            slot.current.store(loaded.clone());
            if !Arc::ptr_eq(&current, &loaded) {
                // Still answers predictions pinned to it, from memory.
                slot.remember(current);
            }
            m.model_reloads
                .with_label_values(&[&loaded.name, mode])
                .inc();
            loaded
        } else {
            current
        };
        m.serving_version
            .with_label_values(&[&winner.name])
            .set(winner.version);
        winner
    }

    /// Loads a model's latest committed version from scratch.
    async fn load_full(&self, model_id: Uuid) -> Result<ServedModel, ModelError> {
        let started = Instant::now();
        let mut tx = snapshot(&self.pool).await?;
        let model = find_by_id(&mut tx, model_id).await?;
        let params = params::load_all(&mut *tx, model_id).await?;
        tx.commit().await?;
        let served = ServedModel::new(&model, params);
        metrics::global()
            .model_reload_duration
            .with_label_values(&["full"])
            .observe(started.elapsed().as_secs_f64());
        Ok(served)
    }

    /// Brings a cached model to the latest committed version now (incrementally when it can).
    /// A model not in the cache is loaded.
    pub async fn refresh(&self, model_id: Uuid) -> Result<Refresh, ModelError> {
        let Some(old) = self.cached(model_id) else {
            let loaded = self.load_full(model_id).await?;
            let v = self.install(loaded, "full").version;
            return Ok(Refresh::Full(v));
        };
        let started = Instant::now();
        let mut tx = snapshot(&self.pool).await?;
        let model = find_by_id(&mut tx, model_id).await?;
        if model.version <= old.version {
            tx.commit().await?;
            return Ok(Refresh::UpToDate(old.version));
        }
        let plain = version::only_learned_since(&mut *tx, model_id, old.version).await?;
        let same_model = model.kind == old.learner.kind && model.settings == old.learner.config;
        if !(plain && same_model) {
            let params = params::load_all(&mut *tx, model_id).await?;
            tx.commit().await?;
            let served = ServedModel::new(&model, params);
            metrics::global()
                .model_reload_duration
                .with_label_values(&["full"])
                .observe(started.elapsed().as_secs_f64());
            let v = self.install(served, "full").version;
            return Ok(Refresh::Full(v));
        }
        let changed = params::changed_since(&mut *tx, model_id, old.version).await?;
        tx.commit().await?;
        let big = old.learner.params.len() > BLOCKING_BUILD_THRESHOLD;
        let build = move || {
            let mut params = old.learner.params.clone();
            params.extend(changed);
            ServedModel::new(&model, params)
        };
        let served = if big {
            tokio::task::spawn_blocking(build)
                .await
                .map_err(|e| ModelError::Db(sqlx::Error::Protocol(format!("reload task: {e}"))))?
        } else {
            build()
        };
        metrics::global()
            .model_reload_duration
            .with_label_values(&["incremental"])
            .observe(started.elapsed().as_secs_f64());
        let v = self.install(served, "incremental").version;
        Ok(Refresh::Incremental(v))
    }

    /// Asks for a cached model to reach at least `version`, in the background. Requests that
    /// arrive while a refresh runs are folded into it (the refresh always reads the latest
    /// committed version). Models not in the cache are ignored: they load on first use.
    pub fn request_refresh(self: &Arc<Self>, model_id: Uuid, version: i64) {
        let Some(slot) = self.slot(model_id) else {
            return;
        };
        slot.wanted.fetch_max(version, Ordering::AcqRel);
        if slot.current.load().version >= version || slot.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let cache = self.clone();
        tokio::spawn(async move {
            loop {
                let outcome = cache.refresh(model_id).await;
                slot.refreshing.store(false, Ordering::Release);
                if let Err(ModelError::NotFound(_)) = outcome {
                    cache.evict(model_id);
                    return;
                }
                if let Err(e) = outcome {
                    // The periodic version check retries.
                    tracing::warn!(%model_id, error = %e, "model refresh failed");
                    return;
                }
                let behind = slot.current.load().version < slot.wanted.load(Ordering::Acquire);
                if !behind || slot.refreshing.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }

    /// Compares every cached model with `models.version` and refreshes those behind (the
    /// fallback when notifications are lost). Returns how many were behind.
    pub async fn check_versions(self: &Arc<Self>) -> Result<usize, sqlx::Error> {
        let cached = self.versions();
        if cached.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = cached.iter().map(|(id, _)| *id).collect();
        let rows = models::versions_of(&self.pool, &ids).await?;
        let mut cached: HashMap<Uuid, i64> = cached.into_iter().collect();
        let mut behind = 0;
        for (model_id, version) in rows {
            if cached.remove(&model_id).is_some_and(|v| v < version) {
                behind += 1;
                self.request_refresh(model_id, version);
            }
        }
        // What is left was deleted: stop serving it (and forget its name, which a new model
        // may take).
        for model_id in cached.keys() {
            self.evict(*model_id);
        }
        metrics::global().version_checks.inc();
        Ok(behind)
    }
}
