//! `olps snapshot …`, `olps rollback`, `olps params` and `olps history [prune]`.

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::{audit, Principal};
use crate::models;
use crate::timeline::history::{self, HistoryFilter, UpdateRow};
use crate::timeline::reconstruct::{self, At, ParametersAt};
use crate::timeline::rollback::{self, RollbackTarget};
use crate::timeline::snapshots::{self, Snapshot, SnapshotPolicy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a model's current version (parameters and optimizer state); prints its UUID as
    /// the last line.
    Create {
        /// The model's UUID or name.
        #[arg(long)]
        model: String,
        /// A name for the snapshot, unique per model (e.g. before-campaign).
        #[arg(long)]
        label: Option<String>,
    },
    /// List a model's snapshots.
    List {
        #[arg(long)]
        model: String,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
    /// Delete a snapshot (by UUID or label).
    Delete {
        #[arg(long)]
        model: String,
        /// The snapshot's UUID or label.
        #[arg(long)]
        snapshot: String,
    },
    /// Show, or set, the automatic snapshot policy of a model.
    Policy {
        #[arg(long)]
        model: String,
        /// Snapshot after every N versions (counted from the newest snapshot).
        #[arg(long)]
        every_versions: Option<i32>,
        /// Snapshot when T minutes have passed since the newest snapshot.
        #[arg(long)]
        every_minutes: Option<i32>,
        /// Keep only the newest K automatic snapshots.
        #[arg(long)]
        keep: Option<i32>,
        /// Turn automatic snapshots off.
        #[arg(long, conflicts_with_all = ["every_versions", "every_minutes", "keep"])]
        off: bool,
    },
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The model's UUID or name.
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub target: RollbackTargetArgs,
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RollbackTargetArgs {
    /// The version to return to (earlier, or later than a previous rollback's target).
    #[arg(long, allow_negative_numbers = true)]
    pub to_version: Option<i64>,
    /// A snapshot's UUID or label.
    #[arg(long)]
    pub snapshot: Option<String>,
}

#[derive(Debug, Args)]
pub struct ParamsArgs {
    /// The model's UUID or name.
    #[arg(long)]
    pub model: String,
    /// The version to read (default: the current one).
    #[arg(long, allow_negative_numbers = true, conflicts_with = "at")]
    pub version: Option<i64>,
    /// The version the model was at at this time (RFC 3339, or "2026-11-25 17:00:00" in UTC).
    #[arg(long)]
    pub at: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct HistoryArgs {
    #[command(subcommand)]
    pub command: Option<HistoryCommand>,
    /// The model's UUID or name.
    #[arg(long, required = true)]
    pub model: Option<String>,
    /// Only this parameter (a feature name, or __intercept__).
    #[arg(long)]
    pub parameter: Option<String>,
    /// Only rows at or after this time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only rows before this time.
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many rows, newest first.
    #[arg(long, allow_negative_numbers = true, default_value_t = history::DEFAULT_HISTORY_LIMIT)]
    pub limit: i64,
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// Delete history older than a time, as far as a snapshot covers what remains reachable.
    Prune {
        #[arg(long)]
        model: String,
        /// Delete rows older than this (RFC 3339, or "2026-11-25 17:00:00" in UTC).
        #[arg(long)]
        before: String,
        /// Say what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
}

async fn open() -> anyhow::Result<PgPool> {
    Ok(super::open(2).await?.1)
}

async fn resolve(pool: &PgPool, model: &str) -> anyhow::Result<Uuid> {
    Ok(models::resolve_id(pool, model).await?)
}

fn time_arg(name: &str, value: &str) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    history::parse_time(value).map_err(|m| anyhow::anyhow!("--{name}: {m}"))
}

pub async fn run_snapshot(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Create { model, label } => {
            if let Some(label) = &label {
                snapshots::validate_label(label)?;
            }
            let pool = open().await?;
            let model_id = resolve(&pool, &model).await?;
            let mut tx = pool.begin().await?;
            let s = snapshots::create(&mut tx, model_id, label.as_deref()).await?;
            tx.commit().await?;
            audit::record_cli(
                &pool,
                audit::Entry {
                    action: "snapshot.create".into(),
                    model_id: Some(model_id),
                    target: Some(model.clone()),
                    details: serde_json::to_value(&s).ok(),
                    ..Default::default()
                },
            )
            .await;
            println!(
                "snapshot of model {} at version {}{}: {} parameters",
                s.model_id,
                s.model_version,
                s.label
                    .as_deref()
                    .map(|l| format!(" labelled '{l}'"))
                    .unwrap_or_default(),
                s.parameter_count
            );
            println!("{}", s.snapshot_id);
        }
        SnapshotCommand::List { model, format } => {
            let pool = open().await?;
            let model_id = resolve(&pool, &model).await?;
            let list = snapshots::list(&mut *pool.acquire().await?, model_id).await?;
            print_snapshots(&list, format)?;
        }
        SnapshotCommand::Delete { model, snapshot } => {
            let pool = open().await?;
            let model_id = resolve(&pool, &model).await?;
            let mut tx = pool.begin().await?;
            let s = snapshots::delete(&mut tx, model_id, &snapshot).await?;
            tx.commit().await?;
            audit::record_cli(
                &pool,
                audit::Entry {
                    action: "snapshot.delete".into(),
                    model_id: Some(model_id),
                    target: Some(snapshot.clone()),
                    details: serde_json::to_value(&s).ok(),
                    ..Default::default()
                },
            )
            .await;
            println!(
                "deleted snapshot {} (version {}, {} parameters)",
                s.snapshot_id, s.model_version, s.parameter_count
            );
        }
        SnapshotCommand::Policy {
            model,
            every_versions,
            every_minutes,
            keep,
            off,
        } => {
            let pool = open().await?;
            let model_id = resolve(&pool, &model).await?;
            let current = snapshots::policy(&pool, model_id).await?;
            // Recorded in the model's settings history (`olps model settings-history`).
            let set = |policy: SnapshotPolicy| {
                let pool = pool.clone();
                async move {
                    let mut tx = pool.begin().await?;
                    let set =
                        crate::settings::set_snapshot_policy(&mut tx, model_id, &policy, "cli")
                            .await?;
                    tx.commit().await?;
                    anyhow::Ok(set)
                }
            };
            let policy = if off {
                set(SnapshotPolicy::default()).await?
            } else if every_versions.is_some() || every_minutes.is_some() || keep.is_some() {
                // The flags given change their part of the policy; the rest stays.
                let merged = SnapshotPolicy {
                    every_versions: every_versions.or(current.every_versions),
                    every_minutes: every_minutes.or(current.every_minutes),
                    keep: keep.or(current.keep),
                };
                set(merged).await?
            } else {
                current
            };
            if off || every_versions.is_some() || every_minutes.is_some() || keep.is_some() {
                audit::record_cli(
                    &pool,
                    audit::Entry {
                        action: "snapshot-policy.set".into(),
                        model_id: Some(model_id),
                        target: Some(model.clone()),
                        details: serde_json::to_value(policy).ok(),
                        ..Default::default()
                    },
                )
                .await;
            }
            let show = |v: Option<i32>| v.map_or("off".to_string(), |v| v.to_string());
            println!(
                "automatic snapshots of {model_id}: every_versions {}, every_minutes {}, keep {}",
                show(policy.every_versions),
                show(policy.every_minutes),
                policy.keep.map_or("all".to_string(), |v| v.to_string())
            );
        }
    }
    Ok(())
}

fn print_snapshots(list: &[Snapshot], format: OutputFormat) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(list)?),
        OutputFormat::Csv | OutputFormat::Table => {
            let header = [
                "snapshot_id",
                "model_version",
                "label",
                "kind",
                "parameter_count",
                "examples_seen",
                "created_at",
            ];
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    vec![
                        s.snapshot_id.to_string(),
                        s.model_version.to_string(),
                        s.label.clone().unwrap_or_default(),
                        s.kind.to_string(),
                        s.parameter_count.to_string(),
                        s.examples_seen.to_string(),
                        s.created_at.to_rfc3339(),
                    ]
                })
                .collect();
            print_rows(&header, &rows, format);
        }
    }
    Ok(())
}

