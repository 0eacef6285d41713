-- Distributes olps's schema when the database has the Citus extension (run by `olps migrate` after
-- the migrations, before the grants; idempotent, and a no-op on a plain PostgreSQL server).
--
--   a reference table (a copy on every node): models — small, read by every statement
--   distributed by model_id, all colocated (a model's rows of every table on one node, so each
--   hot-path statement, which names one model_id, runs on that node in one transaction):
--   feedback_events, feedback_queue, model_parameters, parameter_updates, prediction_log,
--   model_versions, snapshots, snapshot_parameters, drift_events, and any later table that has a
--   model_id column and a primary key that leads with it
--   local to the coordinator: api_tokens (only the service reads it, and Citus has no column
--   grants, which hide the token hashes from analysts), audit_log, refinery_schema_history
--
-- The enqueue trigger runs on the shards (it writes only rows of the same model, hence the same
-- shard group): `citus.enable_unsafe_triggers` is set for this database. The statement-level
-- NOTIFY trigger is dropped: a NOTIFY raised on a worker node never reaches listeners on the
-- coordinator (and a transaction that sent one cannot be prepared, so a statement writing to two
-- nodes would fail its two-phase commit), so the service's feedback insert notifies itself
-- (olps::feedback::insert), and workers poll for rows written as plain SQL, on Citus at their
-- shorter Citus poll interval (WorkerConfig::citus_poll_interval).
DO $citus$
DECLARE
    f       RECORD;
    t       TEXT;
    first   TEXT := NULL;
    known   TEXT[] := ARRAY['feedback_events', 'feedback_queue', 'model_parameters',
                            'parameter_updates', 'prediction_log', 'model_versions', 'snapshots',
                            'snapshot_parameters', 'drift_events'];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN;
    END IF;
    EXECUTE format('ALTER DATABASE %I SET citus.enable_unsafe_triggers = on', current_database());
    -- Tables with a foreign key to the reference table `models` (retention_policies) make Citus
    -- refuse to modify `models` in a transaction that touched several shards in parallel (a
    -- rollback does); olps's hot paths touch one shard, so sequential costs them nothing.
    EXECUTE format('ALTER DATABASE %I SET citus.multi_shard_modify_mode = sequential',
                   current_database());
    PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    -- Foreign keys between colocated tables are created shard by shard; in one transaction Citus
    -- must do that over one connection per node.
    PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    IF EXISTS (SELECT 1 FROM pg_trigger
               WHERE tgname = 'trigger_notify_feedback' AND tgrelid = to_regclass('feedback_events')) THEN
        DROP TRIGGER trigger_notify_feedback ON feedback_events;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'models'::regclass) THEN
        PERFORM create_reference_table('models');
    END IF;

    -- The known traffic tables first (feedback_events before the queue that references it), then
    -- any other table whose primary key leads with model_id (also one Citus has already made a
    -- local table of the coordinator's, partmethod 'n', for its foreign key to `models`).
    FOR t IN
        SELECT c.relname
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = i.indkey[0]
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
          AND NOT c.relispartition  -- a partitioned table is distributed with its partitions
          AND a.attname = 'model_id'
          AND NOT EXISTS (SELECT 1 FROM pg_dist_partition d
                          WHERE d.logicalrelid = c.oid AND d.partmethod <> 'n')
          AND c.relname NOT IN ('models', 'api_tokens')
        ORDER BY coalesce(array_position(known, c.relname::text), 1000), c.relname
    LOOP
        IF first IS NULL THEN
            SELECT d.logicalrelid::regclass::text INTO first
            FROM pg_dist_partition d
            WHERE d.logicalrelid = to_regclass('feedback_events') AND d.partmethod = 'h';
        END IF;
        IF first IS NULL THEN
            PERFORM create_distributed_table(t, 'model_id');
            first := t;
        ELSE
            PERFORM create_distributed_table(t, 'model_id', colocate_with => first);
        END IF;
    END LOOP;

    -- Citus plans no parameterized SQL-language function over distributed tables: the two the
    -- point-in-time reads call become PL/pgSQL functions with the same body (a later migration
    -- that redefines one in SQL is converted again at the next `olps migrate`).
    FOR f IN
        SELECT p.proname AS name, pg_get_function_arguments(p.oid) AS arguments,
               pg_get_function_result(p.oid) AS result, p.proretset AS returns_set,
               p.prosrc AS body
        FROM pg_proc p
        WHERE p.pronamespace = current_schema()::regnamespace
          AND p.proname IN ('olps_parameters_from', 'olps_version_at')
          AND p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'sql')
    LOOP
        EXECUTE format(
            'CREATE OR REPLACE FUNCTION %I(%s) RETURNS %s LANGUAGE plpgsql STABLE AS %L',
            f.name, f.arguments, f.result,
            E'#variable_conflict use_column\nBEGIN\n'
            || CASE WHEN f.returns_set THEN 'RETURN QUERY ' || f.body || E';\n'
                    ELSE 'RETURN (' || f.body || E');\n' END
            || 'END');
    END LOOP;
END
$citus$;
