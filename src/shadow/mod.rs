//! Shadow (challenger) models: a model may name challengers — ordinary models of the same kind,
//! with any settings — that receive every event it learns, in its order, are scored
//! prequentially on them, and can be promoted.
//!
//! - [`links`]: the `model_challengers` table (add, remove, list) and its rules;
//! - [`feed`]: the copy of a champion's batch into its challengers, in the batch's transaction;
//! - [`compare`]: champion and challengers over the same events (GET …/metrics);
//! - [`promote`]: the champion takes a challenger's parameters, state and settings as one new
//!   version.

pub mod compare;
pub mod feed;
pub mod links;
pub mod promote;

use crate::models::ModelError;
use crate::settings::SettingsError;
use crate::timeline::error::TimelineError;

#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("challenger: '{0}' cannot be a challenger of itself; name another model")]
    SelfLink(String),
    #[error(
        "challenger: '{challenger}' is {challenger_kind} and '{champion}' is {champion_kind}: a \
         challenger must be of its champion's kind (the labels mean different things)"
    )]
    KindMismatch {
        champion: String,
        champion_kind: String,
        challenger: String,
        challenger_kind: String,
    },
    #[error(
        "challenger: '{challenger}' is already a challenger of '{champion}'; a model has at most \
         one champion (remove that link first)"
    )]
    AlreadyLinked {
        challenger: String,
        champion: String,
    },
    #[error(
        "challenger: '{challenger}' is a champion above '{champion}' (through {path}): the link \
         would make a circle of challengers"
    )]
    Cycle {
        champion: String,
        challenger: String,
        path: String,
    },
    #[error(
        "challenger: '{challenger}' is not a challenger of '{champion}' (`olps model challenger \
         list --model {champion}` shows them)"
    )]
    NotLinked {
        champion: String,
        challenger: String,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Timeline(#[from] TimelineError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}
