//! `olps bench`: the benchmark suite. Every figure is measured next to what PostgreSQL itself does
//! on the same machine in the same run (a bare-SQL baseline), and reported as a ratio, because
//! absolute times on a shared machine drift.
//!
//! Scenarios (each in its own module): [`ingest`], [`drain`], [`freshness`], [`predict`],
//! [`snapshot`], [`learn`]. Each creates its own models (named `bench-…`), deletes them and their
//! rows when it ends (also after an error), and adds [`report::Figure`]s to the [`Report`],
//! printed as a table and optionally written as JSON (`--json`) and as Markdown
//! (`--markdown docs/BENCHMARKS.md`).

pub mod client;
pub mod data;
pub mod drain;
pub mod freshness;
pub mod ingest;
pub mod learn;
pub mod learn_suite;
pub mod predict;
pub mod report;
pub mod snapshot;
pub mod soak;
pub mod sys;
pub mod time_travel;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use sqlx::PgPool;
use uuid::Uuid;

use crate::learner::{LearnerConfig, ModelKind};
use crate::models::{self, Model, NewModel};
use crate::worker::batching::AdaptiveBatching;

pub use report::{Figure, Report};

/// Prefix of every model the benchmarks create.
pub const MODEL_PREFIX: &str = "bench-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Every scenario below (latency scenarios first).
    All,
    /// Feedback events per second: HTTP batch endpoint, SQL multi-row insert, COPY; baseline: a
    /// bare COPY.
    Ingest,
    /// Events per second turned into committed parameter updates with full history; baseline: a
    /// bare set-based SQL drain; also the naive design, and the worker's and service's memory.
    Drain,
    /// Delay from a feedback row's commit to the commit of the first version that includes it.
    Freshness,
    /// Predictions per second and latency, batch 1 and 100, while the worker commits versions.
    Predict,
    /// Snapshot, rollback and point-in-time read times for large models.
    Snapshot,
    /// The learner alone (no database): prequential loss/accuracy and events per second.
    Learn,
    /// A long run at a fixed rate with a REPEATABLE READ snapshot held during its middle third:
    /// drain, queue depth, dead tuples, table sizes and claim latency per interval (not in
    /// `all`: it runs for `--minutes`).
    Soak,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::All => "all",
            Scenario::Ingest => "ingest",
            Scenario::Drain => "drain",
            Scenario::Freshness => "freshness",
            Scenario::Predict => "predict",
            Scenario::Snapshot => "snapshot",
            Scenario::Learn => "learn",
            Scenario::Soak => "soak",
        }
    }

    /// The scenarios `all` runs, in order: the latency scenarios first, on a quiet database (the
    /// throughput scenarios leave millions of deleted rows to vacuum and bloated indexes behind).
    pub const EVERY: [Scenario; 6] = [
        Scenario::Freshness,
        Scenario::Predict,
        Scenario::Ingest,
        Scenario::Drain,
        Scenario::Snapshot,
        Scenario::Learn,
    ];
}

