-- Dead-lettered feedback: every event the worker set aside, with the reason, newest first. Its
-- queue row stays (status 'dead') and the event stays unprocessed; fix the event (UPDATE
-- feedback_events ...) and requeue it to learn from it: sql/requeue_dead_letters.sql, or
-- `olps deadletters requeue --model M --id QUEUE_OR_FEEDBACK_ID`.
-- Variables: none
-- Run: psql "$DATABASE_URL" -X -f sql/dead_letters.sql
SELECT q.dead_at,
       q.id AS queue_id,
       q.model_id,
       m.name AS model_name,
       e.id AS feedback_id,
       e.entity_id,
       e.feedback_type,
       e.feedback_value,
       e.confidence,
       q.dead_reason,
       e.metadata
FROM feedback_queue q
JOIN feedback_events e ON e.model_id = q.model_id AND e.id = q.feedback_id
LEFT JOIN models m ON m.model_id = q.model_id
WHERE q.status = 'dead'
ORDER BY q.dead_at DESC, e.entity_id COLLATE "C";
