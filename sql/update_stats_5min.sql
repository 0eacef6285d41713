-- Update counts and learning rates per update_type and source in 5-minute buckets over the last
-- `hours` hours: the document's parameter_update_stats_5min (a view here, since TimescaleDB is not
-- assumed). Rollback rows have no learning rate (avg/stddev NULL when a bucket has only those).
-- Variables: model  the model's UUID or name
--            hours  how far back to look
-- Run: psql "$DATABASE_URL" -X -v model=M -v hours=24 -f sql/update_stats_5min.sql
SELECT s.bucket,
       s.update_type,
       s.source,
       s.update_count,
       s.avg_learning_rate,
       s.stddev_learning_rate
FROM parameter_update_stats_5min s
WHERE s.model_id = (SELECT m.model_id FROM models m
                    WHERE m.model_id::text = :'model' OR m.name = :'model')
  AND s.bucket >= date_bin('5 minutes', now() - make_interval(hours => :'hours'::int),
                           TIMESTAMPTZ '2000-01-01 00:00:00+00')
ORDER BY s.bucket, s.update_type, s.source;
