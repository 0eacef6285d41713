//! The version line of a model: every batch and every rollback is one version (1, 2, 3, … no
//! gaps), and this module owns everything about it.
//!
//! - [`version`]: the version counter (`commit_version`: bump by exactly one, record the
//!   version's metrics and learner state, NOTIFY);
//! - [`history`]: the update history for people and scripts, and its retention (`prune`);
//! - [`snapshots`]: full copies of a version (manual, automatic by policy, and the system's own);
//! - [`rollback`]: rollback and roll-forward to any reachable version;
//! - [`reconstruct`]: the state of every parameter at a version, and point-in-time reads;
//! - [`error`]: the one error type of all of them.
//!
//! ## Reconstruction
//! The state of a parameter at version V is its latest `parameter_updates` row with
//! `model_version <= V` (each row carries the whole state after the change); a parameter without
//! one did not exist at V. Two set-based ways compute it inside PostgreSQL:
//! - *forward*: the nearest snapshot at or below V, overlaid with the latest history row in
//!   (snapshot, V] per parameter (`reconstruct::PARAMETERS_FROM`, the body of the SQL function
//!   `olps_parameters_from` of migration V2);
//! - *backward*: the current parameters, except those with history rows above V, which take their
//!   latest row at or below V (or the snapshot's state, or nothing). Its cost grows with what
//!   changed after V, not with the model's size.
//!
//! Pruned history (`models.history_pruned_through = P`: rows of versions `1..=P` are gone) leaves
//! a version V reachable when the nearest snapshot at or below it is at P or later, or is at V
//! itself, or V is the current version.

pub mod error;
pub mod history;
pub mod reconstruct;
pub mod rollback;
pub mod snapshots;
pub mod version;