pub async fn run_rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let target = match (args.target.to_version, args.target.snapshot) {
        (Some(v), _) => RollbackTarget::Version(v),
        (None, Some(s)) => RollbackTarget::Snapshot(s),
        (None, None) => anyhow::bail!("give --to-version V or --snapshot S"),
    };
    let pool = open().await?;
    let model_id = resolve(&pool, &args.model).await?;
    let mut tx = pool.begin().await?;
    let source = Principal::cli().rollback_source();
    let outcome = rollback::rollback_by(&mut tx, model_id, &target, &source).await?;
    tx.commit().await?;
    audit::record_cli(
        &pool,
        audit::Entry {
            action: "rollback".into(),
            model_id: Some(model_id),
            target: Some(args.model.clone()),
            details: serde_json::to_value(&outcome).ok(),
            ..Default::default()
        },
    )
    .await;
    if args.format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
        return Ok(());
    }
    println!(
        "rolled model {} back to version {}{}: new version {} ({} parameters changed, {} of them \
         zeroed because they did not exist then; examples_seen {})",
        outcome.model_id,
        outcome.rolled_back_to,
        outcome
            .snapshot_id
            .map(|s| format!(" (snapshot {s})"))
            .unwrap_or_default(),
        outcome.version,
        outcome.parameters_changed,
        outcome.parameters_zeroed,
        outcome.examples_seen
    );
    println!("{}", outcome.version);
    Ok(())
}

