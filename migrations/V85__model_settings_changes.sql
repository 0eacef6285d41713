-- Settings that change after creation (issue 19, part 3): every change of a model's learner
-- settings or snapshot policy (`PATCH /v1/models/{m}`, `olps model update`), with the version it
-- takes effect at. A change is made under the model's row lock, which every batch holds, so it
-- falls between two versions: `model_version` is the first version learned with the new settings
-- (the model's version at the change, plus one). Settings changes make no version of their own
-- and a rollback does not undo them (README: "Changing a model's settings").
CREATE TABLE model_settings_changes (
    model_id            UUID NOT NULL,
    change_id           BIGINT GENERATED ALWAYS AS IDENTITY,
    model_version       BIGINT NOT NULL CHECK (model_version >= 1),
    -- The fields that changed, e.g. {learning_rate, drift.detector, snapshot_policy.keep}.
    changed_fields      TEXT[] NOT NULL,
    old_settings        JSONB NOT NULL,
    new_settings        JSONB NOT NULL,
    old_snapshot_policy JSONB NOT NULL,
    new_snapshot_policy JSONB NOT NULL,
    -- Who asked: a token's name over HTTP, `cli` from the command line.
    changed_by          TEXT,
    changed_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, change_id)
);
