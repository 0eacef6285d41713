-- The work queue rotates (issue 15): feedback_queue becomes a table partitioned by a generation
-- column, and the worker TRUNCATEs a generation once it is drained, instead of leaving VACUUM to
-- remove the rows it deleted.
--
-- Why: the worker deletes each queue row it applies. While any snapshot older than those deletes
-- is open (an analyst's REPEATABLE READ query, a forgotten transaction), VACUUM may remove none
-- of them, and the index entries of the deleted rows cannot even be marked dead, so every claim
-- walks all of them from the start of the model's range: its cost grows with every event drained
-- during the hold, and the table and its indexes grow with the traffic until the snapshot ends
-- (and then stay that size). TRUNCATE does not wait for old snapshots: a drained generation goes
-- back to zero bytes at once, so a claim walks at most the rows deleted in the generations not
-- yet truncated (a few seconds of traffic). PgQ and PgQue rotate their event tables the same way.
--
-- Generations: rows go to generation floor(epoch(created_at) / 5 s) mod 3 (the column default,
-- olps_queue_generation(now())), dead letters to generation -1 (feedback_queue_dead). Which
-- generation a row is in never matters for correctness: claims read all of them in queue order,
-- and a generation is truncated only under an ACCESS EXCLUSIVE lock after checking, under that
-- lock, that nothing is left in it (or moving what is left, see olps_rotate_queue below).

CREATE FUNCTION olps_queue_generation(at TIMESTAMPTZ)
RETURNS SMALLINT
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (floor(extract(epoch FROM at) / 5)::bigint % 3)::smallint $$;

-- The old table moves aside with its indexes and constraints (their names are reused).
ALTER TABLE feedback_queue RENAME TO feedback_queue_v1;
ALTER INDEX feedback_queue_pkey RENAME TO feedback_queue_v1_pkey;
ALTER INDEX idx_feedback_queue_claim RENAME TO idx_feedback_queue_v1_claim;
ALTER INDEX idx_feedback_queue_dead RENAME TO idx_feedback_queue_v1_dead;
ALTER INDEX idx_feedback_queue_event RENAME TO idx_feedback_queue_v1_event;
ALTER SEQUENCE feedback_queue_seq OWNED BY NONE;

CREATE TABLE feedback_queue (
    id          UUID NOT NULL DEFAULT gen_random_uuid(),
    model_id    UUID NOT NULL,
    feedback_id UUID NOT NULL,
    priority    DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Insertion order: breaks ties between rows of one statement or transaction (same created_at).
    seq         BIGINT NOT NULL DEFAULT nextval('feedback_queue_seq'),
    status      TEXT NOT NULL DEFAULT 'pending'
                CONSTRAINT feedback_queue_status_check CHECK (status IN ('pending', 'dead')),
    dead_reason TEXT,
    dead_at     TIMESTAMPTZ,
    -- The generation (partition) the row lives in: 0..2 by time, -1 for dead letters.
    gen         SMALLINT NOT NULL DEFAULT olps_queue_generation(now()),
    -- A key of a partitioned table must contain the partition key; (model_id, id) stays unique
    -- in practice (gen_random_uuid), and a row is in one generation at a time.
    PRIMARY KEY (model_id, id, gen),
    CONSTRAINT feedback_queue_model_id_feedback_id_fkey FOREIGN KEY (model_id, feedback_id)
        REFERENCES feedback_events (model_id, id) ON DELETE CASCADE
) PARTITION BY LIST (gen);
CREATE TABLE feedback_queue_g0 PARTITION OF feedback_queue FOR VALUES IN (0);
CREATE TABLE feedback_queue_g1 PARTITION OF feedback_queue FOR VALUES IN (1);
CREATE TABLE feedback_queue_g2 PARTITION OF feedback_queue FOR VALUES IN (2);
CREATE TABLE feedback_queue_dead PARTITION OF feedback_queue FOR VALUES IN (-1);
-- Claiming a model's pending rows in queue order.
CREATE INDEX idx_feedback_queue_claim
    ON feedback_queue (model_id, priority DESC, created_at, seq) WHERE status = 'pending';
CREATE INDEX idx_feedback_queue_dead ON feedback_queue (model_id, dead_at) WHERE status = 'dead';
CREATE INDEX idx_feedback_queue_event ON feedback_queue (model_id, feedback_id);

INSERT INTO feedback_queue (id, model_id, feedback_id, priority, created_at, seq, status,
                            dead_reason, dead_at, gen)
SELECT id, model_id, feedback_id, priority, created_at, seq, status, dead_reason, dead_at,
       CASE WHEN status = 'dead' THEN -1 ELSE olps_queue_generation(now()) END
FROM feedback_queue_v1;
DROP TABLE feedback_queue_v1;
ALTER SEQUENCE feedback_queue_seq OWNED BY feedback_queue.seq;

-- Rotation state, shared by every worker: when to try again after a generation could not be
-- locked, and what was done (for /metrics and the soak benchmark).
CREATE TABLE feedback_queue_rotation (
    singleton        BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    failures         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    truncations      BIGINT NOT NULL DEFAULT 0,
    moved_rows       BIGINT NOT NULL DEFAULT 0,
    lock_failures    BIGINT NOT NULL DEFAULT 0,
    last_truncated_at TIMESTAMPTZ
);
INSERT INTO feedback_queue_rotation DEFAULT VALUES;

-- Truncates the generations that are not current and are drained, and the next one (the
-- generation that becomes current within 5 s) also when up to move_max rows are left in it:
-- those (rows of a model no worker drains, a quarantined model's, dead letters written by plain
-- SQL) move first, pending rows to the current generation, dead ones to feedback_queue_dead,
-- keeping every column (so their place in queue order). Runs as the owner (TRUNCATE), so a
-- least-privilege worker role may call it; one caller at a time (advisory lock).
--
-- Each generation is locked with lock_timeout = lock_timeout_ms: every claim reads all
-- generations, so while the lock is awaited (at most a batch's length, when a worker holds it)
-- new claims wait behind it; inserts never do (they lock only the generation they write). A
-- session that keeps a generation locked (an analyst's transaction that read feedback_queue)
-- makes the attempt fail; attempts then back off (1 s, 2 s, 4 s, ... up to 60 s) so that the
-- waits cost claims little. Returns one line per generation truncated.
CREATE FUNCTION olps_rotate_queue(move_max INTEGER DEFAULT 10000, lock_timeout_ms INTEGER DEFAULT 200)
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
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('olps_rotate_queue')) THEN
        RETURN done;
    END IF;
    SELECT * INTO state FROM feedback_queue_rotation;
    IF now() < state.next_attempt_at THEN
        RETURN done;
    END IF;
    FOR g IN 0..2 LOOP
        CONTINUE WHEN g = cur;
        rel := 'feedback_queue_g' || g;
        -- Nothing to gain: truncated, and nothing written since.
        CONTINUE WHEN pg_relation_size(rel::regclass) = 0;
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
REVOKE ALL ON FUNCTION olps_rotate_queue(INTEGER, INTEGER) FROM PUBLIC;

-- Planner statistics: the generations are analyzed as tables of their own (a partitioned table
-- has no rows itself); otherwise as in V20.
CREATE OR REPLACE FUNCTION olps_analyze_grown_tables()
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
        WHERE c.oid IN (SELECT coalesce(p.relid, r.rel)
                        FROM unnest(ARRAY['feedback_events', 'feedback_queue', 'parameter_updates',
                                          'model_parameters', 'model_versions', 'prediction_log',
                                          'drift_events', 'snapshots',
                                          'snapshot_parameters']::regclass[]) AS r(rel)
                        -- A plain table has no partition tree: it stands for itself.
                        LEFT JOIN LATERAL pg_partition_tree(r.rel) p ON TRUE
                        WHERE p.relid IS NULL OR p.isleaf)
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