/// `olps bench <scenario> [options]`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The scenario to run (`all` runs every one).
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Events per measured case (ingest: per method; drain: per case; freshness: in total;
    /// predict: requests per case; learn: examples per optimizer). Default: per scenario.
    #[arg(long)]
    pub events: Option<u64>,
    /// Features per event.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub features: u64,
    /// Distinct feature names the events draw from.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub feature_pool: u64,
    /// Models in the "several models" cases (drain, ingest).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub models: u64,
    /// Worker count in drain (default: 1 and 2).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub workers: Option<u64>,
    /// Queue rows per worker batch in the fixed-batch cases (one transaction, one version); the
    /// baseline uses the same. The default-settings cases (drain, freshness) batch adaptively.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub batch_size: i64,
    /// Adaptive batching of the default-settings cases: smallest claim (default: the worker's).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub min_batch: Option<i64>,
    /// Adaptive batching of the default-settings cases: largest claim (default: the worker's).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub max_batch: Option<i64>,
    /// Adaptive batching of the default-settings cases: latency budget of one batch in ms
    /// (default: the worker's).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub batch_budget_ms: Option<u64>,
    /// Concurrent client connections (ingest, predict).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub connections: u64,
    /// Feedback rate of the freshness scenario, events per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// freshness: the producer writes plain SQL INSERTs that notify nobody (as an application
    /// writing to the database directly), instead of the service's insert, which notifies the
    /// workers itself. On Citus such rows are found by the worker's poll.
    #[arg(long)]
    pub plain_sql: bool,
    /// freshness: measure on the planner statistics the database has after the warm-up (on a
    /// brand-new database: what `olps migrate` and the worker's own ANALYZE left), instead of
    /// analyzing the hot tables first as autovacuum would within a minute. Run it on a new
    /// database: the cold start of a deployment, or autovacuum off.
    #[arg(long)]
    pub cold_statistics: bool,
    /// Seconds of steady load (freshness; predict per case).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stream sizes at which drain measures the worker's and the service's peak memory (child
    /// processes); comma separated, 0 to skip.
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    pub memory_events: Option<Vec<u64>>,
    /// Extra batch sizes drain measures for 1 worker and 1 model (olps and baseline); comma
    /// separated, 0 to skip. Default: 2 and 5 times --batch-size.
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    pub batch_sweep: Option<Vec<i64>>,
    /// Runs of each drain case, olps and baseline alternating (ABBA…); the figure is the mean.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub repeat: u32,
    /// Events run through the naive design in drain (it is slow).
    #[arg(long)]
    pub naive_events: Option<u64>,
    /// Model sizes (parameters) of the snapshot scenario; comma separated.
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    pub snapshot_params: Option<Vec<u64>>,
    /// Learner settings of the models the benchmarks create, as JSON (fields of LearnerConfig,
    /// e.g. '{"optimizer": "adam"}'). Default: the defaults of `olps model create`.
    #[arg(long)]
    pub settings: Option<String>,
    /// CSV stream for `learn` (feature columns, then the label). Default: the built-in
    /// seed_stream.csv (tests/data/), the design document's drift example.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// learn: run the learning suite, with this Python (which has bench/requirements.txt
    /// installed) scoring River's pipelines on the same streams in the same command.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// learn: run the learning suite against the peers' JSON saved by an earlier run
    /// (`--save-peers`) instead of running Python.
    #[arg(long)]
    pub peers: Option<PathBuf>,
    /// learn: save the peers' JSON of this run here (to score another build on the same draw).
    #[arg(long)]
    pub save_peers: Option<PathBuf>,
    /// learn: the draw of the learning suite (shuffles of the bundled datasets, generated
    /// streams).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// learn: the learning suite's script; its streams go to `data/` beside it.
    #[arg(long, default_value = "bench/river_peers.py")]
    pub suite_script: PathBuf,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the report as Markdown (docs/BENCHMARKS.md) to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Length of the soak, in minutes (fractions allowed).
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Length of the soak in seconds, instead of --minutes (short runs, tests).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Soak reporting interval in seconds. Default: a minute, or a ninth of a shorter run.
    #[arg(long)]
    pub interval_secs: Option<f64>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// The olps binary for child processes (memory measurement). Default: this executable.
    #[arg(long, hide = true)]
    pub olps_bin: Option<PathBuf>,
}

impl BenchArgs {
    /// Arguments for one scenario with the defaults (for library callers and tests).
    pub fn new(scenario: Scenario) -> BenchArgs {
        BenchArgs {
            scenario,
            events: None,
            features: 10,
            feature_pool: 10_000,
            models: 4,
            workers: None,
            batch_size: 1000,
            min_batch: None,
            max_batch: None,
            batch_budget_ms: None,
            connections: 4,
            rate: 1000.0,
            duration: 10.0,
            plain_sql: false,
            cold_statistics: false,
            memory_events: None,
            batch_sweep: None,
            repeat: 1,
            naive_events: None,
            snapshot_params: None,
            settings: None,
            data: None,
            python: None,
            peers: None,
            save_peers: None,
            seed: 0,
            suite_script: PathBuf::from("bench/river_peers.py"),
            json: None,
            markdown: None,
            minutes: 30.0,
            seconds: None,
            interval_secs: None,
            quiet: false,
            olps_bin: None,
        }
    }

