-- Shadow (challenger) models (issue 19, part 2).
--
-- A challenger is an ordinary model that receives a copy of every event its champion learns, in
-- the champion's order: the worker copies each champion batch into the challengers'
-- feedback_events in the batch's own transaction (src/shadow/feed.rs). A model has at most one
-- champion (the primary key) and the links form no cycle (checked under a lock when a link is
-- made). No model_id column: on Citus this small table stays on the coordinator, like api_tokens,
-- and the worker reads it with a statement of its own.
CREATE TABLE model_challengers (
    challenger_id UUID PRIMARY KEY REFERENCES models (model_id) ON DELETE CASCADE,
    champion_id   UUID NOT NULL REFERENCES models (model_id) ON DELETE CASCADE,
    -- The champion's version when the link was made: the comparison counts the events the
    -- champion applied after it (all of them were copied, under the champion's lock).
    since_version BIGINT NOT NULL CHECK (since_version >= 0),
    added_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    added_by      TEXT,
    CHECK (challenger_id <> champion_id)
);
CREATE INDEX idx_model_challengers_champion ON model_challengers (champion_id);

-- Each applied event's prequential prediction and loss (made before the event was learned), so
-- that a champion and a challenger can be compared over exactly the same events. NULL for events
-- applied before this migration.
ALTER TABLE feedback_events ADD COLUMN prequential_prediction DOUBLE PRECISION;
ALTER TABLE feedback_events ADD COLUMN prequential_loss DOUBLE PRECISION;

-- A promotion makes a version of its own (the champion takes the challenger's parameters, state
-- and settings), recorded in the history like a rollback.
ALTER TABLE model_versions DROP CONSTRAINT model_versions_kind_check;
ALTER TABLE model_versions ADD CONSTRAINT model_versions_kind_check
    CHECK (kind IN ('gradient', 'rollback', 'promotion'));
ALTER TABLE parameter_updates DROP CONSTRAINT parameter_updates_update_type_check;
ALTER TABLE parameter_updates ADD CONSTRAINT parameter_updates_update_type_check
    CHECK (update_type IN ('gradient', 'direct', 'batch', 'rollback', 'promotion'));

-- Who promoted which challenger (at which of its versions) into which version of the champion.
CREATE TABLE model_promotions (
    model_id           UUID NOT NULL,
    model_version      BIGINT NOT NULL,
    challenger_id      UUID NOT NULL,
    challenger_name    TEXT NOT NULL,
    challenger_version BIGINT NOT NULL,
    promoted_by        TEXT NOT NULL,
    promoted_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, model_version)
);
