//! Monitoring a model's learning: the prequential loss series, drift events, and the model's
//! status (a quarantined model is not learned from until it is resumed).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::models::{self, ModelStatus};
use crate::timeline::version;

/// One `drift_events` row.
#[derive(Debug, Clone, Serialize, PartialEq, FromRow)]
pub struct DriftEventRow {
    pub model_version: i64,
    pub detector: String,
    pub statistic: f64,
    pub threshold: f64,
    pub at_example: i64,
    pub adaptation: String,
    pub lr_multiplier: f64,
    pub detected_at: DateTime<Utc>,
}

pub async fn drift_events(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    from: i64,
    to: i64,
) -> Result<Vec<DriftEventRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT model_version, detector, statistic, threshold, at_example, adaptation,
                lr_multiplier, detected_at
         FROM drift_events WHERE model_id = $1 AND model_version BETWEEN $2 AND $3 ORDER BY id",
    )
    .bind(model_id)
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await
}

/// Lets a quarantined model learn again. Returns false when it was not quarantined.
pub async fn resume(db: impl PgExecutor<'_>, model_id: Uuid) -> Result<bool, sqlx::Error> {
    models::change_status(
        db,
        model_id,
        ModelStatus::Quarantined,
        ModelStatus::Active,
        None,
    )
    .await
}

/// Why the guard tripped.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GuardTrip {
    pub snapshot_id: Uuid,
    pub snapshot_version: i64,
    pub snapshot_loss: f64,
    pub current_loss: f64,
    pub window: i64,
}

impl GuardTrip {
    pub fn reason(&self, version: i64) -> String {
        format!(
            "guard: prequential loss {:.4} over the last {} examples at version {version} is past \
             the threshold relative to {:.4} at snapshot {} (version {}); rolled back to that \
             snapshot and quarantined. Resume with `olps model resume` once the feed is fixed.",
            self.current_loss,
            self.window,
            self.snapshot_loss,
            self.snapshot_id,
            self.snapshot_version
        )
    }
}

/// Checks the guard at `version`: the windowed loss now against the best of the recent
/// snapshots' windowed losses.
pub async fn check_guard(
    pool: &sqlx::PgPool,
    model_id: Uuid,
    version: i64,
    guard: &crate::learner::GuardConfig,
) -> Result<Option<GuardTrip>, sqlx::Error> {
    let Some((current, examples)) =
        version::windowed_loss(pool, model_id, version, guard.window).await?
    else {
        return Ok(None);
    };
    if examples < guard.window {
        return Ok(None);
    }
    let snapshots: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT snapshot_id, model_version FROM snapshots
         WHERE model_id = $1 AND model_version BETWEEN 1 AND $2 - 1
         ORDER BY model_version DESC, created_at DESC LIMIT $3",
    )
    .bind(model_id)
    .bind(version)
    .bind(guard.snapshots)
    .fetch_all(pool)
    .await?;
    let mut best: Option<(Uuid, i64, f64)> = None;
    for (snapshot_id, snapshot_version) in snapshots {
        if let Some((loss, n)) =
            version::windowed_loss(pool, model_id, snapshot_version, guard.window).await?
        {
            // A snapshot judged on too few examples is no reference.
            if n * 2 >= guard.window && best.is_none_or(|b| loss < b.2) {
                best = Some((snapshot_id, snapshot_version, loss));
            }
        }
    }
    let Some((snapshot_id, snapshot_version, snapshot_loss)) = best else {
        return Ok(None);
    };
    let tripped = current > snapshot_loss * (1.0 + guard.threshold)
        && current - snapshot_loss > guard.min_increase;
    Ok(tripped.then_some(GuardTrip {
        snapshot_id,
        snapshot_version,
        snapshot_loss,
        current_loss: current,
        window: guard.window,
    }))
}

/// Quarantines a model with its reason. Waits for a batch in progress (the model's row lock);
/// a quarantined model is skipped by workers, its feedback stays pending.
pub async fn quarantine(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    models::change_status(
        db,
        model_id,
        ModelStatus::Active,
        ModelStatus::Quarantined,
        Some(reason),
    )
    .await
}
