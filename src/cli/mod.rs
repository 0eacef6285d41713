//! The `olps` command line. Each command resolves the database (DATABASE_URL or the embedded
//! default), applies pending migrations, and calls into the library.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::audit;
use crate::db::{self, Database};
use crate::http::{self, AppState};
use crate::learner::{LearnerConfig, ModelKind, OptimizerKind};
use crate::models::{self, NewModel};
use crate::runtime;
use crate::schema;
use crate::worker::batching::AdaptiveBatching;
use crate::worker::{Worker, WorkerConfig};

mod access;
mod challengers;
mod db_cluster;
mod deadletters;
mod model_ops;
mod retention;
mod timeline;
pub use access::{AccessArgs, TokenCommand};
pub use challengers::ChallengerCommand;
pub use db_cluster::DbCommand;
pub use deadletters::{DeadlettersCommand, RequeueArgs};
pub use model_ops::{LearnerFlags, ReplayArgs, UpdateModelArgs};
pub use retention::RetentionCommand;
pub use timeline::{
    HistoryArgs, HistoryCommand, OutputFormat, ParamsArgs, RollbackArgs, SnapshotCommand,
};

#[derive(Debug, Parser)]
#[command(
    name = "olps",
    version,
    about = "Online-learning parameter store backed by PostgreSQL"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the bench arguments does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Apply the embedded schema migrations (safe to run again, and concurrently).
    Migrate,
    /// Run the HTTP service.
    Serve(ServeArgs),
    /// Run the learning worker: drain the feedback queue into parameter updates.
    Worker(WorkerArgs),
    /// Run the service and a worker in one process.
    Up(UpArgs),
    /// The main job end to end on the embedded default: a fraud model learning online, drift,
    /// a bad feed and a rollback, with a report and a learning-curve SVG.
    Demo(crate::demo::DemoArgs),
    /// Create, list and show models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Create, list and delete snapshots; set automatic snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Make a model's parameters those of an earlier (or later) version, as a new version.
    Rollback(RollbackArgs),
    /// A model's parameters at a version or a time.
    Params(ParamsArgs),
    /// A model's update history, newest first; `history prune` deletes old history.
    History(HistoryArgs),
    /// Benchmarks, each figure next to a bare-PostgreSQL baseline measured in the same run.
    Bench(crate::bench::BenchArgs),
    /// Create, list and revoke API tokens (bearer secrets for the HTTP API).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Feedback the worker set aside: list it with its reasons, requeue it once fixed.
    #[command(subcommand)]
    Deadletters(DeadlettersCommand),
    /// How long each model keeps its traffic rows: show and set the policy, apply it now.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// The embedded PostgreSQL cluster under .olps/: see whether it runs, stop it.
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "OLPS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Database connections in the service's pool.
    #[arg(long, env = "OLPS_POOL_SIZE", default_value_t = 16)]
    pub pool_size: u32,
    /// PostgreSQL statement_timeout of every statement the service runs, in milliseconds
    /// (0: none). A statement cancelled by it is answered 503 `statement_timeout`.
    #[arg(long, env = "OLPS_STATEMENT_TIMEOUT_MS", default_value_t = http::DEFAULT_STATEMENT_TIMEOUT.as_millis() as u64)]
    pub statement_timeout_ms: u64,
    #[command(flatten)]
    pub access: AccessArgs,
}