    /// The command line that reproduces these arguments.
    pub fn command_line(&self) -> String {
        std::iter::once("olps".to_string())
            .chain(std::env::args().skip(1))
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What every scenario gets: the database, the arguments, and the models it created.
pub struct Ctx {
    pub url: String,
    pub pool: PgPool,
    pub args: BenchArgs,
    created: Mutex<Vec<Uuid>>,
}

impl Ctx {
    pub async fn new(url: &str, args: BenchArgs) -> anyhow::Result<Ctx> {
        let pool = crate::db::connect(url, 16).await?;
        Ok(Ctx {
            url: url.to_string(),
            pool,
            args,
            created: Mutex::new(Vec::new()),
        })
    }

    /// A new model named `bench-<label>-<random>`, remembered for cleanup.
    pub async fn create_model(
        &self,
        label: &str,
        kind: ModelKind,
        settings: LearnerConfig,
    ) -> anyhow::Result<Model> {
        let name = format!(
            "{MODEL_PREFIX}{label}-{}",
            &Uuid::new_v4().simple().to_string()[..8]
        );
        let model = models::create(
            &self.pool,
            &NewModel {
                name,
                kind,
                settings,
            },
        )
        .await?;
        self.created.lock().unwrap().push(model.model_id);
        Ok(model)
    }

    /// The worker's adaptive batching with --min-batch, --max-batch and --batch-budget-ms.
    pub fn adaptive(&self) -> anyhow::Result<AdaptiveBatching> {
        let default = AdaptiveBatching::default();
        let max = self.args.max_batch.unwrap_or(default.max);
        let bounds = AdaptiveBatching {
            // A --max-batch below the default minimum lowers the minimum with it.
            min: self.args.min_batch.unwrap_or(default.min.min(max)),
            max,
            budget: self
                .args
                .batch_budget_ms
                .map_or(default.budget, Duration::from_millis),
        };
        bounds.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(bounds)
    }

    /// The learner settings of bench models: --settings, else the defaults.
    pub fn settings(&self) -> anyhow::Result<LearnerConfig> {
        let config: LearnerConfig = match &self.args.settings {
            Some(json) => {
                let given: serde_json::Value =
                    serde_json::from_str(json).context("--settings is not valid JSON")?;
                LearnerConfig::from_input(&given).map_err(|e| anyhow::anyhow!("--settings: {e}"))?
            }
            None => LearnerConfig::default(),
        };
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("--settings: {e}"))?;
        Ok(config)
    }

    /// `n` logistic models with the bench settings.
    pub async fn create_models(&self, label: &str, n: usize) -> anyhow::Result<Vec<Model>> {
        self.create_models_with(label, n, &self.settings()?).await
    }

    /// `n` logistic models with the given settings.
    pub async fn create_models_with(
        &self,
        label: &str,
        n: usize,
        settings: &LearnerConfig,
    ) -> anyhow::Result<Vec<Model>> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(
                self.create_model(
                    &format!("{label}{i}"),
                    ModelKind::Logistic,
                    settings.clone(),
                )
                .await?,
            );
        }
        Ok(out)
    }

    /// Deletes the given models and every row of theirs (in every table with a `model_id`).
    pub async fn cleanup(&self, ids: &[Uuid]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        data::delete_models(&self.pool, ids).await?;
        self.created.lock().unwrap().retain(|id| !ids.contains(id));
        Ok(())
    }

    /// Deletes every model this run created and has not cleaned up yet.
    pub async fn cleanup_all(&self) -> anyhow::Result<()> {
        let ids: Vec<Uuid> = self.created.lock().unwrap().clone();
        self.cleanup(&ids).await
    }

    /// The olps executable for child processes.
    pub fn olps_bin(&self) -> anyhow::Result<PathBuf> {
        match &self.args.olps_bin {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe().context("cannot find the olps executable"),
        }
    }

    /// Prints a progress line on stderr (unless --quiet).
    pub fn say(&self, line: &str) {
        if !self.args.quiet {
            eprintln!("bench: {line}");
        }
    }

    /// Progress lines every 2 seconds while the returned guard lives: `done` of `total` (0:
    /// unknown).
    pub fn progress(&self, label: &str, total: u64, done: Arc<AtomicU64>) -> Progress {
        Progress::start(label, total, done, self.args.quiet)
    }
}

