-- Concept drift: the learner's model-level state (drift detectors, learning-rate multiplier),
-- kept with the model and with each version so restarts continue the same detectors and a
-- rollback restores them; and the drift events the worker detects.

ALTER TABLE models ADD COLUMN learner_state JSONB NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE model_versions ADD COLUMN learner_state JSONB;

CREATE TABLE drift_events (
    model_id      UUID NOT NULL,
    id            BIGINT GENERATED ALWAYS AS IDENTITY,
    -- The version whose batch detected the drift.
    model_version BIGINT NOT NULL,
    detector      TEXT NOT NULL CHECK (detector IN ('page_hinkley', 'adwin')),
    statistic     DOUBLE PRECISION NOT NULL,
    threshold     DOUBLE PRECISION NOT NULL,
    -- The model's example count when the drift was detected.
    at_example    BIGINT NOT NULL,
    adaptation    TEXT NOT NULL CHECK (adaptation IN ('none', 'boost', 'reset')),
    -- The learning-rate multiplier right after the adaptation.
    lr_multiplier DOUBLE PRECISION NOT NULL DEFAULT 1,
    detected_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, id)
);
CREATE INDEX idx_drift_events_version ON drift_events (model_id, model_version);
