-- Retention: how long each kind of row is kept, per model, and what the runs deleted. A model
-- without a row in retention_policies uses the defaults in src/retention.rs (README,
-- "Retention"); a NULL interval keeps that kind of row forever. Applied by the worker's
-- maintenance and by `olps retention run`, in batches.
CREATE TABLE retention_policies (
    model_id              UUID PRIMARY KEY REFERENCES models (model_id) ON DELETE CASCADE,
    -- prediction_log rows (features logged for delayed labels), by logged_at.
    prediction_log_keep   INTERVAL CHECK (prediction_log_keep > interval '0'),
    -- processed feedback_events, by the time of the version that applied them.
    feedback_keep         INTERVAL CHECK (feedback_keep > interval '0'),
    -- dead letters (feedback_queue rows with status 'dead' and their events), by dead_at.
    dead_letters_keep     INTERVAL CHECK (dead_letters_keep > interval '0'),
    -- model_versions and their parameter_updates history: versions older than this stop being
    -- reachable (the floor snapshot of the kept history moves up).
    versions_keep         INTERVAL CHECK (versions_keep > interval '0'),
    -- drift_events, by detected_at.
    drift_events_keep     INTERVAL CHECK (drift_events_keep > interval '0'),
    -- snapshots olps takes itself (kind 'auto': the policy's and the worker's olps: ones).
    auto_snapshots_keep   INTERVAL CHECK (auto_snapshots_keep > interval '0'),
    -- snapshots people and scripts take (kind 'manual').
    manual_snapshots_keep INTERVAL CHECK (manual_snapshots_keep > interval '0'),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- What retention deleted, per model and table (cumulative), and when it last ran: read by
-- GET /metrics, and by the worker to know which models are due.
CREATE TABLE retention_stats (
    model_id     UUID NOT NULL REFERENCES models (model_id) ON DELETE CASCADE,
    table_name   TEXT NOT NULL,
    rows_deleted BIGINT NOT NULL DEFAULT 0,
    last_run_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (model_id, table_name)
);

-- Finding the rows past the horizon without reading the whole table: rows arrive in time
-- order, so BRIN indexes cost almost nothing to maintain (like feedback_events and
-- parameter_updates have).
CREATE INDEX idx_prediction_log_time ON prediction_log USING brin (logged_at);
CREATE INDEX idx_drift_events_time ON drift_events USING brin (detected_at);
