//! olps: an online-learning parameter store backed by PostgreSQL.
//!
//! Layout: `schema` (migrations), `db` and `embedded` (which database), `learner` (pure online
//! learning, no I/O), `models` and `feedback` (tables and validation), `http` (the API), `cli`.

pub mod bench;
pub mod cli;
pub mod db;
pub mod demo;
pub mod embedded;
pub mod feedback;
pub mod history;
pub mod http;
pub mod learner;
pub mod metrics;
pub mod models;
pub mod monitor;
pub mod params;
pub mod rollback;
pub mod schema;
pub mod serving;
pub mod snapshots;
pub mod validation;
pub mod versions;
pub mod worker;
