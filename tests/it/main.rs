//! The integration tests, linked as one test binary (`cargo test --test it`): one module per
//! area, and the harness they share in `common`.
//!
//! Every test runs in this one process, next to the tests of every other module: none may
//! change process-wide state that another could see (environment variables, the working
//! directory, signal handlers). Two things are process-wide on purpose: the test PostgreSQL
//! server, chosen once (`common::TestDb`), and olps' metrics registry, which the serving tests
//! read by model name (keep model names of metrics assertions unique across modules) or as
//! differences. The one tracing subscriber (`common::TempCluster`) shows olps::embedded only.

mod common;

mod access;
mod api;
mod bench_smoke;
mod citus;
mod cli;
mod client_errors;
mod deadletters;
mod demo;
mod drift;
mod embedded;
mod fuzz;
mod idempotent_ingest;
mod isolation;
mod learner;
mod learning_defaults;
mod listeners;
mod long_run;
mod model_update;
mod module_graph;
mod outage;
mod queue;
mod replay;
mod retention;
mod roles;
mod schema;
mod serving;
mod shutdown;
mod sql;
mod tls;
mod validation;
mod versions;
mod worker;

// Issue 19: prediction ids and delayed labels, pinned predictions, alerting.
mod alerting;
mod pinned;
mod prediction_ids;
mod shadow;

// Issue 16: the prediction log keeps up.
mod prediction_log;
