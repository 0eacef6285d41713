-- Prediction ids and delayed labels by prediction id (issue 19, part 1).
--
-- Every prediction gets an id (a UUID the service makes and returns); a logged prediction keeps
-- it in prediction_log.prediction_id. A feedback event may name it (feedback_events.prediction_id,
-- settable by HTTP and by plain SQL): without features of its own, the event then trains on exactly
-- that prediction's logged features. Rows logged before this migration have no id (NULL); rows
-- inserted by plain SQL get one by default.
ALTER TABLE prediction_log ADD COLUMN prediction_id UUID;
ALTER TABLE prediction_log ALTER COLUMN prediction_id SET DEFAULT gen_random_uuid();
-- When a label trained on the prediction (the worker marks it): retention counts the predictions
-- that expire without one.
ALTER TABLE prediction_log ADD COLUMN labeled_at TIMESTAMPTZ;
-- The lookup of a label's prediction (led by model_id: Citus enforces it per shard).
CREATE UNIQUE INDEX idx_prediction_log_prediction_id ON prediction_log (model_id, prediction_id);

ALTER TABLE feedback_events ADD COLUMN prediction_id UUID;
-- Retention keeps a prediction an unprocessed label still names.
CREATE INDEX idx_feedback_events_prediction_id ON feedback_events (model_id, prediction_id)
    WHERE prediction_id IS NOT NULL;

-- A label whose prediction is not logged yet waits, set aside with status 'waiting' in the
-- partition that does not rotate (generation -1, with the dead letters), until its prediction
-- is logged (then it is pending again, in its place in queue order) or the wait deadline passes
-- (then it is dead-lettered with its reason). Claims read only 'pending' rows.
ALTER TABLE feedback_queue DROP CONSTRAINT feedback_queue_status_check;
ALTER TABLE feedback_queue ADD CONSTRAINT feedback_queue_status_check
    CHECK (status IN ('pending', 'dead', 'waiting'));
CREATE INDEX idx_feedback_queue_waiting ON feedback_queue (model_id, created_at)
    WHERE status = 'waiting';

-- Predictions retention deleted that no label ever trained on (for prediction_log rows only).
ALTER TABLE retention_stats ADD COLUMN unlabeled_predictions BIGINT NOT NULL DEFAULT 0;
