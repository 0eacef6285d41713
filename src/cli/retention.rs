//! `olps retention show|set|run`: a model's retention policy, and applying it now.

use clap::{Args, Subcommand, ValueEnum};

use crate::auth::audit;
use crate::models;
use crate::retention::{self, Limits, ModelReport, Part, StoredPolicy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RetentionFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Show a model's retention policy (its own, or the defaults).
    Show {
        /// The model's UUID or name.
        #[arg(long)]
        model: String,
        #[arg(long, value_enum, default_value = "table")]
        format: RetentionFormat,
    },
    /// Change a model's retention policy: only the parts given change. Each takes a duration
    /// (90d, 12h, 30m, 2w, 1d12h) or `forever`.
    Set(SetArgs),
    /// Apply the retention policies now (every model, or the ones given), until done; with
    /// --dry-run, count what would be deleted and change nothing.
    Run {
        /// Only these models (UUID or name; repeat the flag).
        #[arg(long = "model")]
        models: Vec<String>,
        #[arg(long)]
        dry_run: bool,
        /// Rows per DELETE (each its own short transaction).
        #[arg(long, default_value_t = Limits::UNBOUNDED.batch_rows,
              value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
        batch_size: i64,
        #[arg(long, value_enum, default_value = "table")]
        format: RetentionFormat,
    },
}

/// A horizon given on the command line (None: forever).
#[derive(Debug, Clone, Copy)]
pub struct KeepArg(pub Option<i64>);

fn keep_arg(text: &str) -> Result<KeepArg, String> {
    retention::parse_keep(text).map(KeepArg)
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("change").required(true).multiple(true)
    .args(["prediction_log", "feedback", "dead_letters", "versions", "drift_events",
           "auto_snapshots", "manual_snapshots", "defaults"])))]
pub struct SetArgs {
    /// The model's UUID or name.
    #[arg(long)]
    pub model: String,
    /// prediction_log rows (features logged for delayed labels), by when they were logged.
    #[arg(long, value_parser = keep_arg)]
    pub prediction_log: Option<KeepArg>,
    /// Processed feedback_events, by when the version that applied them was made.
    #[arg(long, value_parser = keep_arg)]
    pub feedback: Option<KeepArg>,
    /// Dead letters (and their events), by when they were set aside.
    #[arg(long, value_parser = keep_arg)]
    pub dead_letters: Option<KeepArg>,
    /// Versions and their history: older ones stop being reachable for rollback and
    /// point-in-time reads.
    #[arg(long, value_parser = keep_arg)]
    pub versions: Option<KeepArg>,
    /// drift_events, by when they were detected.
    #[arg(long, value_parser = keep_arg)]
    pub drift_events: Option<KeepArg>,
    /// Snapshots olps took itself (the automatic policy's, and before drift adaptations).
    #[arg(long, value_parser = keep_arg)]
    pub auto_snapshots: Option<KeepArg>,
    /// Snapshots people and scripts took (default: forever).
    #[arg(long, value_parser = keep_arg)]
    pub manual_snapshots: Option<KeepArg>,
    /// Go back to the defaults (with other flags: the defaults, then those).
    #[arg(long)]
    pub defaults: bool,
}

impl SetArgs {
    fn changes(&self) -> Vec<(Part, Option<i64>)> {
        [
            (Part::PredictionLog, self.prediction_log),
            (Part::Feedback, self.feedback),
            (Part::DeadLetters, self.dead_letters),
            (Part::Versions, self.versions),
            (Part::DriftEvents, self.drift_events),
            (Part::AutoSnapshots, self.auto_snapshots),
            (Part::ManualSnapshots, self.manual_snapshots),
        ]
        .into_iter()
        .filter_map(|(part, keep)| keep.map(|k| (part, k.0)))
        .collect()
    }
}

fn print_policy(stored: &StoredPolicy, name: &str, format: RetentionFormat) -> anyhow::Result<()> {
    match format {
        RetentionFormat::Json => println!("{}", serde_json::to_string_pretty(stored)?),
        RetentionFormat::Table => {
            println!(
                "retention policy of '{name}' ({}{})",
                stored.source,
                stored
                    .updated_at
                    .map(|t| format!(", set {}", t.to_rfc3339()))
                    .unwrap_or_default()
            );
            for part in Part::ALL {
                let keep = stored.policy.get(part);
                println!(
                    "  {:<18} {:<10}{}",
                    part.name(),
                    retention::format_keep(keep),
                    if keep == part.default_keep() {
                        "  (default)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(())
}

fn print_report(r: &ModelReport) {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    println!(
        "model '{}' ({}): policy {}, at {}",
        r.model,
        r.model_id,
        r.policy_source,
        r.at.to_rfc3339()
    );
    for (table, n) in &r.deleted {
        println!("  {:<20} {verb} {n}", table);
    }
    for note in &r.notes {
        println!("  note: {note}");
    }
}

pub async fn run(command: RetentionCommand) -> anyhow::Result<()> {
    let pool = super::open(2).await?.1;
    match command {
        RetentionCommand::Show { model, format } => {
            let model = models::find(&pool, &model).await?;
            let stored = retention::policy(&mut *pool.acquire().await?, model.model_id).await?;
            print_policy(&stored, &model.name, format)?;
        }
        RetentionCommand::Set(args) => {
            let model = models::find(&pool, &args.model).await?;
            let mut conn = pool.acquire().await?;
            let mut policy = if args.defaults {
                retention::RetentionPolicy::default()
            } else {
                retention::policy(&mut conn, model.model_id).await?.policy
            };
            let changes = args.changes();
            for (part, keep) in &changes {
                policy.set(*part, *keep);
            }
            let stored = if args.defaults && changes.is_empty() {
                retention::reset_policy(&mut conn, model.model_id).await?
            } else {
                retention::set_policy(&mut conn, model.model_id, &policy).await?
            };
            audit::record_cli(
                &mut *conn,
                audit::Entry {
                    action: "retention-policy.set".into(),
                    model_id: Some(model.model_id),
                    target: Some(model.name.clone()),
                    details: Some(serde_json::to_value(&stored)?),
                    ..Default::default()
                },
            )
            .await;
            print_policy(&stored, &model.name, RetentionFormat::Table)?;
        }
        RetentionCommand::Run {
            models: keys,
            dry_run,
            batch_size,
            format,
        } => {
            let mut ids = Vec::with_capacity(keys.len());
            for key in &keys {
                ids.push(models::resolve_id(&pool, key).await?);
            }
            let limits = Limits {
                batch_rows: batch_size,
                max_batches: None,
            };
            let reports = retention::run_now(&pool, &ids, limits, dry_run).await?;
            match format {
                RetentionFormat::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
                RetentionFormat::Table => reports.iter().for_each(print_report),
            }
            if !dry_run {
                let total: i64 = reports
                    .iter()
                    .flat_map(|r| r.deleted.iter().map(|(_, n)| *n))
                    .sum();
                eprintln!(
                    "olps: retention deleted {total} rows over {} models",
                    reports.len()
                );
            }
        }
    }
    Ok(())
}
