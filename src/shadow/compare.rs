//! A champion and its challengers compared over the same events: those the champion applied
//! since each link was made and the challenger has learned too, each scored prequentially by each
//! model (its prediction and loss before it learned the event, `feedback_events.prequential_*`).
//! `sql/challengers.sql` is the same query for analysts.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::learner::ModelKind;

/// One challenger against its champion.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct ChallengerComparison {
    pub challenger_id: Uuid,
    pub challenger: String,
    pub challenger_version: i64,
    pub since_version: i64,
    pub added_at: DateTime<Utc>,
    /// Events both have learned (the champion since `since_version`): what the means cover.
    pub events: i64,
    /// Events the champion learned since the link that the challenger has not learned (yet).
    pub not_learned_by_challenger: i64,
    pub champion_mean_loss: Option<f64>,
    pub challenger_mean_loss: Option<f64>,
    /// Logistic models: the share of the events whose prediction was on the label's side of 0.5.
    pub champion_accuracy: Option<f64>,
    pub challenger_accuracy: Option<f64>,
}

/// The comparison of each challenger of `champion_id` (of `kind`), by name.
pub async fn compare(
    db: impl PgExecutor<'_>,
    champion_id: Uuid,
    kind: ModelKind,
) -> Result<Vec<ChallengerComparison>, sqlx::Error> {
    sqlx::query_as(
        "SELECT l.challenger_id, m.name AS challenger, m.version AS challenger_version,
                l.since_version, l.added_at,
                s.events, s.not_learned_by_challenger,
                s.champion_mean_loss, s.challenger_mean_loss,
                CASE WHEN $2 THEN s.champion_accuracy END AS champion_accuracy,
                CASE WHEN $2 THEN s.challenger_accuracy END AS challenger_accuracy
         FROM model_challengers l
         JOIN models m ON m.model_id = l.challenger_id
         CROSS JOIN LATERAL (
             SELECT count(x.id) AS events,
                    count(*) - count(x.id) AS not_learned_by_challenger,
                    avg(e.prequential_loss) FILTER (WHERE x.id IS NOT NULL) AS champion_mean_loss,
                    avg(x.prequential_loss) AS challenger_mean_loss,
                    avg(((e.prequential_prediction >= 0.5) = (e.feedback_value >= 0.5))::int::float8)
                        FILTER (WHERE x.id IS NOT NULL) AS champion_accuracy,
                    avg(((x.prequential_prediction >= 0.5) = (x.feedback_value >= 0.5))::int::float8)
                        AS challenger_accuracy
             FROM feedback_events e
             LEFT JOIN feedback_events x
                 ON x.model_id = l.challenger_id AND x.id = e.id
                AND x.prequential_loss IS NOT NULL
             WHERE e.model_id = l.champion_id AND e.applied_version > l.since_version
               AND e.prequential_loss IS NOT NULL
         ) s
         WHERE l.champion_id = $1
         ORDER BY m.name",
    )
    .bind(champion_id)
    .bind(kind == ModelKind::Logistic)
    .fetch_all(db)
    .await
}
