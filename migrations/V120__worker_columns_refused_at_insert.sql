-- The worker owns processed, applied_version, applied_position and the prequential columns: a
-- row inserted with any of them set is refused, naming the column, and nothing of the statement
-- is stored. A client's `processed = true` used to be kept on a row that was then dead-lettered,
-- and retention deleted it as learned while its dead letter still waited (found by the fuzz
-- test of plain-SQL rows). The check sits in the enqueue trigger that already runs for every
-- row, so an insert pays for no second trigger.
CREATE OR REPLACE FUNCTION enqueue_feedback()
RETURNS TRIGGER AS $$
DECLARE
    column_set TEXT := CASE
        WHEN NEW.processed THEN 'processed'
        WHEN NEW.applied_version IS NOT NULL THEN 'applied_version'
        WHEN NEW.applied_position IS NOT NULL THEN 'applied_position'
        WHEN NEW.prequential_prediction IS NOT NULL THEN 'prequential_prediction'
        WHEN NEW.prequential_loss IS NOT NULL THEN 'prequential_loss'
    END;
BEGIN
    IF column_set IS NOT NULL THEN
        RAISE EXCEPTION 'feedback_events.% is set by the worker when it applies the event; '
                        'insert the row without it (event % of model %)',
                        column_set, NEW.id, NEW.model_id
            USING ERRCODE = 'check_violation', COLUMN = column_set, TABLE = 'feedback_events';
    END IF;
    INSERT INTO feedback_queue (model_id, feedback_id, priority)
    VALUES (NEW.model_id,
            NEW.id,
            CASE
                WHEN NEW.feedback_type = 'explicit' THEN 1.0
                WHEN NEW.feedback_type = 'implicit' THEN 0.5
                ELSE 0.3
            END);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

-- CREATE OR REPLACE resets the function's attributes: run with the owner's rights and a pinned
-- search_path again, as V30 set them.
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION %I.enqueue_feedback() SECURITY DEFINER SET search_path = %I, pg_temp',
        current_schema(), current_schema());
END
$$;
REVOKE ALL ON FUNCTION enqueue_feedback() FROM PUBLIC;
