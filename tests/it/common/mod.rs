//! The harness every test module shares (`use crate::common::*`):
//!
//! - `db`: a fresh, migrated database per test on a real PostgreSQL (DATABASE_URL; else a
//!   testcontainers PostgreSQL where Docker runs; else a cluster from the local PostgreSQL
//!   binaries), dropped afterwards; models and small queries.
//! - `app`: the HTTP service on port 0 over a test database, and its client.
//! - `cli`: the `olps` binary run as a user would, and throwaway embedded-cluster folders.
//! - `streams`: the reference drift stream (`tests/data/seed_stream.csv`), generated streams,
//!   and feeding them to the queue.
//! - `committed`: the version line's operations, each in a transaction of its own.
//! - `learning`: the worker (drain, one version at a time), the in-memory learner over the same
//!   rows, and the invariants (bit-identical parameters, a linear history).
//! - `applied`: exactly once after faults (every event applied by one whole version, the
//!   parameters bit for bit the in-memory replay of the applied order).

mod app;
pub mod applied;
mod cli;
pub mod committed;
mod db;
mod learning;
mod streams;

pub use app::*;
pub use cli::*;
pub use db::*;
pub use learning::*;
pub use streams::*;
