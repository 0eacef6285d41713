-- Requeue dead-lettered feedback once its cause is fixed (the SQL of `olps deadletters requeue`):
-- the model's dead queue rows whose reason matches reason_like go back to 'pending', keeping their
-- priority and place in queue order; the worker learns each once (or sets it aside again with its
-- new reason). Fix the event first, e.g.
--   UPDATE feedback_events SET metadata = '{"features": {"amount": 12.5}}'
--   WHERE model_id = ... AND id = ...;
-- Returns the rows requeued.
-- Variables: model        the model's UUID or name
--            reason_like  text the reason contains, case-insensitive (% and _ are wildcards;
--                         '%' for every dead letter of the model)
-- Run: psql "$DATABASE_URL" -X -v model=fraud -v reason_like='not a number' -f sql/requeue_dead_letters.sql
WITH requeued AS (
    UPDATE feedback_queue q
    -- gen = DEFAULT: back from the dead letters' partition to a queue generation that rotates.
    SET status = 'pending', dead_reason = NULL, dead_at = NULL, gen = DEFAULT
    WHERE q.status = 'dead'
      AND q.model_id = (SELECT model_id FROM models
                        WHERE model_id::text = :'model' OR name = :'model')
      AND q.dead_reason ILIKE '%' || :'reason_like' || '%'
    RETURNING q.id AS queue_id, q.model_id, q.feedback_id, q.priority, q.created_at, q.seq
), woken AS (
    -- Wake the workers, as a feedback insert does.
    SELECT pg_notify('olps_feedback', '') FROM (SELECT 1 FROM requeued LIMIT 1) any_row
)
SELECT r.queue_id, r.model_id, r.feedback_id, e.entity_id
FROM requeued r
JOIN feedback_events e ON e.model_id = r.model_id AND e.id = r.feedback_id
LEFT JOIN woken ON TRUE
ORDER BY r.priority DESC, r.created_at, r.seq;
