//! The version line's operations, each in a transaction of its own that commits (olps' functions
//! run in the caller's transaction; the tests are that caller).

use chrono::{DateTime, Utc};
use olps::timeline::error::TimelineError;
use olps::timeline::history::{self, HistoryFilter, PruneReport, UpdateRow};
use olps::timeline::reconstruct::{self, At, ParametersAt, ReadPlan};
use olps::timeline::rollback::{self, RollbackOutcome, RollbackPlan, RollbackTarget};
use olps::timeline::snapshots::{self, Snapshot};
use sqlx::PgPool;
use uuid::Uuid;

pub async fn rollback(
    pool: &PgPool,
    model_id: Uuid,
    target: &RollbackTarget,
) -> Result<RollbackOutcome, TimelineError> {
    rollback_with(pool, model_id, target, RollbackPlan::Auto).await
}

pub async fn rollback_with(
    pool: &PgPool,
    model_id: Uuid,
    target: &RollbackTarget,
    plan: RollbackPlan,
) -> Result<RollbackOutcome, TimelineError> {
    let mut tx = pool.begin().await?;
    let outcome = rollback::rollback_with(&mut tx, model_id, target, plan).await?;
    tx.commit().await?;
    Ok(outcome)
}

pub async fn parameters_at(
    pool: &PgPool,
    model_id: Uuid,
    at: At,
) -> Result<ParametersAt, TimelineError> {
    parameters_at_with(pool, model_id, at, ReadPlan::Auto).await
}

pub async fn parameters_at_with(
    pool: &PgPool,
    model_id: Uuid,
    at: At,
    plan: ReadPlan,
) -> Result<ParametersAt, TimelineError> {
    let mut tx = pool.begin().await?;
    let read = reconstruct::parameters_at_with(&mut tx, model_id, at, plan).await?;
    tx.commit().await?;
    Ok(read)
}

pub async fn create_snapshot(
    pool: &PgPool,
    model_id: Uuid,
    label: Option<&str>,
) -> Result<Snapshot, TimelineError> {
    let mut tx = pool.begin().await?;
    let snapshot = snapshots::create(&mut tx, model_id, label).await?;
    tx.commit().await?;
    Ok(snapshot)
}

pub async fn delete_snapshot(
    pool: &PgPool,
    model_id: Uuid,
    key: &str,
) -> Result<Snapshot, TimelineError> {
    let mut tx = pool.begin().await?;
    let snapshot = snapshots::delete(&mut tx, model_id, key).await?;
    tx.commit().await?;
    Ok(snapshot)
}

pub async fn list_snapshots(pool: &PgPool, model_id: Uuid) -> Result<Vec<Snapshot>, TimelineError> {
    snapshots::list(&mut *pool.acquire().await?, model_id).await
}

pub async fn prune(
    pool: &PgPool,
    model_id: Uuid,
    before: DateTime<Utc>,
    dry_run: bool,
) -> Result<PruneReport, TimelineError> {
    let mut tx = pool.begin().await?;
    let report = history::prune(&mut tx, model_id, before, dry_run).await?;
    tx.commit().await?;
    Ok(report)
}

pub async fn updates(
    pool: &PgPool,
    model_id: Uuid,
    filter: &HistoryFilter,
) -> Result<Vec<UpdateRow>, TimelineError> {
    history::updates(&mut *pool.acquire().await?, model_id, filter).await
}

pub async fn delete_model(
    pool: &PgPool,
    model_id: Uuid,
) -> Result<Vec<(String, u64)>, olps::models::ModelError> {
    let mut tx = pool.begin().await?;
    let removed = olps::models::delete(&mut tx, model_id).await?;
    tx.commit().await?;
    Ok(removed)
}
