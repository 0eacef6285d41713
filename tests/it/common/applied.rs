//! Exactly once, after faults: every event applied once by a version that is wholly there, and
//! the parameters those versions left are bit for bit what the learner computes in memory over the
//! same events in the same order.
//!
//! The order within a batch is the queue order (`priority DESC, created_at, seq`), and the queue
//! rows are deleted when applied; [`record_queue_order`] keeps a copy of each queue row's order
//! in a table of the test's own, filled by a trigger.

use std::collections::HashSet;

use olps::learner::{Example, Learner};
use sqlx::PgPool;
use uuid::Uuid;

use super::{assert_linear_history, assert_params_equal};

/// From now on, every queue row's order is copied into `test_queue_order` (by a trigger on
/// `feedback_queue`, in the inserting transaction).
pub async fn record_queue_order(pool: &PgPool) {
    for sql in [
        "CREATE TABLE test_queue_order (
             feedback_id UUID PRIMARY KEY, priority DOUBLE PRECISION NOT NULL,
             created_at TIMESTAMPTZ NOT NULL, seq BIGINT NOT NULL)",
        "CREATE FUNCTION test_record_queue_order() RETURNS TRIGGER AS $$
         BEGIN
             INSERT INTO test_queue_order VALUES (NEW.feedback_id, NEW.priority, NEW.created_at, NEW.seq);
             RETURN NULL;
         END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER test_record_queue_order AFTER INSERT ON feedback_queue
         FOR EACH ROW EXECUTE FUNCTION test_record_queue_order()",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
}

/// Counts that say whether each stored event was applied once.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    pub events: i64,
    pub processed: i64,
    pub version: i64,
}

/// Invariants that hold at any moment, also mid-way (a worker stopped with work left):
/// - the versions form a line (`assert_linear_history`);
/// - every processed event names a version that exists, and each version's `examples` is the
///   number of events that name it (so no event was applied twice, by two versions or twice in
///   one), and `examples_seen` is their sum;
/// - every version's `parameters_changed` is the number of its history rows (nothing of a
///   version is missing);
/// - every unprocessed event is still queued as pending.
pub async fn assert_consistent(pool: &PgPool, model_id: Uuid) -> Applied {
    // Fresh statistics: the checks below join whole tables (the shared test server runs without
    // autovacuum, and plans for tables it believes empty take minutes here).
    sqlx::query("ANALYZE feedback_events, feedback_queue, model_versions, parameter_updates")
        .execute(pool)
        .await
        .unwrap();
    let version = assert_linear_history(pool, model_id).await;
    let mismatched: Vec<(i64, i32, i64)> = sqlx::query_as(
        "SELECT v.model_version, v.examples, count(e.id)
         FROM model_versions v
         LEFT JOIN feedback_events e
           ON e.model_id = v.model_id AND e.applied_version = v.model_version AND e.processed
         WHERE v.model_id = $1 AND v.kind = 'gradient'
         GROUP BY v.model_version, v.examples
         HAVING count(e.id) <> v.examples",
    )
    .bind(model_id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        mismatched.is_empty(),
        "versions whose event count is not their examples (version, examples, events): {mismatched:?}"
    );
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM feedback_events e
         WHERE e.model_id = $1 AND (e.processed <> (e.applied_version IS NOT NULL)
            OR (e.processed AND NOT EXISTS (SELECT 1 FROM model_versions v
                WHERE v.model_id = e.model_id AND v.model_version = e.applied_version)))",
    )
    .bind(model_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        orphans, 0,
        "events marked processed without a version that exists (or the reverse)"
    );
    let partial: Vec<(i64, i32, i64)> = sqlx::query_as(
        "SELECT v.model_version, v.parameters_changed,
                (SELECT count(*) FROM parameter_updates u
                 WHERE u.model_id = v.model_id AND u.model_version = v.model_version)
         FROM model_versions v
         WHERE v.model_id = $1 AND v.kind = 'gradient'
           AND v.parameters_changed <> (SELECT count(*) FROM parameter_updates u
                WHERE u.model_id = v.model_id AND u.model_version = v.model_version)",
    )
    .bind(model_id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        partial.is_empty(),
        "versions missing history rows (version, parameters_changed, rows): {partial:?}"
    );
    let (events, processed): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE processed) FROM feedback_events WHERE model_id = $1",
    )
    .bind(model_id)
    .fetch_one(pool)
    .await
    .unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT examples_seen FROM models WHERE model_id = $1")
        .bind(model_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(seen, processed, "examples_seen is not the applied events");
    let unqueued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM feedback_events e
         WHERE e.model_id = $1 AND NOT e.processed AND NOT EXISTS (
             SELECT 1 FROM feedback_queue q
             WHERE q.model_id = e.model_id AND q.feedback_id = e.id AND q.status = 'pending')",
    )
    .bind(model_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(unqueued, 0, "unprocessed events that are not pending");
    Applied {
        events,
        processed,
        version,
    }
}

/// Once the queue has drained: [`assert_consistent`], every event processed, the queue empty
/// (nothing dead-lettered), every id in `accepted` stored and applied, and the stored parameters
/// bit for bit those of the learner run in memory over the events in the order they were applied
/// (needs [`record_queue_order`] from before the first event).
pub async fn assert_applied_exactly_once(pool: &PgPool, model_id: Uuid, accepted: &HashSet<Uuid>) {
    let applied = assert_consistent(pool, model_id).await;
    assert_eq!(
        applied.processed, applied.events,
        "events left unprocessed: {applied:?}"
    );
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM feedback_queue WHERE model_id = $1")
        .bind(model_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(queued, 0, "queue rows left (pending or dead-lettered)");
    let ids: Vec<Uuid> = accepted.iter().copied().collect();
    let found: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM feedback_events
         WHERE model_id = $1 AND id = ANY($2) AND processed AND applied_version IS NOT NULL",
    )
    .bind(model_id)
    .bind(&ids)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        found,
        ids.len() as i64,
        "accepted events missing or not applied"
    );

    // The replay: each event once, in (version, queue order).
    let rows: Vec<(String, f64, Option<f64>)> = sqlx::query_as(
        "SELECT (e.metadata -> 'features')::text, e.feedback_value, e.confidence
         FROM feedback_events e JOIN test_queue_order o ON o.feedback_id = e.id
         WHERE e.model_id = $1
         ORDER BY e.applied_version, o.priority DESC, o.created_at, o.seq",
    )
    .bind(model_id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        rows.len() as i64,
        applied.events,
        "events without a recorded queue order"
    );
    let model = olps::models::find(pool, &model_id.to_string())
        .await
        .unwrap();
    let mut learner = Learner::new(model.kind, model.settings.clone());
    for (features, label, confidence) in rows {
        let features = olps::worker::examples::features_from_json(&features, "features").unwrap();
        let weight = olps::validation::confidence_weight(confidence).unwrap();
        learner.learn(&Example::new(features, label, weight).unwrap());
    }
    assert_params_equal(pool, model_id, &learner).await;
}