impl ServeArgs {
    /// The service's own pool (statement_timeout on every connection), connecting like `base`.
    fn service_pool(&self, base: &PgPool) -> PgPool {
        http::service_pool(
            base,
            &http::ServicePool {
                max_connections: self.pool_size,
                statement_timeout: std::time::Duration::from_millis(self.statement_timeout_ms),
                ..Default::default()
            },
        )
    }
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Only these models (UUID or name; repeat the flag). Default: every model.
    #[arg(long = "model")]
    pub models: Vec<String>,
    /// A fixed number of queue rows per model batch (one transaction, one new version). Without
    /// it each batch is sized from the model's backlog (--min-batch, --max-batch,
    /// --batch-budget-ms).
    #[arg(long, env = "OLPS_BATCH_SIZE", value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub batch_size: Option<i64>,
    /// Adaptive batching: the smallest claim (a shallow queue).
    #[arg(long, env = "OLPS_MIN_BATCH", default_value_t = AdaptiveBatching::DEFAULT_MIN,
          value_parser = clap::value_parser!(i64).range(1..=100_000), conflicts_with = "batch_size")]
    pub min_batch: i64,
    /// Adaptive batching: the largest claim (a backlog), bounding memory and transaction length.
    #[arg(long, env = "OLPS_MAX_BATCH", default_value_t = AdaptiveBatching::DEFAULT_MAX,
          value_parser = clap::value_parser!(i64).range(1..=100_000), conflicts_with = "batch_size")]
    pub max_batch: i64,
    /// Adaptive batching: how long one batch may take (claim to commit), in milliseconds, as far
    /// as --min-batch allows.
    #[arg(long, env = "OLPS_BATCH_BUDGET_MS", default_value_t = AdaptiveBatching::DEFAULT_BUDGET_MS,
          value_parser = clap::value_parser!(u64).range(1..=600_000), conflicts_with = "batch_size")]
    pub batch_budget_ms: u64,
    /// Exit once no pending feedback is left for the selected models.
    #[arg(long)]
    pub until_empty: bool,
    /// Milliseconds between queue polls when no notification arrives.
    #[arg(long, env = "OLPS_POLL_INTERVAL_MS", default_value_t = 250)]
    pub poll_interval_ms: u64,
    /// On Citus, milliseconds between queue polls (at most --poll-interval-ms): plain-SQL
    /// feedback wakes no worker there, so this is its freshness; 0: --poll-interval-ms.
    #[arg(long, env = "OLPS_CITUS_POLL_INTERVAL_MS",
          default_value_t = crate::worker::CITUS_POLL_INTERVAL.as_millis() as u64)]
    pub citus_poll_interval_ms: u64,
    /// Serve Prometheus metrics (GET /metrics) on this address, e.g. 127.0.0.1:9091.
    #[arg(long, env = "OLPS_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// On SIGTERM or Ctrl-C, milliseconds a batch in flight may still take to commit; past
    /// them it is rolled back as a whole (its feedback stays pending for the next worker).
    #[arg(long, env = "OLPS_SHUTDOWN_GRACE_MS", default_value_t = crate::worker::DEFAULT_SHUTDOWN_GRACE.as_millis() as u64)]
    pub shutdown_grace_ms: u64,
    /// Seconds between applications of each model's retention policy (`olps retention`); 0: the
    /// worker does not apply it.
    #[arg(long, env = "OLPS_RETENTION_INTERVAL_SECS",
          default_value_t = crate::worker::maintenance::RETENTION_EVERY.as_secs())]
    pub retention_interval_secs: u64,
    /// Seconds a label naming a prediction that is not logged yet waits for it before it is
    /// dead-lettered (README, "Delayed labels by prediction id").
    #[arg(long, env = "OLPS_LABEL_WAIT_SECS",
          default_value_t = crate::worker::DEFAULT_LABEL_WAIT.as_secs())]
    pub label_wait_secs: u64,
}

/// Starts `GET /metrics` on `--metrics-listen` when given.
async fn spawn_metrics(
    args: &WorkerArgs,
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    if let Some(addr) = &args.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        tracing::info!(addr = %listener.local_addr()?, "serving metrics");
        tokio::spawn(crate::metrics::serve(
            listener,
            pool.clone(),
            shutdown.clone(),
        ));
    }
    Ok(())
}

