-- Queue rotation on Citus (issue 18): olps_rotate_queue() of V40 looked at the size of each
-- generation with pg_relation_size, which on a Citus coordinator is the size of an empty shell
-- (the rows are in the shards on the worker nodes), so it never truncated anything there and the
-- deleted queue rows piled up until the nodes' autovacuum removed them (and, while an old snapshot
-- was held, not at all). On Citus it now asks citus_relation_size, which sums the shards. The rest
-- works there as it is: the LOCK of a distributed generation on the coordinator waits for the
-- claims and acknowledgements that go through it, INSERT … SELECT between the colocated
-- generations runs on the nodes, and TRUNCATE of a distributed table truncates its shards.
-- Otherwise the same function as in V40.

CREATE OR REPLACE FUNCTION olps_rotate_queue(move_max INTEGER DEFAULT 10000, lock_timeout_ms INTEGER DEFAULT 200)
RETURNS TEXT[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    state   feedback_queue_rotation%ROWTYPE;
    cur     SMALLINT := olps_queue_generation(now());
    nxt     SMALLINT := (olps_queue_generation(now()) + 1) % 3;
    g       SMALLINT;
    rel     TEXT;
    left_n  BIGINT;
    moved   BIGINT;
    failed  BOOLEAN := FALSE;
    done    TEXT[] := '{}';
    old_timeout TEXT := current_setting('lock_timeout');
    sizes   BIGINT[];
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('olps_rotate_queue')) THEN
        RETURN done;
    END IF;
    SELECT * INTO state FROM feedback_queue_rotation;
    IF now() < state.next_attempt_at THEN
        RETURN done;
    END IF;
    -- The generations' sizes, all before the first TRUNCATE: on Citus the rows are in the shards
    -- on the worker nodes (the coordinator's tables are empty shells), and citus_relation_size
    -- may not be called once the transaction has modified several shards. By name: the function
    -- exists only there.
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        EXECUTE 'SELECT array_agg(citus_relation_size((''feedback_queue_g'' || n)::regclass)
                                  ORDER BY n)
                 FROM generate_series(0, 2) n' INTO sizes;
    ELSE
        SELECT array_agg(pg_relation_size(('feedback_queue_g' || s.n)::regclass) ORDER BY s.n)
        INTO sizes FROM generate_series(0, 2) AS s(n);
    END IF;
    FOR g IN 0..2 LOOP
        CONTINUE WHEN g = cur;
        rel := 'feedback_queue_g' || g;
        -- Nothing to gain: truncated, and nothing written since.
        CONTINUE WHEN sizes[g + 1] = 0;
        -- Without a lock first (it may be stale): is it drained, or small enough to move?
        EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM ONLY %I LIMIT $1) t', rel)
            INTO left_n USING (CASE WHEN g = nxt THEN move_max ELSE 0 END) + 1;
        CONTINUE WHEN left_n > (CASE WHEN g = nxt THEN move_max ELSE 0 END);
        BEGIN
            PERFORM set_config('lock_timeout', lock_timeout_ms || 'ms', true);
            EXECUTE format('LOCK TABLE %I IN ACCESS EXCLUSIVE MODE', rel);
            PERFORM set_config('lock_timeout', old_timeout, true);
            -- Under the lock every writer of the generation has committed or rolled back, so
            -- this sees all that is left.
            EXECUTE format(
                'INSERT INTO feedback_queue (id, model_id, feedback_id, priority, created_at, seq,
                                             status, dead_reason, dead_at, gen)
                 SELECT id, model_id, feedback_id, priority, created_at, seq, status, dead_reason,
                        dead_at, CASE WHEN status = ''dead'' THEN -1 ELSE $1 END
                 FROM ONLY %I', rel) USING cur;
            GET DIAGNOSTICS moved = ROW_COUNT;
            IF moved > 0 AND g <> nxt THEN
                -- Rows arrived since the check (a late transaction): leave it for later.
                RAISE EXCEPTION USING ERRCODE = 'OL001';
            END IF;
            EXECUTE format('TRUNCATE %I', rel);
            UPDATE feedback_queue_rotation
            SET truncations = truncations + 1, moved_rows = moved_rows + moved,
                last_truncated_at = now();
            done := done || format('%s (%s rows moved)', rel, moved);
        EXCEPTION
            WHEN lock_not_available THEN
                failed := TRUE;
            WHEN SQLSTATE 'OL001' THEN
                NULL;
        END;
    END LOOP;
    PERFORM set_config('lock_timeout', old_timeout, true);
    IF failed THEN
        UPDATE feedback_queue_rotation
        SET failures = failures + 1, lock_failures = lock_failures + 1,
            next_attempt_at = now() + least(60, power(2, failures)) * interval '1 second';
    ELSIF state.failures > 0 THEN
        UPDATE feedback_queue_rotation SET failures = 0, next_attempt_at = now();
    END IF;
    RETURN done;
END;
$$;
