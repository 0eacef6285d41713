-- Prequential loss over time: every learned version's mean loss (each example's loss measured
-- before it was learned: squared error for linear models, log loss for logistic ones), the mean
-- over the last `window` learned versions, and the cumulative mean; for logistic models the
-- accuracy likewise. Rollback versions learn nothing and are left out.
-- Variables: model   the model's UUID or name
--            window  how many learned versions the moving mean spans
-- Run: psql "$DATABASE_URL" -X -v model=M -v window=10 -f sql/prequential_loss.sql
SELECT v.model_version,
       v.created_at,
       v.examples,
       v.loss_sum / v.examples AS mean_loss,
       sum(v.loss_sum) OVER recent / sum(v.examples) OVER recent AS moving_mean_loss,
       sum(v.loss_sum) OVER running / sum(v.examples) OVER running AS cumulative_mean_loss,
       v.correct::float8 / v.examples AS accuracy,
       (sum(v.correct) OVER running)::float8 / sum(v.examples) OVER running
           AS cumulative_accuracy
FROM model_versions v
WHERE v.model_id = (SELECT m.model_id FROM models m
                    WHERE m.model_id::text = :'model' OR m.name = :'model')
  AND v.kind = 'gradient' AND v.examples > 0
WINDOW running AS (ORDER BY v.model_version ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
       recent AS (ORDER BY v.model_version
                  ROWS BETWEEN :'window'::int - 1 PRECEDING AND CURRENT ROW)
ORDER BY v.model_version;