impl WorkerArgs {
    async fn config(&self, pool: &PgPool) -> anyhow::Result<WorkerConfig> {
        let mut ids = Vec::with_capacity(self.models.len());
        for key in &self.models {
            ids.push(models::resolve_id(pool, key).await?);
        }
        let adaptive = match self.batch_size {
            Some(_) => None,
            None => {
                let bounds = AdaptiveBatching {
                    min: self.min_batch,
                    max: self.max_batch,
                    budget: Duration::from_millis(self.batch_budget_ms),
                };
                bounds.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
                Some(bounds)
            }
        };
        Ok(WorkerConfig {
            models: ids,
            batch_size: self.batch_size.unwrap_or(self.max_batch),
            adaptive,
            poll_interval: Duration::from_millis(self.poll_interval_ms.max(1)),
            citus_poll_interval: (self.citus_poll_interval_ms > 0)
                .then(|| Duration::from_millis(self.citus_poll_interval_ms)),
            until_empty: self.until_empty,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            retention_every: (self.retention_interval_secs > 0)
                .then(|| Duration::from_secs(self.retention_interval_secs)),
            label_wait: Duration::from_secs(self.label_wait_secs),
            ..WorkerConfig::default()
        })
    }
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Create a model; prints its UUID as the last line.
    Create(CreateModelArgs),
    /// List models.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one model (by UUID or name) as JSON.
    Show { model: String },
    /// Let a quarantined model learn again (its pending feedback is kept and then applied).
    Resume { model: String },
    /// Delete a model and all its rows (parameters, history, feedback, snapshots).
    Delete { model: String },
    /// Change the settings that can change safely (learning rate and schedule, l1, l2, gradient
    /// clipping, drift, guard, snapshot policy); the worker uses them from its next batch.
    Update(UpdateModelArgs),
    /// The changes of a model's settings, oldest first, each with the version it took effect at.
    SettingsHistory {
        model: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Train model --into on the feedback model --from has learned, in the order it learned it.
    Replay(ReplayArgs),
    /// Shadow models: challengers that learn a copy of this model's feedback, compared with it
    /// over the same events, and promoted.
    #[command(subcommand)]
    Challenger(ChallengerCommand),
}

#[derive(Debug, Args)]
pub struct CreateModelArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub kind: ModelKind,
    /// auto (the default: a race of three SGD rates), sgd, adagrad, rmsprop, adam or ftrl.
    #[arg(long)]
    pub optimizer: Option<OptimizerKind>,
    #[command(flatten)]
    pub learner: LearnerFlags,
    /// Online feature standardization (running mean and variance per feature).
    #[arg(long)]
    pub standardize: Option<bool>,
    /// Full learner settings as JSON (fields of LearnerConfig); the flags above override it.
    #[arg(long)]
    pub settings: Option<String>,
}

impl CreateModelArgs {
    fn learner_config(&self) -> anyhow::Result<LearnerConfig> {
        let mut given = self.learner.over_settings(self.settings.as_deref())?;
        if let Some(v) = self.optimizer {
            given.insert("optimizer".into(), v.as_str().into());
        }
        if let Some(v) = self.standardize {
            given.insert("standardize".into(), v.into());
        }
        // An optimizer without a rate gets its own default rate (`from_input` sees to it).
        LearnerConfig::from_input(&given.into()).map_err(|e| anyhow::anyhow!("--settings: {e}"))
    }
}

