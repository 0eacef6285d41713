-- The audit trail: every state-changing request — rollback, snapshot create and delete, snapshot
-- policy, model create, delete and resume, token create and revoke — and who made it, newest
-- first: the API token (its name and whether it is still in force) over HTTP, or the command line
-- (`cli`) with the database role it ran as. Failed attempts are listed too (http_status 4xx). A
-- rollback's new version also names its token in model_versions.source.
-- Variables: none
-- Run: psql "$DATABASE_URL" -X -f sql/audit_trail.sql
SELECT a.at,
       a.action,
       a.actor,
       a.token_name,
       a.token_id,
       CASE WHEN t.token_id IS NULL THEN NULL
            WHEN t.revoked_at IS NOT NULL THEN 'revoked'
            WHEN t.expires_at <= now() THEN 'expired'
            ELSE 'active' END AS token_status,
       a.db_user,
       a.model_id,
       m.name AS model_name,
       a.target,
       a.method,
       a.route,
       a.status AS http_status,
       v.model_version AS new_version,
       v.source AS version_source
FROM audit_log a
LEFT JOIN api_tokens t ON t.token_id = a.token_id
LEFT JOIN models m ON m.model_id = a.model_id
LEFT JOIN model_versions v
       ON a.action = 'rollback' AND v.model_id = a.model_id
      AND v.model_version = (a.details ->> 'version')::bigint
ORDER BY a.at DESC, a.id DESC;
