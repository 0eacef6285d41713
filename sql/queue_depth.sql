-- Queue depth per model: pending and dead-lettered queue rows, and when the oldest pending event
-- was enqueued and how long it has waited. Every model is listed (0 when idle), and so is a model
-- id with queue rows but no model (feedback written by SQL for an unknown model; the worker
-- dead-letters it).
-- Variables: none
-- Run: psql "$DATABASE_URL" -X -f sql/queue_depth.sql
WITH q AS (
    SELECT model_id,
           count(*) FILTER (WHERE status = 'pending') AS pending,
           count(*) FILTER (WHERE status = 'dead') AS dead,
           min(created_at) FILTER (WHERE status = 'pending') AS oldest_pending_at
    FROM feedback_queue
    GROUP BY model_id
)
SELECT coalesce(m.model_id, q.model_id) AS model_id,
       m.name,
       m.status,
       coalesce(q.pending, 0) AS pending,
       coalesce(q.dead, 0) AS dead,
       q.oldest_pending_at,
       now() - q.oldest_pending_at AS oldest_pending_age
FROM models m
FULL JOIN q ON q.model_id = m.model_id
ORDER BY coalesce(q.pending, 0) DESC, m.name NULLS LAST, 1;