/// Periodic progress lines on stderr for a long phase; stops when dropped.
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(label: &str, total: u64, done: Arc<AtomicU64>, quiet: bool) -> Progress {
        if quiet {
            return Progress { task: None };
        }
        let label = label.to_string();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = done.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                let rate = report::thousands(n as f64 / secs.max(1e-9));
                if total == 0 {
                    eprintln!(
                        "bench: {label}: {} ({rate}/s, {secs:.0} s)",
                        report::thousands(n as f64)
                    );
                } else {
                    eprintln!(
                        "bench: {label}: {} / {} ({:.0}%, {rate}/s, {secs:.0} s)",
                        report::thousands(n as f64),
                        report::thousands(total as f64),
                        100.0 * n as f64 / total as f64,
                    );
                }
            }
        });
        Progress { task: Some(task) }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// `olps bench`: resolves the database (DATABASE_URL or the embedded default), applies pending
/// migrations, runs the scenario(s), prints the table and writes the requested files.
pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    let database = crate::runtime::prepare_database().await?;
    let report = run_on(&database.url, &database.description, args).await?;
    println!("{}", report.table());
    Ok(report)
}

/// Runs the scenario(s) on a migrated database, writes the `--json` and `--markdown` files, and
/// returns the report (printing only progress).
pub async fn run_on(url: &str, description: &str, args: BenchArgs) -> anyhow::Result<Report> {
    let ctx = Ctx::new(url, args.clone()).await?;
    let mut report = Report::new(&ctx, description).await;
    let scenarios: Vec<Scenario> = match args.scenario {
        Scenario::All => Scenario::EVERY.to_vec(),
        s => vec![s],
    };
    let mut result = Ok(());
    for scenario in scenarios {
        ctx.say(&format!("scenario {}", scenario.name()));
        let started = Instant::now();
        let outcome = match scenario {
            Scenario::Ingest => ingest::run(&ctx, &mut report).await,
            Scenario::Drain => drain::run(&ctx, &mut report).await,
            Scenario::Freshness => freshness::run(&ctx, &mut report).await,
            Scenario::Predict => predict::run(&ctx, &mut report).await,
            Scenario::Snapshot => snapshot::run(&ctx, &mut report).await,
            // With --python or --peers: the learning suite against River's pipelines.
            Scenario::Learn if args.python.is_some() || args.peers.is_some() => {
                learn_suite::run(&ctx, &mut report).await
            }
            Scenario::Learn => learn::run(&ctx, &mut report).await,
            Scenario::Soak => soak::run(&ctx, &mut report).await,
            Scenario::All => unreachable!(),
        };
        // Clean up after every scenario, also a failed one.
        let cleaned = ctx.cleanup_all().await;
        report.scenarios_run.push(scenario.name().to_string());
        ctx.say(&format!(
            "scenario {} done in {:.1} s",
            scenario.name(),
            started.elapsed().as_secs_f64()
        ));
        if let Err(e) = outcome.and(cleaned) {
            result = Err(e.context(format!("scenario {}", scenario.name())));
            break;
        }
    }
    report.finish();
    ctx.pool.close().await;
    result?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        ctx.say(&format!("wrote {}", path.display()));
    }
    if let Some(path) = &args.markdown {
        // The learning suite has a section of its own: a run without it keeps the file's, and
        // a run of the suite alone changes only that section.
        let old = std::fs::read_to_string(path).ok();
        let suite_only = report.learn_suite_markdown.is_some() && args.scenario == Scenario::Learn;
        let body = match (&old, suite_only) {
            (Some(old), true) => old.clone(),
            _ => report.markdown(),
        };
        let text = learn_suite::merge_markdown(
            &body,
            report.learn_suite_markdown.as_deref(),
            old.as_deref(),
        );
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        ctx.say(&format!("wrote {}", path.display()));
    }
    Ok(report)
}
