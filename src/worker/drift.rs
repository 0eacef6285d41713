//! The `drift_events` table: drifts the learner detected while the worker applied a batch.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::learner::drift::{Adaptation, DriftEvent};

fn adaptation_name(a: Adaptation) -> &'static str {
    match a {
        Adaptation::None => "none",
        Adaptation::Boost => "boost",
        Adaptation::Reset => "reset",
    }
}

/// Records a batch's drift events under the version the batch became, in one statement.
pub async fn record_events(
    conn: &mut PgConnection,
    model_id: Uuid,
    version: i64,
    events: &[DriftEvent],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let detector: Vec<&str> = events.iter().map(|e| e.detector.as_str()).collect();
    let statistic: Vec<f64> = events.iter().map(|e| e.statistic).collect();
    let threshold: Vec<f64> = events.iter().map(|e| e.threshold).collect();
    let at: Vec<i64> = events.iter().map(|e| e.at_example).collect();
    let adaptation: Vec<&str> = events
        .iter()
        .map(|e| adaptation_name(e.adaptation))
        .collect();
    let multiplier: Vec<f64> = events.iter().map(|e| e.lr_multiplier).collect();
    sqlx::query(
        "INSERT INTO drift_events
             (model_id, model_version, detector, statistic, threshold, at_example, adaptation,
              lr_multiplier)
         SELECT $1, $2, u.* FROM unnest($3::text[], $4::float8[], $5::float8[], $6::int8[],
                                        $7::text[], $8::float8[]) AS u",
    )
    .bind(model_id)
    .bind(version)
    .bind(&detector)
    .bind(&statistic)
    .bind(&threshold)
    .bind(&at)
    .bind(&adaptation)
    .bind(&multiplier)
    .execute(conn)
    .await?;
    Ok(())
}
