//! Replay (`olps model replay --from M --into N [--since T]`): trains model N on the feedback
//! model M has learned, in the order M learned it.
//!
//! One `INSERT … SELECT` copies M's applied events into N's `feedback_events` (same ids, labels,
//! weights, times and metadata), ordered by `(applied_version, applied_position)`: the order M's
//! worker learned them in. The enqueue trigger queues them for N in that order (one statement:
//! one `created_at`, `seq` in insertion order), and when they are of several feedback types,
//! their queue rows are given one priority, so that the types' priorities do not reorder them.
//! N's worker then learns each exactly once, like any feedback: a second replay of the same
//! events stores nothing (the ids are already N's).
//!
//! Left out, and counted in the report: events M has not applied (pending or dead-lettered), and
//! events without features of their own (delayed labels that trained on M's logged predictions,
//! which N does not have). Events applied before `applied_position` existed (migration V86) are
//! ordered by time within their version.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};

use crate::models::{Model, ModelError};
use crate::worker::queue;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("--from and --into name the same model '{0}': replay into another model")]
    SameModel(String),
    #[error(
        "model '{from}' is {from_kind} and model '{into}' is {into_kind}: a replay needs two \
         models of the same kind (the labels mean different things)"
    )]
    KindMismatch {
        from: String,
        from_kind: String,
        into: String,
        into_kind: String,
    },
    #[error(
        "model '{into}' has learned features ({into_features}) none of which occurs in the \
         feedback of '{from}' ({from_features}): replay into a new model, or into one trained \
         on the same features"
    )]
    FeatureMismatch {
        from: String,
        into: String,
        from_features: String,
        into_features: String,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Events stored (and queued) for the target by this replay.
    pub queued: i64,
    /// Events the target already had (an earlier replay of the same events): not stored again.
    pub already_there: i64,
    /// Applied events of the source without features of their own: not replayed.
    pub without_features: i64,
    /// Events of the source it has not applied (pending or dead-lettered): not replayed.
    pub not_applied: i64,
    /// The source's version when the replay was taken.
    pub source_version: i64,
}

/// Features of a model's stored parameters, and of a source's replayable events, for the message
/// of a mismatch (a few of each).
#[derive(FromRow)]
struct Overlap {
    target_has_features: bool,
    overlap: bool,
    target_sample: Option<String>,
    source_sample: Option<String>,
}

/// The source's applied events that a replay copies: `e` is `feedback_events`, `$1` the source
/// model, `$2` the optional `--since` (`$3` is the target in the statements below).
const REPLAYABLE: &str = "e.model_id = $1 AND e.processed AND e.applied_version IS NOT NULL
                          AND coalesce(e.metadata ? 'features', false)
                          AND ($2::timestamptz IS NULL OR e.timestamp >= $2)";

