-- olps schema, version 2: snapshots, rollback, point-in-time reads, history retention and the
-- analysts' views. Like V1, every table that grows with traffic leads its primary key with model_id.

-- Per-model automatic snapshot policy (NULL: off) and the history retention horizon: the history
-- rows of versions 1..history_pruned_through have been deleted by `olps history prune`, and the
-- snapshot at that version (kept while it is the floor) is where reconstruction starts.
ALTER TABLE models
    ADD COLUMN auto_snapshot_every_versions INTEGER
        CHECK (auto_snapshot_every_versions > 0),
    ADD COLUMN auto_snapshot_every_minutes INTEGER
        CHECK (auto_snapshot_every_minutes > 0),
    ADD COLUMN auto_snapshot_keep INTEGER
        CHECK (auto_snapshot_keep > 0),
    ADD COLUMN history_pruned_through BIGINT NOT NULL DEFAULT 0
        CHECK (history_pruned_through >= 0);

-- A snapshot: every parameter and its optimizer state at one model version, copied inside
-- PostgreSQL. `kind` is 'manual' (olps snapshot create / POST .../snapshots) or 'auto' (policy).
CREATE TABLE snapshots (
    model_id        UUID NOT NULL,
    snapshot_id     UUID NOT NULL DEFAULT gen_random_uuid(),
    model_version   BIGINT NOT NULL CHECK (model_version >= 0),
    label           TEXT CHECK (label IS NULL OR length(label) BETWEEN 1 AND 200),
    kind            TEXT NOT NULL DEFAULT 'manual' CHECK (kind IN ('manual', 'auto')),
    parameter_count BIGINT NOT NULL DEFAULT 0,
    examples_seen   BIGINT NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, snapshot_id)
);
CREATE UNIQUE INDEX snapshots_label ON snapshots (model_id, label) WHERE label IS NOT NULL;
-- "The nearest snapshot at or below version V".
CREATE INDEX snapshots_version ON snapshots (model_id, model_version);

-- The parameters of a snapshot, with the state columns of model_parameters. `last_version` is the
-- version that last changed the parameter (model_parameters.version at the snapshot).
CREATE TABLE snapshot_parameters (
    model_id      UUID NOT NULL,
    snapshot_id   UUID NOT NULL,
    parameter_id  TEXT NOT NULL,
    value         DOUBLE PRECISION NOT NULL,
    opt_m         DOUBLE PRECISION NOT NULL,
    opt_v         DOUBLE PRECISION NOT NULL,
    update_count  BIGINT NOT NULL,
    feature_mean  DOUBLE PRECISION NOT NULL,
    feature_m2    DOUBLE PRECISION NOT NULL,
    last_version  BIGINT NOT NULL,
    PRIMARY KEY (model_id, snapshot_id, parameter_id),
    FOREIGN KEY (model_id, snapshot_id) REFERENCES snapshots (model_id, snapshot_id)
        ON DELETE CASCADE
);

-- Forward reconstruction, the building block of point-in-time reads: the parameters of a model at
-- p_version, from the snapshot p_base_snapshot (taken at p_base_version; NULL and 0 to start from
-- nothing) overlaid with each parameter's latest history row in (p_base_version, p_version].
-- It checks nothing: olps_parameters_at below chooses a valid base. A parameter zeroed by a
-- rollback is listed with its zero state (it exists, in its initial state).
CREATE FUNCTION olps_parameters_from(p_model_id UUID, p_version BIGINT, p_base_version BIGINT,
                                     p_base_snapshot UUID)
RETURNS TABLE (parameter_id TEXT, value DOUBLE PRECISION, opt_m DOUBLE PRECISION,
               opt_v DOUBLE PRECISION, update_count BIGINT, feature_mean DOUBLE PRECISION,
               feature_m2 DOUBLE PRECISION, last_version BIGINT)