/// Entry point of the binary: parses arguments, runs, prints errors.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo has a progress bar and a report of its own: only errors in between.
    init_tracing(match cli.command {
        Command::Demo(_) => "error",
        // The benchmarks print progress of their own; per-batch logs would drown it.
        Command::Bench(_) => "error",
        _ => "warn,olps=info",
    });
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OLPS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // OLPS_LOG_FORMAT=json: one JSON object per event (request logs included), for log pipelines.
    let _ = if std::env::var("OLPS_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

async fn open(pool_size: u32) -> anyhow::Result<(Database, PgPool)> {
    let database = runtime::prepare_database().await?;
    let pool = db::connect(&database.url, pool_size).await?;
    Ok((database, pool))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate => {
            let database = db::resolve().await?;
            eprintln!("olps: using {}", database.description);
            let report = schema::migrate_and_grant(&database.url).await?;
            if report.applied.is_empty() {
                println!(
                    "schema up to date (migration V{})",
                    report.latest_version.unwrap_or(0)
                );
            } else {
                for name in &report.applied {
                    println!("applied {name}");
                }
            }
            Ok(())
        }
        Command::Serve(args) => {
            args.access.check_listen(&args.listen)?;
            let (_, base) = open(1).await?;
            let pool = args.service_pool(&base);
            base.close().await;
            let listener = TcpListener::bind(&args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            let shutdown = runtime::shutdown_token();
            tracing::info!(addr = %listener.local_addr()?, "serving");
            let state = AppState::new(pool).with_access(args.access.config());
            http::serve(listener, state, shutdown).await?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Worker(args) => {
            let (_, pool) = open(4).await?;
            let config = args.config(&pool).await?;
            let shutdown = runtime::shutdown_token();
            spawn_metrics(&args, &pool, &shutdown).await?;
            let stats = Worker::new(pool, config).run(shutdown.clone()).await?;
            shutdown.cancel();
            eprintln!(
                "olps: worker applied {} batches, {} events, dead-lettered {}",
                stats.batches, stats.examples, stats.dead
            );
            Ok(())
        }
        Command::Up(args) => {
            args.serve.access.check_listen(&args.serve.listen)?;
            // The worker's statements (whole batches) are not bound by the service's timeout.
            let (_, pool) = open(4).await?;
            let service_pool = args.serve.service_pool(&pool);
            let config = args.worker.config(&pool).await?;
            let listener = TcpListener::bind(&args.serve.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.serve.listen))?;
            tracing::info!(addr = %listener.local_addr()?, "serving");
            let shutdown = runtime::shutdown_token();
            spawn_metrics(&args.worker, &pool, &shutdown).await?;
            let mut worker = Worker::new(pool.clone(), config);
            let worker_shutdown = shutdown.clone();
            let worker = tokio::spawn(async move { worker.run(worker_shutdown).await });
            let state = AppState::new(service_pool).with_access(args.serve.access.config());
            let served = http::serve(listener, state, shutdown.clone()).await;
            shutdown.cancel();
            worker.await??;
            served?;
            Ok(())
        }
        Command::Model(command) => run_model(command).await,
        Command::Demo(args) => {
            let database = runtime::prepare_database().await?;
            let keep = args.keep;
            let report = crate::demo::run(args, &database).await?;
            if !keep {
                println!("{}", report.text);
            }
            if database.embedded {
                // The cluster outlives the demo (later commands reuse it): say how to stop it.
                println!(
                    "The embedded PostgreSQL cluster in .olps/ keeps running for the commands                      above: `olps db status` shows it, `olps db stop` stops it (its data is kept)."
                );
            }
            Ok(())
        }
        Command::Snapshot(command) => timeline::run_snapshot(command).await,
        Command::Rollback(args) => timeline::run_rollback(args).await,
        Command::Params(args) => timeline::run_params(args).await,
        Command::History(args) => timeline::run_history(args).await,
        Command::Bench(args) => crate::bench::run(args).await.map(|_| ()),
        Command::Token(command) => access::run_token(command).await,
        Command::Deadletters(command) => deadletters::run(command).await,
        Command::Retention(command) => retention::run(command).await,
        Command::Db(command) => db_cluster::run(command),
    }
}

async fn run_model(command: ModelCommand) -> anyhow::Result<()> {
    // Check what needs no database first, so a mistyped flag changes nothing anywhere.
    if let ModelCommand::Update(args) = &command {
        args.patch()?;
    }
    if let ModelCommand::Create(args) = &command {
        models::validate_name(&args.name)?;
        args.learner_config()?
            .validate()
            .map_err(models::ModelError::InvalidSettings)?;
    }
    let (_, pool) = open(2).await?;
    match command {
        ModelCommand::Create(args) => {
            let new = NewModel {
                name: args.name.clone(),
                kind: args.kind,
                settings: args.learner_config()?,
            };

            let model = models::create(&pool, &new).await?;
            audit::record_cli(
                &pool,
                audit::Entry {
                    action: "model.create".into(),
                    model_id: Some(model.model_id),
                    target: Some(model.name.clone()),
                    ..Default::default()
                },
            )
            .await;
            println!(
                "created {} model '{}' (optimizer {}, learning rate {})",
                model.kind, model.name, model.settings.optimizer, model.settings.learning_rate
            );
            println!("{}", model.model_id);
        }
        ModelCommand::List { format } => {
            // A model whose stored state is unreadable is listed as such; the others as usual.
            let models = models::list_all(&pool).await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&models)?),
                Format::Table => {
                    println!(
                        "{:<36}  {:<24}  {:<8}  {:<8}  {:>8}  {:>10}  status",
                        "model_id", "name", "kind", "optim", "version", "examples"
                    );
                    for entry in models {
                        match entry {
                            models::Listed::Model(m) => println!(
                                "{:<36}  {:<24}  {:<8}  {:<8}  {:>8}  {:>10}  {}",
                                m.model_id,
                                m.name,
                                m.kind,
                                m.settings.optimizer,
                                m.version,
                                m.examples_seen,
                                m.status
                            ),
                            models::Listed::Unreadable(u) => {
                                println!(
                                    "{:<36}  {:<24}  {:<8}  {:<8}  {:>8}  {:>10}  unreadable",
                                    u.model_id, u.name, u.kind, "?", u.version, u.examples_seen
                                );
                                eprintln!("olps: {}", u.error);
                            }
                        }
                    }
                }
            }
        }
        ModelCommand::Show { model } => {
            let model = models::find(&pool, &model).await?;
            println!("{}", serde_json::to_string_pretty(&model)?);
        }
        ModelCommand::Delete { model } => {
            let model = models::find(&pool, &model).await?;
            let mut tx = pool.begin().await?;
            let removed = models::delete(&mut tx, model.model_id).await?;
            tx.commit().await?;
            audit::record_cli(
                &pool,
                audit::Entry {
                    action: "model.delete".into(),
                    model_id: Some(model.model_id),
                    target: Some(model.name.clone()),
                    details: Some(serde_json::json!({ "rows_removed": removed })),
                    ..Default::default()
                },
            )
            .await;
            let rows: u64 = removed.iter().map(|r| r.1).sum();
            println!(
                "deleted model '{}' ({}) and {rows} rows",
                model.name, model.model_id
            );
        }
        ModelCommand::Update(args) => model_ops::update(&pool, &args).await?,
        ModelCommand::SettingsHistory { model, format } => {
            model_ops::settings_history(&pool, &model, format).await?
        }
        ModelCommand::Replay(args) => model_ops::replay(&pool, &args).await?,
        ModelCommand::Challenger(command) => challengers::run(&pool, command).await?,
        ModelCommand::Resume { model } => {
            let model = models::find(&pool, &model).await?;
            let resumed = crate::monitor::resume(&pool, model.model_id).await?;
            audit::record_cli(
                &pool,
                audit::Entry {
                    action: "model.resume".into(),
                    model_id: Some(model.model_id),
                    target: Some(model.name.clone()),
                    details: Some(serde_json::json!({ "resumed": resumed })),
                    ..Default::default()
                },
            )
            .await;
            if resumed {
                println!(
                    "model '{}' resumed: the worker applies its pending feedback again",
                    model.name
                );
            } else {
                println!(
                    "model '{}' was not quarantined (status {})",
                    model.name, model.status
                );
            }
        }
    }
    Ok(())
}
