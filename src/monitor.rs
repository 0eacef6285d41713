//! Monitoring a model's learning: the prequential loss series, drift events, and the model's
//! status (a quarantined model is not learned from until it is resumed).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

/// One point of the prequential loss series: consecutive learned versions covering about
/// `window` examples.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LossPoint {
    pub from_version: i64,
    pub to_version: i64,
    pub examples: i64,
    pub mean_loss: f64,
    /// Logistic models: the share of examples whose prediction (before learning) was on the
    /// right side of 0.5.
    pub accuracy: Option<f64>,
    pub until: DateTime<Utc>,
}

/// The loss series over versions `from..=to`, in points of at least `window` examples each
/// (the last point may be smaller).
pub async fn loss_series(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    from: i64,
    to: i64,
    window: i64,
) -> Result<Vec<LossPoint>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH v AS (
             SELECT model_version, examples, loss_sum, correct, created_at,
                    sum(examples) OVER (ORDER BY model_version) - examples AS before
             FROM model_versions
             WHERE model_id = $1 AND kind = 'gradient' AND examples > 0
               AND model_version BETWEEN $2 AND $3
         )
         SELECT min(model_version), max(model_version), sum(examples)::int8,
                sum(loss_sum) / sum(examples),
                sum(correct)::float8 / sum(examples), max(created_at)
         FROM v GROUP BY before / $4 ORDER BY 1",
    )
    .bind(model_id)
    .bind(from)
    .bind(to)
    .bind(window.max(1))
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(LossPoint {
                from_version: r.try_get(0)?,
                to_version: r.try_get(1)?,
                examples: r.try_get(2)?,
                mean_loss: r.try_get(3)?,
                accuracy: r.try_get(4)?,
                until: r.try_get(5)?,
            })
        })
        .collect()
}

/// The mean prequential loss over the last `window` examples learned at or before `version`
/// (whole batches: at least `window` examples when there are that many). None without data.
pub async fn windowed_loss(
    db: impl PgExecutor<'_>,
    model_id: Uuid,
    version: i64,
    window: i64,
) -> Result<Option<(f64, i64)>, sqlx::Error> {
    let row: (Option<f64>, Option<i64>) = sqlx::query_as(
        "SELECT sum(loss_sum) / nullif(sum(examples), 0), sum(examples)::int8 FROM (
             SELECT loss_sum, examples,
                    sum(examples) OVER (ORDER BY model_version DESC) - examples AS after
             FROM model_versions
             WHERE model_id = $1 AND kind = 'gradient' AND examples > 0 AND model_version <= $2
         ) v WHERE after < $3",
    )
    .bind(model_id)
    .bind(version)
    .bind(window)
    .fetch_one(db)
    .await?;
    Ok(row.0.zip(row.1))
}

#[derive(Debug, Clone, Serialize, PartialEq)]
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
    let rows = sqlx::query(
        "SELECT model_version, detector, statistic, threshold, at_example, adaptation,
                lr_multiplier, detected_at
         FROM drift_events WHERE model_id = $1 AND model_version BETWEEN $2 AND $3 ORDER BY id",
    )
    .bind(model_id)
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DriftEventRow {
                model_version: r.try_get(0)?,
                detector: r.try_get(1)?,
                statistic: r.try_get(2)?,
                threshold: r.try_get(3)?,
                at_example: r.try_get(4)?,
                adaptation: r.try_get(5)?,
                lr_multiplier: r.try_get(6)?,
                detected_at: r.try_get(7)?,
            })
        })
        .collect()
}

/// Lets a quarantined model learn again. Returns false when it was not quarantined.
pub async fn resume(db: impl PgExecutor<'_>, model_id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE models SET status = 'active', status_reason = NULL, updated_at = now()
         WHERE model_id = $1 AND status = 'quarantined'",
    )
    .bind(model_id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
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
    let Some((current, examples)) = windowed_loss(pool, model_id, version, guard.window).await?
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
            windowed_loss(pool, model_id, snapshot_version, guard.window).await?
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
    let done = sqlx::query(
        "UPDATE models SET status = 'quarantined', status_reason = $2, updated_at = now()
         WHERE model_id = $1 AND status = 'active'",
    )
    .bind(model_id)
    .bind(reason)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
