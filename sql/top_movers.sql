-- The parameters that moved most between two versions: each parameter's value at from_version
-- and at to_version (NULL where it did not exist), and the change, largest first. Works in either
-- direction and across rollbacks (the values are reconstructed at each version).
-- Variables: model         the model's UUID or name
--            from_version  a version number (0 = before any learning)
--            to_version    a version number
--            top           how many parameters to list
-- Run: psql "$DATABASE_URL" -X -v model=M -v from_version=10 -v to_version=20 -v top=15 \
--           -f sql/top_movers.sql
WITH target AS (
    SELECT m.model_id FROM models m
    WHERE m.model_id::text = :'model' OR m.name = :'model'
), a AS (
    SELECT p.* FROM target t, olps_parameters_at(t.model_id, :'from_version'::bigint) p
), b AS (
    SELECT p.* FROM target t, olps_parameters_at(t.model_id, :'to_version'::bigint) p
)
SELECT coalesce(b.parameter_id, a.parameter_id) AS parameter_id,
       a.value AS value_from,
       b.value AS value_to,
       coalesce(b.value, 0) - coalesce(a.value, 0) AS change
FROM a FULL JOIN b ON b.parameter_id = a.parameter_id
WHERE coalesce(b.value, 0) <> coalesce(a.value, 0)
ORDER BY abs(coalesce(b.value, 0) - coalesce(a.value, 0)) DESC,
         coalesce(b.parameter_id, a.parameter_id) COLLATE "C"
LIMIT :'top'::int;
