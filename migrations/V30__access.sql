-- olps schema, version 30: access control. API tokens (only a hash of each secret is stored), the
-- audit trail of state-changing requests, and the enqueue trigger made SECURITY DEFINER so that
-- the least-privilege writer role (INSERT on feedback_events only) can insert feedback. The group
-- roles themselves (olps_writer, olps_worker, olps_service, olps_analyst) and their grants are
-- applied by every `olps migrate` after the migrations (src/schema/roles.sql): roles belong to the
-- cluster, not to a database, and grants must follow the tables later migrations add.

-- An API token. The secret (`olps_` + 64 hex digits, 256 random bits) is shown once when the token
-- is created; `token_hash` is its SHA-256. `hint` is the start of the secret, to recognise a token
-- in listings without revealing it. `model_ids` NULL: every model; else only those models.
CREATE TABLE api_tokens (
    token_id     UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name         TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    token_hash   BYTEA NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    hint         TEXT NOT NULL,
    scopes       TEXT[] NOT NULL
        CHECK (cardinality(scopes) > 0
               AND scopes <@ ARRAY['predict', 'feedback', 'read', 'write', 'admin']::TEXT[]),
    model_ids    UUID[],
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_by   TEXT,
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    revoked_by   TEXT,
    -- Updated when a service verifies the token against the database, i.e. at most once per token
    -- per service process per token-cache period (10 s by default), not on every request.
    last_used_at TIMESTAMPTZ
);
-- A name is unique among the tokens in force (a revoked token's name can be used again).
CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;

-- Who changed what: one row per state-changing request (rollback, snapshot create and delete,
-- snapshot policy, model create, delete and resume, token create and revoke), over HTTP (the token
-- that made it) or from the command line. Kept when a model is deleted. Small (operator actions,
-- not traffic), so it has its own key rather than one led by model_id.
CREATE TABLE audit_log (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- 'token' (an API token), 'cli' (the olps command line) or 'no-auth' (a service run with
    -- --no-auth on loopback).
    actor      TEXT NOT NULL CHECK (actor IN ('token', 'cli', 'no-auth')),
    token_id   UUID,
    token_name TEXT,
    -- The database role that ran the statement.
    db_user    TEXT NOT NULL DEFAULT current_user,
    -- e.g. 'rollback', 'snapshot.create', 'snapshot.delete', 'snapshot-policy.set',
    -- 'model.create', 'model.delete', 'model.resume', 'token.create', 'token.revoke'.
    action     TEXT NOT NULL,
    model_id   UUID,
    -- The model, snapshot or token as given (UUID, name or label).
    target     TEXT,
    -- HTTP method and route, and the answer's status; NULL from the command line.
    method     TEXT,
    route      TEXT,
    status     INTEGER,
    -- What the action did (the answer's body for a success, without any secret).
    details    JSONB
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_model ON audit_log (model_id, at);

-- The enqueue trigger runs with its owner's rights, so a role that may only INSERT into
-- feedback_events (olps_writer) can still queue its events; its search_path is pinned so that a
-- caller cannot slip in a table or function of its own in front of the schema's.
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION %I.enqueue_feedback() SECURITY DEFINER SET search_path = %I, pg_temp',
        current_schema(), current_schema());
END
$$;
REVOKE ALL ON FUNCTION enqueue_feedback() FROM PUBLIC;