LANGUAGE sql STABLE AS $$
    WITH hist AS (
        SELECT DISTINCT ON (u.parameter_id)
               u.parameter_id, u.new_value, u.opt_m, u.opt_v, u.update_count, u.feature_mean,
               u.feature_m2, u.model_version
        FROM parameter_updates u
        WHERE u.model_id = p_model_id
          AND u.model_version > p_base_version AND u.model_version <= p_version
        ORDER BY u.parameter_id, u.model_version DESC
    ), snap AS (
        SELECT s.parameter_id, s.value, s.opt_m, s.opt_v, s.update_count, s.feature_mean,
               s.feature_m2, s.last_version
        FROM snapshot_parameters s
        WHERE s.model_id = p_model_id AND s.snapshot_id = p_base_snapshot
    )
    SELECT coalesce(h.parameter_id, s.parameter_id),
           coalesce(h.new_value, s.value),
           coalesce(h.opt_m, s.opt_m),
           coalesce(h.opt_v, s.opt_v),
           coalesce(h.update_count, s.update_count),
           coalesce(h.feature_mean, s.feature_mean),
           coalesce(h.feature_m2, s.feature_m2),
           coalesce(h.model_version, s.last_version)
    FROM hist h FULL JOIN snap s ON s.parameter_id = h.parameter_id
$$;

-- The parameters of a model at a version, for analysts:
--   SELECT * FROM olps_parameters_at('<model uuid>', 42);
-- Starts from the nearest snapshot at or below the version and replays history from there. Raises
-- when the model is unknown, the version does not exist, or its history was pruned.
CREATE FUNCTION olps_parameters_at(p_model_id UUID, p_version BIGINT)
RETURNS TABLE (parameter_id TEXT, value DOUBLE PRECISION, opt_m DOUBLE PRECISION,
               opt_v DOUBLE PRECISION, update_count BIGINT, feature_mean DOUBLE PRECISION,
               feature_m2 DOUBLE PRECISION, last_version BIGINT)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    v_current BIGINT;
    v_pruned BIGINT;
    v_base_id UUID;
    v_base_version BIGINT;
BEGIN
    SELECT m.version, m.history_pruned_through INTO v_current, v_pruned
    FROM models m WHERE m.model_id = p_model_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model % not found', p_model_id USING ERRCODE = 'no_data_found';
    END IF;
    IF p_version IS NULL OR p_version < 0 OR p_version > v_current THEN
        RAISE EXCEPTION 'version % does not exist: model % is at version %',
            p_version, p_model_id, v_current USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT s.snapshot_id, s.model_version INTO v_base_id, v_base_version
    FROM snapshots s
    WHERE s.model_id = p_model_id AND s.model_version <= p_version
    ORDER BY s.model_version DESC, s.created_at DESC, s.snapshot_id
    LIMIT 1;
    IF NOT FOUND THEN
        v_base_id := NULL;
        v_base_version := 0;
    END IF;
    IF v_base_version < v_pruned AND v_base_version <> p_version THEN
        RAISE EXCEPTION 'version % of model % is no longer reachable: history through version % was pruned',
            p_version, p_model_id, v_pruned USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
        SELECT * FROM olps_parameters_from(p_model_id, p_version, v_base_version, v_base_id);
END;
$$;

-- The version a model was at, at a moment: the latest version created at or before it (0 before
-- the first). A version's created_at is the start of the transaction that committed it.
CREATE FUNCTION olps_version_at(p_model_id UUID, p_at TIMESTAMPTZ)
RETURNS BIGINT
LANGUAGE sql STABLE AS $$
    SELECT coalesce(max(v.model_version), 0)
    FROM model_versions v
    WHERE v.model_id = p_model_id AND v.created_at <= p_at
$$;

-- The document's `parameter_update_stats_5min`, without TimescaleDB: update counts and learning
-- rates per model, update_type and source in 5-minute buckets (aligned to the hour). A plain view:
-- filter it by model_id and bucket, and PostgreSQL pushes the filter below the aggregation.
CREATE VIEW parameter_update_stats_5min AS
SELECT date_bin('5 minutes', u.timestamp, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS bucket,
       u.model_id,
       u.update_type,
       u.source,
       count(*) AS update_count,
       avg(u.learning_rate) AS avg_learning_rate,
       stddev(u.learning_rate) AS stddev_learning_rate
FROM parameter_updates u
GROUP BY 1, 2, 3, 4;
