-- Replay in the original order (issue 19, part 3): the worker learns a batch in queue order, and
-- `applied_version` alone does not keep that order within the batch (the queue rows, which hold
-- it, are deleted when applied). `applied_position` is the event's place (1, 2, ...) in the batch
-- that applied it, so (applied_version, applied_position) is the order the model learned its
-- feedback in. NULL for events applied before this migration (replay orders those by time).
ALTER TABLE feedback_events ADD COLUMN applied_position INTEGER;
