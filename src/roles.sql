-- The least-privilege group roles and their grants, applied by `olps migrate` after the migrations
-- (and by any command that applied a migration). Idempotent, and safe when several databases of
-- one cluster migrate at once: roles belong to the cluster, so a concurrent CREATE ROLE of the same
-- name fails with duplicate_object or unique_violation, which counts as done. Grants are per
-- database and follow the tables that exist now, so a table added by a later migration is covered
-- the next time this runs.
--
--   olps_writer   service clients writing feedback as plain SQL: INSERT on feedback_events only
--                 (the enqueue trigger runs SECURITY DEFINER; see V30)
--   olps_worker   `olps worker`: reads what it learns from, writes parameters, history, versions,
--                 the queue and snapshots, copies a champion's feedback for its challengers, and
--                 applies retention (deletes old rows of the traffic tables per each model's policy)
--   olps_service  `olps serve`: reads everything, writes models, feedback, the prediction log,
--                 snapshots, rollbacks, tokens and the audit trail
--   olps_analyst  read-only: every table and view except the token hashes (the sql/ pack)
--
-- A DBA gives people and programs LOGIN roles that are members of these (README, "Running olps
-- securely"); olps itself never creates a LOGIN role.

-- On Citus, the grants below and the foreign keys to the reference table `models` must run over
-- one connection per node (the file runs as one transaction); elsewhere an unused setting.
SELECT set_config('citus.multi_shard_modify_mode', 'sequential', true);

DO $roles$
DECLARE
    r TEXT;
BEGIN
    FOREACH r IN ARRAY ARRAY['olps_writer', 'olps_worker', 'olps_service', 'olps_analyst'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION
                -- Another database of this cluster created it at the same moment.
                WHEN duplicate_object OR unique_violation THEN NULL;
                WHEN insufficient_privilege THEN
                    RAISE WARNING 'olps: cannot create the group role % (the migrating role lacks CREATEROLE); a DBA can run: CREATE ROLE % NOLOGIN; then rerun olps migrate', r, r;
            END;
        END IF;
    END LOOP;
END
$roles$;

DO $grants$
DECLARE
    s     TEXT := current_schema();
    t     RECORD;
    -- Tables with grants of their own below; any other table (added by a later migration) gets
    -- read and write for the worker and the service, read for the analyst.
    known TEXT[] := ARRAY['models', 'model_parameters', 'parameter_updates', 'feedback_events',
                          'feedback_queue', 'prediction_log', 'model_versions', 'snapshots',
                          'snapshot_parameters', 'drift_events', 'api_tokens', 'audit_log',
                          'refinery_schema_history', 'retention_policies', 'retention_stats',
                          'feedback_queue_rotation'];
BEGIN
    IF (SELECT count(*) FROM pg_roles
        WHERE rolname IN ('olps_writer', 'olps_worker', 'olps_service', 'olps_analyst')) < 4 THEN
        RAISE WARNING 'olps: the group roles olps_writer, olps_worker, olps_service and olps_analyst do not all exist; their grants were not applied';
        RETURN;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO olps_writer, olps_worker, olps_service, olps_analyst', s);

    FOR t IN SELECT c.relname, c.relkind, c.relispartition
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = s AND c.relkind IN ('r', 'p', 'v', 'm')
    LOOP
        IF t.relname <> 'api_tokens' THEN
            EXECUTE format('GRANT SELECT ON %I.%I TO olps_analyst, olps_service', s, t.relname);
            IF t.relname <> 'audit_log' THEN
                EXECUTE format('GRANT SELECT ON %I.%I TO olps_worker', s, t.relname);
            END IF;
        END IF;
        -- Partitions (the queue's generations) are written through their parent, whose grants
        -- apply; they get none of their own.
        IF t.relkind IN ('r', 'p') AND NOT (t.relname = ANY (known)) AND NOT t.relispartition THEN
            EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I.%I TO olps_worker, olps_service',
                           s, t.relname);
        END IF;
    END LOOP;

    -- The writer: feedback rows, nothing else (not even reading them back).
    GRANT INSERT ON feedback_events TO olps_writer;

    -- The worker: claims and acknowledges queue rows, marks events applied, writes parameters,
    -- their history, versions, drift events and (automatic, guard) snapshots and rollbacks.
    GRANT UPDATE, DELETE ON feedback_queue TO olps_worker;
    -- Truncating drained queue generations (as the owner; see migration V40).
    GRANT EXECUTE ON FUNCTION olps_rotate_queue(INTEGER, INTEGER) TO olps_worker;
    GRANT UPDATE ON feedback_events TO olps_worker;
    -- Copies of a champion's batch for its challengers (src/shadow/feed.rs).
    GRANT INSERT ON feedback_events TO olps_worker;
    GRANT INSERT, UPDATE ON model_parameters TO olps_worker;
    GRANT INSERT ON parameter_updates, model_versions, drift_events TO olps_worker;
    GRANT UPDATE ON models TO olps_worker;
    GRANT INSERT, UPDATE, DELETE ON snapshots TO olps_worker;
    GRANT INSERT, DELETE ON snapshot_parameters TO olps_worker;
    -- Retention (src/retention.rs), which the worker applies: the rows past each model's
    -- horizons, and what it deleted.
    GRANT DELETE ON prediction_log, feedback_events, parameter_updates, model_versions,
                    drift_events TO olps_worker;
    GRANT INSERT, UPDATE ON retention_stats TO olps_worker;

    -- The service: models, feedback (the trigger queues it), the prediction log, snapshots and
    -- their policy, rollbacks, resume, token management and verification, the audit trail.
    GRANT INSERT, UPDATE ON models TO olps_service;
    GRANT INSERT ON feedback_events, prediction_log, parameter_updates, model_versions,
                    audit_log TO olps_service;
    GRANT INSERT, UPDATE ON model_parameters TO olps_service;
    GRANT INSERT, UPDATE, DELETE ON snapshots TO olps_service;
    GRANT INSERT, DELETE ON snapshot_parameters TO olps_service;
    GRANT SELECT, INSERT ON api_tokens TO olps_service;
    GRANT UPDATE (last_used_at, revoked_at, revoked_by) ON api_tokens TO olps_service;

    -- The analyst: the tokens without their hashes.
    GRANT SELECT (token_id, name, hint, scopes, model_ids, created_at, created_by, expires_at,
                  revoked_at, revoked_by, last_used_at) ON api_tokens TO olps_analyst;

    -- Identity columns and sequences used by the tables above.
    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA %I TO olps_worker, olps_service', s);
END
$grants$;
