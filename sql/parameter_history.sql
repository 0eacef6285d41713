-- One parameter's update history: every change to it, oldest first, with the version it belongs
-- to, what made it (update_type: gradient | rollback | ...; source), the learning rate of its last
-- step, the value before and after, and the optimizer state after.
-- Variables: model         the model's UUID or name
--            parameter_id  a feature name, or __intercept__
-- Run: psql "$DATABASE_URL" -X -v model=M -v parameter_id=amount -f sql/parameter_history.sql
WITH target AS (
    SELECT m.model_id FROM models m
    WHERE m.model_id::text = :'model' OR m.name = :'model'
)
SELECT u.model_version,
       u.timestamp,
       u.update_type,
       u.source,
       u.learning_rate,
       u.old_value,
       u.new_value,
       u.new_value - coalesce(u.old_value, 0) AS change,
       u.opt_m,
       u.opt_v,
       u.update_count,
       u.feature_mean,
       u.feature_m2
FROM parameter_updates u
JOIN target t ON t.model_id = u.model_id
WHERE u.parameter_id = :'parameter_id'
ORDER BY u.model_version;
