//! Errors of the version line: snapshots, rollback, point-in-time reads and history.

use uuid::Uuid;

use crate::models::ModelError;

/// Errors of snapshots, rollback, point-in-time reads and history.
#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(
        "snapshot '{0}' not found for this model (give its UUID or label; \
         `olps snapshot list --model M` shows them)"
    )]
    SnapshotNotFound(String),
    #[error(
        "a snapshot labelled '{0}' already exists for this model; choose another label or delete \
         that snapshot first"
    )]
    DuplicateLabel(String),
    /// A bad argument; the message names it.
    #[error("{0}")]
    InvalidArgument(String),
    #[error(
        "version {requested} does not exist: the model is at version {current} \
         (versions run from 0, before any learning, to {current})"
    )]
    VersionNotFound { requested: i64, current: i64 },
    #[error(
        "version {version} is no longer reachable: the history of versions 1..={pruned_through} \
         was pruned; reachable are versions {pruned_through}..={current}{}",
        snapshot_list(.snapshot_versions)
    )]
    Unreachable {
        version: i64,
        pruned_through: i64,
        current: i64,
        snapshot_versions: Vec<i64>,
    },
    #[error(
        "snapshot {snapshot_id} (version {version}) is where the retained history starts (the \
         history of versions 1..={version} was pruned): deleting it would make every version \
         before the current one unreachable; take a later snapshot and prune again first"
    )]
    SnapshotInUse { snapshot_id: Uuid, version: i64 },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn snapshot_list(versions: &[i64]) -> String {
    if versions.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = versions.iter().map(i64::to_string).collect();
        format!(", and the snapshot versions {}", list.join(", "))
    }
}
