//! olps: an online-learning parameter store backed by PostgreSQL.
//!
//! The modules, from the bottom up (none imports a module above it; `tests/it/module_graph.rs`
//! fails on any import circle):
//! - [`validation`]: the one set of limits for features, labels, weights and names (pure);
//! - [`learner`]: the online learner and its drift detectors, pure (no I/O);
//! - [`schema`] (the embedded migrations), [`db`] and [`embedded`] (which database), [`notify`]
//!   (a LISTEN connection that reconnects by itself);
//! - table access, each module owning its tables' SQL, with functions that take the caller's
//!   executor or transaction: [`models`] (`models`), [`params`] (`model_parameters` and the
//!   history rows a batch appends), [`feedback`] (client events into `feedback_events`);
//! - [`timeline`]: the version line — the version counter, history, snapshots, rollback and
//!   roll-forward, point-in-time reads;
//! - [`shadow`]: challenger models — their links, the copy of a champion's batch (which the
//!   worker calls), the comparison and the promotion;
//! - [`worker`]: the queue (`feedback_queue`) and the worker loop; [`monitor`]: drift events and
//!   the guard; [`serving`]: the in-memory model per version and the prediction log;
//! - [`settings`]: settings that change after creation, with their history; [`replay`]: one
//!   model's learned feedback replayed into another;
//! - the edges: [`http`] (the API, one router per area), [`cli`], [`demo`], [`bench`], with
//!   [`runtime`] (a migrated database, the shutdown token) and [`metrics`] shared by them.

pub mod auth;
pub mod bench;
pub mod citus;
pub mod cli;
pub mod db;
pub mod demo;
pub mod embedded;
pub mod feedback;
pub mod http;
pub mod learner;
pub mod metrics;
pub mod models;
pub mod monitor;
pub mod notify;
pub mod params;
pub mod pgtls;
pub mod replay;
pub mod retention;
pub mod runtime;
pub mod schema;
pub mod serving;
pub mod settings;
pub mod shadow;
pub mod timeline;
pub mod validation;
pub mod worker;
