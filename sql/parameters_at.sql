-- Every parameter of a model at a version, with its optimizer state and the version that last
-- changed it: the nearest snapshot at or below the version plus the history after it. Raises when
-- the version does not exist or its history was pruned.
-- Variables: model    the model's UUID or name
--            version  a version number (0 = before any learning)
-- Run: psql "$DATABASE_URL" -X -v model=M -v version=42 -f sql/parameters_at.sql
SELECT p.*
FROM models m, olps_parameters_at(m.model_id, :'version'::bigint) p
WHERE m.model_id::text = :'model' OR m.name = :'model'
ORDER BY p.parameter_id COLLATE "C";
