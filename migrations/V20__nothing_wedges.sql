-- Labels the system writes itself live in their own namespace, the prefix 'olps:', which no one
-- else may use: the worker's snapshot before a drift adaptation at version N was labelled
-- 'auto-before-adaptation-vN', a label a user could create first, and then the batch that
-- drifted at version N failed on every retry (labels are unique per model).

-- A user's label in the reserved namespace (possible only before this migration) moves aside.
UPDATE snapshots SET label = left('user-' || label, 200)
WHERE kind = 'manual' AND lower(left(label, 5)) = 'olps:';

-- The worker's labels move into the namespace.
UPDATE snapshots
SET label = 'olps:before-adaptation-v' || substring(label FROM '^auto-before-adaptation-v([0-9]+)$')
WHERE kind = 'auto' AND label ~ '^auto-before-adaptation-v[0-9]+$';

ALTER TABLE snapshots ADD CONSTRAINT snapshots_system_label
    CHECK (kind = 'auto' OR label IS NULL OR lower(left(label, 5)) <> 'olps:');

-- Planner statistics that follow the traffic tables' growth, whatever autovacuum does: the
-- worker calls this about once a second; it runs ANALYZE (as the tables' owner: SECURITY
-- DEFINER, so a least-privilege worker role can call it) on each traffic table that has at
-- least 1,000 live rows and more than twice the rows its statistics know (or than 500, if they
-- know fewer; never analyzed counts as 0), skipping a table another ANALYZE or VACUUM holds. A
-- table is thus analyzed about log2(rows / 500) times in its life, and a queue whose length
-- goes up and down under a thousand rows is left alone. An ANALYZE also invalidates the cached
-- plans that read the table, so they are made again for what the table is now. Returns the
-- tables it analyzed.
CREATE FUNCTION olps_analyze_grown_tables()
RETURNS TEXT[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    t RECORD;
    done TEXT[] := '{}';
BEGIN
    FOR t IN
        SELECT c.oid::regclass AS rel, c.relname::text AS name
        FROM pg_class c
        JOIN pg_stat_user_tables s ON s.relid = c.oid
        WHERE c.oid = ANY (ARRAY['feedback_events', 'feedback_queue', 'parameter_updates',
                                 'model_parameters', 'model_versions', 'prediction_log',
                                 'drift_events', 'snapshots', 'snapshot_parameters']::regclass[])
          AND s.n_live_tup >= 1000
          AND s.n_live_tup > 2 * greatest(c.reltuples, 500)
        ORDER BY c.relname
    LOOP
        EXECUTE format('ANALYZE (SKIP_LOCKED) %s', t.rel);
        done := done || t.name;
    END LOOP;
    RETURN done;
END;
$$;