/// Replays `from`'s applied feedback (with `since`: only events whose timestamp is at or after
/// it) into `into`, in the caller's transaction (commit it to queue the events).
pub async fn replay(
    conn: &mut PgConnection,
    from: &Model,
    into: &Model,
    since: Option<DateTime<Utc>>,
) -> Result<ReplayReport, ReplayError> {
    if from.model_id == into.model_id {
        return Err(ReplayError::SameModel(from.name.clone()));
    }
    if from.kind != into.kind {
        return Err(ReplayError::KindMismatch {
            from: from.name.clone(),
            from_kind: from.kind.to_string(),
            into: into.name.clone(),
            into_kind: into.kind.to_string(),
        });
    }
    // A target that already learned other features would mix two unrelated models.
    let overlap: Overlap = sqlx::query_as(&format!(
        "WITH target AS (
             SELECT parameter_id FROM model_parameters
             WHERE model_id = $3 AND parameter_id <> '__intercept__'
         ), source AS (
             SELECT DISTINCT k.name
             FROM feedback_events e
             CROSS JOIN LATERAL jsonb_object_keys(
                 CASE WHEN jsonb_typeof(e.metadata -> 'features') = 'object'
                      THEN e.metadata -> 'features' ELSE '{{}}'::jsonb END) AS k(name)
             WHERE {REPLAYABLE}
         )
         SELECT EXISTS (SELECT 1 FROM target) AS target_has_features,
                EXISTS (SELECT 1 FROM target t JOIN source s ON s.name = t.parameter_id)
                    AS overlap,
                (SELECT string_agg(parameter_id, ', ' ORDER BY parameter_id)
                 FROM (SELECT parameter_id FROM target ORDER BY parameter_id LIMIT 5) t)
                    AS target_sample,
                (SELECT string_agg(name, ', ' ORDER BY name)
                 FROM (SELECT name FROM source ORDER BY name LIMIT 5) s) AS source_sample"
    ))
    .bind(from.model_id)
    .bind(since)
    .bind(into.model_id)
    .fetch_one(&mut *conn)
    .await?;
    if overlap.target_has_features && overlap.source_sample.is_some() && !overlap.overlap {
        return Err(ReplayError::FeatureMismatch {
            from: from.name.clone(),
            into: into.name.clone(),
            from_features: overlap.source_sample.unwrap_or_default(),
            into_features: overlap.target_sample.unwrap_or_default(),
        });
    }

    let (without_features, not_applied): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE e.processed AND e.applied_version IS NOT NULL
                                   AND NOT coalesce(e.metadata ? 'features', false)),
                count(*) FILTER (WHERE NOT e.processed OR e.applied_version IS NULL)
         FROM feedback_events e
         WHERE e.model_id = $1 AND ($2::timestamptz IS NULL OR e.timestamp >= $2)",
    )
    .bind(from.model_id)
    .bind(since)
    .fetch_one(&mut *conn)
    .await?;

    // The set-based copy, in the order the source learned the events; one statement, so the
    // count of what was there to copy and what was copied come from one snapshot.
    let (replayable, queued, types): (i64, i64, i64) = sqlx::query_as(&format!(
        "WITH source AS MATERIALIZED (
             SELECT e.id, e.entity_id, e.feedback_type, e.feedback_value, e.confidence,
                    e.timestamp, e.metadata, e.applied_version, e.applied_position
             FROM feedback_events e
             WHERE {REPLAYABLE}
         ), copied AS (
             INSERT INTO feedback_events (id, model_id, entity_id, feedback_type, feedback_value,
                                          confidence, timestamp, metadata)
             SELECT s.id, $3, s.entity_id, s.feedback_type, s.feedback_value, s.confidence,
                    s.timestamp, s.metadata
             FROM source s
             ORDER BY s.applied_version, s.applied_position NULLS LAST, s.timestamp, s.id
             ON CONFLICT (model_id, id) DO NOTHING
             RETURNING feedback_type
         )
         SELECT (SELECT count(*) FROM source), count(*), count(DISTINCT feedback_type)
         FROM copied"
    ))
    .bind(from.model_id)
    .bind(since)
    .bind(into.model_id)
    .fetch_one(&mut *conn)
    .await?;
    if types > 1 {
        // The trigger gave each type its documented priority, and the queue serves higher
        // priorities first: one priority keeps the source's order.
        sqlx::query(&format!(
            "UPDATE feedback_queue q SET priority = 1.0
             WHERE q.model_id = $3 AND q.status = 'pending'
               AND q.feedback_id IN (SELECT e.id FROM feedback_events e WHERE {REPLAYABLE})"
        ))
        .bind(from.model_id)
        .bind(since)
        .bind(into.model_id)
        .execute(&mut *conn)
        .await?;
    }
    if queued > 0 {
        // On Citus the feedback trigger does not notify (src/citus.sql).
        queue::notify_workers(&mut *conn).await?;
    }
    Ok(ReplayReport {
        queued,
        already_there: replayable - queued,
        without_features,
        not_applied,
        source_version: from.version,
    })
}
