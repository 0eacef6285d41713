-- The version timeline of a model: each version with when and how it was made (a learned batch
-- or a rollback, and to which version), how many feedback events it applied
-- (feedback_events.applied_version), the examples and dead letters of its batch, how many
-- parameters it changed, and the snapshots taken at it.
-- Variables: model  the model's UUID or name
-- Run: psql "$DATABASE_URL" -X -v model=M -f sql/version_timeline.sql
WITH target AS (
    SELECT m.model_id FROM models m
    WHERE m.model_id::text = :'model' OR m.name = :'model'
), applied AS (
    SELECT e.applied_version, count(*) AS events
    FROM feedback_events e JOIN target t ON t.model_id = e.model_id
    WHERE e.applied_version IS NOT NULL
    GROUP BY e.applied_version
), snaps AS (
    SELECT s.model_version,
           string_agg(coalesce(s.label, s.snapshot_id::text), ', '
                      ORDER BY s.created_at) AS snapshots
    FROM snapshots s JOIN target t ON t.model_id = s.model_id
    GROUP BY s.model_version
)
SELECT v.model_version,
       v.created_at,
       v.kind,
       v.source,
       v.rolled_back_to,
       coalesce(a.events, 0) AS feedback_applied,
       v.examples,
       v.dead_lettered,
       v.parameters_changed,
       v.examples_seen,
       sn.snapshots
FROM model_versions v
JOIN target t ON t.model_id = v.model_id
LEFT JOIN applied a ON a.applied_version = v.model_version
LEFT JOIN snaps sn ON sn.model_version = v.model_version
ORDER BY v.model_version;
