-- olps schema, version 1: the documented online-learning schema (seeds/001), with its bugs fixed and
-- the columns the worker, versions and serving need. Every deliberate change is listed in README.md
-- ("Schema changes"). Tables that grow with traffic lead their primary key with model_id so that
-- Citus can distribute them by model_id; `models` stays small (a Citus reference table).

-- Models: one row per model. `version` is the current model version: 0 before any learning, then
-- +1 per applied batch or rollback, without gaps.
CREATE TABLE models (
    model_id      UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name          TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    kind          TEXT NOT NULL CHECK (kind IN ('linear', 'logistic')),
    settings      JSONB NOT NULL DEFAULT '{}'::jsonb,
    version       BIGINT NOT NULL DEFAULT 0 CHECK (version >= 0),
    examples_seen BIGINT NOT NULL DEFAULT 0 CHECK (examples_seen >= 0),
    status        TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'quarantined')),
    status_reason TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Current parameters. The weight of feature F has parameter_id F; the intercept is '__intercept__'.
-- Values are float8 (the learner's f64, round-tripped exactly). `version` is the model version
-- that last changed the row. The opt_*/update_count/feature_* columns are the learner's
-- per-parameter state (optimizer accumulators, standardization statistics), so a restart continues
-- exactly where it stopped.
CREATE TABLE model_parameters (
    model_id      UUID NOT NULL,
    parameter_id  TEXT NOT NULL,
    current_value DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_updated  TIMESTAMPTZ NOT NULL DEFAULT now(),
    version       BIGINT NOT NULL DEFAULT 1,
    opt_m         DOUBLE PRECISION NOT NULL DEFAULT 0,
    opt_v         DOUBLE PRECISION NOT NULL DEFAULT 0,
    update_count  BIGINT NOT NULL DEFAULT 0,
    feature_mean  DOUBLE PRECISION NOT NULL DEFAULT 0,
    feature_m2    DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (model_id, parameter_id)
);

-- Update history: one row per parameter changed by a model version (its net change in that
-- version), with the state after the change, so any version can be rebuilt from history alone.
CREATE TABLE parameter_updates (
    id            UUID NOT NULL DEFAULT gen_random_uuid(),
    model_id      UUID NOT NULL,
    parameter_id  TEXT NOT NULL,
    old_value     DOUBLE PRECISION,
    new_value     DOUBLE PRECISION NOT NULL,
    update_type   TEXT NOT NULL CHECK (update_type IN ('gradient', 'direct', 'batch', 'rollback')),
    learning_rate DOUBLE PRECISION,
    timestamp     TIMESTAMPTZ NOT NULL DEFAULT now(),
    source        TEXT,
    metadata      JSONB,
    model_version BIGINT NOT NULL,
    opt_m         DOUBLE PRECISION NOT NULL DEFAULT 0,
    opt_v         DOUBLE PRECISION NOT NULL DEFAULT 0,
    update_count  BIGINT NOT NULL DEFAULT 0,
    feature_mean  DOUBLE PRECISION NOT NULL DEFAULT 0,
    feature_m2    DOUBLE PRECISION NOT NULL DEFAULT 0,
    -- A version's rows are appended together at the right edge of this index.
    PRIMARY KEY (model_id, model_version, parameter_id)
);
-- One parameter's history, and "the latest row at or before version V" per parameter.
CREATE INDEX idx_parameter_updates_parameter
    ON parameter_updates (model_id, parameter_id, model_version);
-- Time-range scans; rows arrive in time order, so a BRIN index costs almost nothing to maintain.
CREATE INDEX idx_parameter_updates_time ON parameter_updates USING brin (timestamp);

-- Feedback written by clients (HTTP or plain SQL). feedback_value is the label; confidence (default
-- 1) the example's weight; features live in metadata->'features'. No foreign key to models: a row
-- for an unknown model is accepted by SQL and dead-lettered by the worker with its reason.
CREATE TABLE feedback_events (
    id              UUID NOT NULL DEFAULT gen_random_uuid(),
    model_id        UUID NOT NULL,
    entity_id       TEXT NOT NULL,
    feedback_type   TEXT NOT NULL,
    feedback_value  DOUBLE PRECISION NOT NULL,
    confidence      DOUBLE PRECISION DEFAULT 1.0,
    timestamp       TIMESTAMPTZ NOT NULL DEFAULT now(),
    metadata        JSONB,
    processed       BOOLEAN NOT NULL DEFAULT FALSE,
    applied_version BIGINT,
    PRIMARY KEY (model_id, id)
);
CREATE INDEX idx_feedback_events_time ON feedback_events USING brin (timestamp);
CREATE INDEX idx_feedback_events_entity ON feedback_events (model_id, entity_id);

-- The work queue, fed by the trigger below. Rows are deleted when their event is applied; a row
-- that cannot be learned stays with status 'dead' and the reason.
CREATE SEQUENCE feedback_queue_seq;
CREATE TABLE feedback_queue (
    id          UUID NOT NULL DEFAULT gen_random_uuid(),
    model_id    UUID NOT NULL,
    feedback_id UUID NOT NULL,
    priority    DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Insertion order: breaks ties between rows of one statement or transaction (same created_at).
    seq         BIGINT NOT NULL DEFAULT nextval('feedback_queue_seq'),
    status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dead')),
    dead_reason TEXT,
    dead_at     TIMESTAMPTZ,
    PRIMARY KEY (model_id, id),
    FOREIGN KEY (model_id, feedback_id) REFERENCES feedback_events (model_id, id) ON DELETE CASCADE
);
ALTER SEQUENCE feedback_queue_seq OWNED BY feedback_queue.seq;
-- Claiming a model's pending rows in queue order.
CREATE INDEX idx_feedback_queue_claim
    ON feedback_queue (model_id, priority DESC, created_at, seq) WHERE status = 'pending';
CREATE INDEX idx_feedback_queue_dead ON feedback_queue (model_id, dead_at) WHERE status = 'dead';
CREATE INDEX idx_feedback_queue_event ON feedback_queue (model_id, feedback_id);

-- The documented trigger, with the documented priorities. It writes only rows of the same model.
CREATE OR REPLACE FUNCTION enqueue_feedback()
RETURNS TRIGGER AS $$
BEGIN
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

CREATE TRIGGER trigger_enqueue_feedback
AFTER INSERT ON feedback_events
FOR EACH ROW EXECUTE FUNCTION enqueue_feedback();

-- A wake-up hint for workers, once per statement (not per row). Workers also poll, so a lost
-- notification only delays. On Citus drop this trigger: workers' notifications do not reach the
-- coordinator, and the service's own statements notify instead.
CREATE OR REPLACE FUNCTION notify_feedback()
RETURNS TRIGGER AS $$
BEGIN
    PERFORM pg_notify('olps_feedback', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER trigger_notify_feedback
AFTER INSERT ON feedback_events
FOR EACH STATEMENT EXECUTE FUNCTION notify_feedback();

-- Features logged by predictions with an entity_id, for delayed labels: a feedback event without
-- features trains on the latest logged prediction of the same (model_id, entity_id).
CREATE TABLE prediction_log (
    model_id      UUID NOT NULL,
    entity_id     TEXT NOT NULL,
    id            BIGINT GENERATED ALWAYS AS IDENTITY,
    features      JSONB NOT NULL,
    prediction    DOUBLE PRECISION,
    model_version BIGINT,
    logged_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, entity_id, id)
);

-- One row per model version: what made it and, for learned batches, the prequential loss of the
-- batch (each example's loss measured before it was learned).
CREATE TABLE model_versions (
    model_id         UUID NOT NULL,
    model_version    BIGINT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('gradient', 'rollback')),
    examples         INTEGER NOT NULL DEFAULT 0,
    loss_sum         DOUBLE PRECISION NOT NULL DEFAULT 0,
    correct          INTEGER,
    dead_lettered    INTEGER NOT NULL DEFAULT 0,
    parameters_changed INTEGER NOT NULL DEFAULT 0,
    learning_rate    DOUBLE PRECISION,
    rolled_back_to   BIGINT,
    examples_seen    BIGINT NOT NULL DEFAULT 0,
    source           TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, model_version)
);

-- The documented materialized view, with the unique index that REFRESH ... CONCURRENTLY requires.
CREATE MATERIALIZED VIEW current_model_state AS
SELECT model_id, parameter_id, current_value, version, last_updated
FROM model_parameters;

CREATE UNIQUE INDEX current_model_state_pk ON current_model_state (model_id, parameter_id);

CREATE OR REPLACE FUNCTION refresh_current_model_state()
RETURNS VOID AS $$
BEGIN
    REFRESH MATERIALIZED VIEW CONCURRENTLY current_model_state;
END;
$$ LANGUAGE plpgsql;
