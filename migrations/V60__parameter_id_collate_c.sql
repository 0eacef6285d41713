-- parameter_id compares byte by byte (COLLATE "C") in the three tables keyed by it. Under the
-- database's default collation (a libc locale such as en_US.UTF-8 or C.UTF-8) every comparison
-- in their primary keys, in the history's parameter index and in the sorts of reconstruction and
-- rollback went through strcoll(); a rollback of 1,000,000 parameters makes tens of millions of
-- them (issue 16). olps never needed linguistic order here: every read already orders
-- parameters with COLLATE "C" (byte order, as Rust sorts strings), which now is the column's own
-- order. Equality is unchanged (the collations are deterministic), so existing rows stay valid;
-- only the indexes are rebuilt (the type stays text, so the tables are not rewritten).
-- A process connected while this runs must reconnect: its prepared statements that return
-- parameter_id fail with "cached plan must not change result type" (the collation is part of a
-- result column's type): stop olps serve and olps worker while olps migrate applies it.
--
-- The materialized view current_model_state reads model_parameters.parameter_id and would block
-- the change: it is dropped and created again as in V1, with its unique index (the grants follow
-- from src/roles.sql, which olps migrate applies after the migrations).
DROP MATERIALIZED VIEW current_model_state;

ALTER TABLE model_parameters ALTER COLUMN parameter_id TYPE TEXT COLLATE "C";
ALTER TABLE parameter_updates ALTER COLUMN parameter_id TYPE TEXT COLLATE "C";
ALTER TABLE snapshot_parameters ALTER COLUMN parameter_id TYPE TEXT COLLATE "C";

CREATE MATERIALIZED VIEW current_model_state AS
SELECT model_id, parameter_id, current_value, version, last_updated
FROM model_parameters;

CREATE UNIQUE INDEX current_model_state_pk ON current_model_state (model_id, parameter_id);
