-- Snapshots are written a whole model at a time (a million rows by one INSERT … SELECT). The
-- foreign key from snapshot_parameters to snapshots checked and share-locked the parent row for
-- every one of those rows: about a third of a snapshot's time. olps writes a snapshot's header
-- and parameters in one transaction and deletes them together (snapshots::delete, the automatic
-- snapshot trimming, model delete), and every read names a snapshot whose header exists, so the
-- key only repeated what the code guarantees.
ALTER TABLE snapshot_parameters DROP CONSTRAINT snapshot_parameters_model_id_snapshot_id_fkey;
