//! Feeding challengers: the worker copies each batch its champion learns into the challengers'
//! `feedback_events`, in the batch's own transaction, so a rolled-back batch copies nothing and a
//! committed one copies each event exactly once.
//!
//! One `INSERT … SELECT` for all challengers, in the order the champion learned the events (the
//! enqueue trigger then queues them in that order). A copy keeps the event's id (a second copy of
//! it is not stored: `ON CONFLICT DO NOTHING`), label, weight, time, metadata and prediction id;
//! an event that trained on a logged prediction (no features of its own) carries the features the
//! champion used, since a challenger has no prediction log of its own. The copies' queue rows all
//! get the priority of `explicit` feedback, so that feedback types do not reorder them. A
//! challenger's own challengers get the copies through the challenger's batches in turn.

use sqlx::PgConnection;
use uuid::Uuid;

use super::links;

/// One event of a champion's batch, in the order it was learned.
#[derive(Debug, Clone, Copy)]
pub struct LearnedEvent<'a> {
    pub feedback_id: Uuid,
    /// The features it trained on when they came from the prediction log (JSON text), else None.
    pub logged_features: Option<&'a str>,
}

/// The queue priority of every copy: the trigger's priority of `explicit` feedback.
const COPY_PRIORITY: f64 = 1.0;

/// Copies `events` (a champion's batch, in learning order) to the champion's challengers, in the
/// caller's transaction, which holds the champion's lock. Returns the events stored (over all
/// challengers).
pub async fn copy_batch(
    conn: &mut PgConnection,
    champion_id: Uuid,
    events: &[LearnedEvent<'_>],
) -> Result<u64, sqlx::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let challengers = links::challenger_ids(&mut *conn, champion_id).await?;
    if challengers.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.feedback_id).collect();
    let logged: Vec<Option<&str>> = events.iter().map(|e| e.logged_features).collect();
    let (copied, reprioritize): (i64, i64) = sqlx::query_as(
        "WITH copied AS (
             INSERT INTO feedback_events (id, model_id, entity_id, feedback_type, feedback_value,
                                          confidence, timestamp, metadata, prediction_id)
             SELECT e.id, c.challenger_id, e.entity_id, e.feedback_type, e.feedback_value,
                    e.confidence, e.timestamp,
                    CASE WHEN b.logged IS NULL THEN e.metadata
                         WHEN jsonb_typeof(e.metadata) = 'object'
                             THEN e.metadata || jsonb_build_object('features', b.logged::jsonb)
                         ELSE jsonb_build_object('features', b.logged::jsonb) END,
                    e.prediction_id
             FROM unnest($2::uuid[]) WITH ORDINALITY AS c(challenger_id, rank)
             CROSS JOIN unnest($3::uuid[], $4::text[]) WITH ORDINALITY AS b(id, logged, position)
             JOIN feedback_events e ON e.model_id = $1 AND e.id = b.id
             ORDER BY c.rank, b.position
             ON CONFLICT (model_id, id) DO NOTHING
             RETURNING feedback_type
         )
         SELECT count(*), count(*) FILTER (WHERE feedback_type <> 'explicit') FROM copied",
    )
    .bind(champion_id)
    .bind(&challengers)
    .bind(&ids)
    .bind(&logged)
    .fetch_one(&mut *conn)
    .await?;
    if reprioritize > 0 {
        // The trigger gave other types a lower priority, which the queue serves later: one
        // priority keeps the champion's order (the rows the INSERT queued are visible now).
        sqlx::query(
            "UPDATE feedback_queue q SET priority = $3
             WHERE q.model_id = ANY($1::uuid[]) AND q.feedback_id = ANY($2::uuid[])
               AND q.status = 'pending' AND q.priority <> $3",
        )
        .bind(&challengers)
        .bind(&ids)
        .bind(COPY_PRIORITY)
        .execute(&mut *conn)
        .await?;
    }
    Ok(copied as u64)
}
