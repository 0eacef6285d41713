-- A model's challengers (shadow models) compared with it over the same events: those the model
-- (the champion) learned after the link was made and the challenger has learned too (its copy
-- of the event, same id), each scored prequentially by each model (prediction and loss made
-- before the model learned the event). Mean loss: squared error for linear models, log loss for
-- logistic ones; accuracy (logistic only): the share of events whose prediction was on the
-- label's side of 0.5. The same numbers as `challengers` in GET /v1/models/{m}/metrics.
-- Variables: model   the champion's UUID or name
-- Run: psql "$DATABASE_URL" -X -v model=M -f sql/challengers.sql
SELECT m.name AS challenger,
       l.challenger_id,
       m.version AS challenger_version,
       l.since_version,
       l.added_at,
       s.events,
       s.not_learned_by_challenger,
       s.champion_mean_loss,
       s.challenger_mean_loss,
       CASE WHEN c.kind = 'logistic' THEN s.champion_accuracy END AS champion_accuracy,
       CASE WHEN c.kind = 'logistic' THEN s.challenger_accuracy END AS challenger_accuracy
FROM models c
JOIN model_challengers l ON l.champion_id = c.model_id
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
        ON x.model_id = l.challenger_id AND x.id = e.id AND x.prequential_loss IS NOT NULL
    WHERE e.model_id = l.champion_id AND e.applied_version > l.since_version
      AND e.prequential_loss IS NOT NULL
) s
WHERE c.model_id::text = :'model' OR c.name = :'model'
ORDER BY m.name;