pub async fn run_params(args: ParamsArgs) -> anyhow::Result<()> {
    let at = match (args.version, &args.at) {
        (Some(v), _) => At::Version(v),
        (None, Some(t)) => At::Time(time_arg("at", t)?),
        (None, None) => At::Current,
    };
    let pool = open().await?;
    let model_id = resolve(&pool, &args.model).await?;
    let mut tx = pool.begin().await?;
    let read = reconstruct::parameters_at(&mut tx, model_id, at).await?;
    tx.commit().await?;
    print_parameters(&read, args.format)
}

fn print_parameters(read: &ParametersAt, format: OutputFormat) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(read)?);
        return Ok(());
    }
    if format == OutputFormat::Table {
        println!(
            "model {} at version {}: {} parameters",
            read.model_id,
            read.version,
            read.parameters.len()
        );
    }
    let header = [
        "parameter_id",
        "value",
        "opt_m",
        "opt_v",
        "update_count",
        "feature_mean",
        "feature_m2",
        "last_changed_version",
    ];
    let rows: Vec<Vec<String>> = read
        .parameters
        .iter()
        .map(|p| {
            vec![
                p.parameter_id.clone(),
                p.value.to_string(),
                p.opt_m.to_string(),
                p.opt_v.to_string(),
                p.update_count.to_string(),
                p.feature_mean.to_string(),
                p.feature_m2.to_string(),
                p.last_changed_version.to_string(),
            ]
        })
        .collect();
    print_rows(&header, &rows, format);
    Ok(())
}

pub async fn run_history(args: HistoryArgs) -> anyhow::Result<()> {
    if let Some(HistoryCommand::Prune {
        model,
        before,
        dry_run,
        format,
    }) = args.command
    {
        let before = time_arg("before", &before)?;
        let pool = open().await?;
        let model_id = resolve(&pool, &model).await?;
        let mut tx = pool.begin().await?;
        let report = history::prune(&mut tx, model_id, before, dry_run).await?;
        tx.commit().await?;
        if format == OutputFormat::Json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "{} {} history rows of model {} (history now starts after version {}; current \
                 version {})",
                if dry_run { "would delete" } else { "deleted" },
                report.deleted_rows,
                report.model_id,
                report.pruned_through,
                report.current_version
            );
            for note in &report.notes {
                println!("- {note}");
            }
        }
        return Ok(());
    }
    let model = args.model.context("--model is required")?;
    let filter = HistoryFilter {
        parameter: args.parameter,
        since: args
            .since
            .as_deref()
            .map(|t| time_arg("since", t))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|t| time_arg("until", t))
            .transpose()?,
        limit: Some(args.limit),
    };
    filter.validate()?;
    let pool = open().await?;
    let model_id = resolve(&pool, &model).await?;
    let rows = history::updates(&mut *pool.acquire().await?, model_id, &filter).await?;
    print_updates(&rows, args.format)
}

fn print_updates(rows: &[UpdateRow], format: OutputFormat) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    let header = [
        "model_version",
        "parameter_id",
        "old_value",
        "new_value",
        "update_type",
        "learning_rate",
        "source",
        "timestamp",
    ];
    let opt = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.model_version.to_string(),
                r.parameter_id.clone(),
                opt(r.old_value),
                r.new_value.to_string(),
                r.update_type.to_string(),
                opt(r.learning_rate),
                r.source.clone().unwrap_or_default(),
                r.timestamp.to_rfc3339(),
            ]
        })
        .collect();
    print_rows(&header, &table, format);
    Ok(())
}

/// Prints rows as an aligned table or as CSV (RFC 4180 quoting).
fn print_rows(header: &[&str], rows: &[Vec<String>], format: OutputFormat) {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if format == OutputFormat::Csv {
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            cells.map(csv_field).collect::<Vec<_>>().join(",")
        };
        let _ = writeln!(out, "{}", line(&mut header.iter().copied()));
        for row in rows {
            let _ = writeln!(out, "{}", line(&mut row.iter().map(String::as_str)));
        }
        return;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let _ = writeln!(out, "{}", line(&mut header.iter().copied()));
    for row in rows {
        let _ = writeln!(out, "{}", line(&mut row.iter().map(String::as_str)));
    }
}

fn csv_field(cell: &str) -> String {
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_string()
    }
}
