//! `olps deadletters list|requeue`: the feedback the worker set aside, with its reasons, and
//! putting it back in the queue once the cause is fixed.

use clap::{Args, Subcommand, ValueEnum};
use uuid::Uuid;

use crate::models;
use crate::worker::queue::{self, DeadLetterFilter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum DeadlettersCommand {
    /// List dead-lettered feedback, newest first: the queue row, the event and the reason.
    List {
        /// Only this model's (UUID or name).
        #[arg(long)]
        model: Option<String>,
        /// Only rows whose reason matches this text anywhere (case-insensitive; `%` and `_` are
        /// LIKE wildcards).
        #[arg(long)]
        reason_like: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Put dead-lettered feedback back in the queue (after fixing what made it fail, e.g. with
    /// `UPDATE feedback_events SET metadata = ... WHERE ...`). Each row keeps its priority and
    /// place in queue order, and is learned once, or set aside again with its new reason.
    Requeue(RequeueArgs),
}

#[derive(Debug, Args)]
#[group(skip)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["model", "all"])))]
pub struct RequeueArgs {
    /// The model (UUID or name) whose dead letters to requeue.
    #[arg(long)]
    pub model: Option<String>,
    /// Only these rows: a queue row id or an event id (feedback_id); repeat the flag.
    #[arg(long = "id", requires = "model", conflicts_with = "all")]
    pub ids: Vec<Uuid>,
    /// Every dead letter of every model.
    #[arg(long)]
    pub all: bool,
    /// Only rows whose reason matches this text anywhere (as for `list`).
    #[arg(long)]
    pub reason_like: Option<String>,
}

pub async fn run(command: DeadlettersCommand) -> anyhow::Result<()> {
    let pool = super::open(2).await?.1;
    match command {
        DeadlettersCommand::List {
            model,
            reason_like,
            limit,
            format,
        } => {
            let model_id = match &model {
                Some(m) => Some(models::resolve_id(&pool, m).await?),
                None => None,
            };
            let filter = DeadLetterFilter {
                model_id,
                ids: Vec::new(),
                reason_like,
            };
            let rows = queue::dead_letters(&pool, &filter, limit).await?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
                ListFormat::Table => {
                    println!(
                        "{:<32}  {:<24}  {:<36}  {:<36}  {:<20}  reason",
                        "dead_at", "model", "queue_id", "feedback_id", "entity_id"
                    );
                    for r in &rows {
                        println!(
                            "{:<32}  {:<24}  {:<36}  {:<36}  {:<20}  {}",
                            r.dead_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                            r.model_name
                                .clone()
                                .unwrap_or_else(|| format!("(unknown {})", r.model_id)),
                            r.queue_id,
                            r.feedback_id,
                            r.entity_id,
                            r.dead_reason.as_deref().unwrap_or("")
                        );
                    }
                    eprintln!("olps: {} dead-lettered rows", rows.len());
                }
            }
        }
        DeadlettersCommand::Requeue(args) => {
            let model_id = match &args.model {
                Some(m) => Some(models::resolve_id(&pool, m).await?),
                None => None,
            };
            let filter = DeadLetterFilter {
                model_id,
                ids: args.ids.clone(),
                reason_like: args.reason_like.clone(),
            };
            let mut tx = pool.begin().await?;
            let requeued = queue::requeue(&mut *tx, &filter).await?;
            if !requeued.is_empty() {
                queue::notify_workers(&mut *tx).await?;
            }
            tx.commit().await?;
            for r in &requeued {
                println!("requeued {} (feedback {})", r.queue_id, r.feedback_id);
            }
            let missing: Vec<&Uuid> = args
                .ids
                .iter()
                .filter(|id| {
                    !requeued
                        .iter()
                        .any(|r| r.queue_id == **id || r.feedback_id == **id)
                })
                .collect();
            for id in &missing {
                eprintln!("olps: {id} is not a dead letter of this model (nothing to requeue)");
            }
            println!(
                "{} dead-lettered rows back in the queue; a worker learns them in queue order",
                requeued.len()
            );
            if !missing.is_empty() {
                anyhow::bail!("{} of the given ids were not requeued", missing.len());
            }
        }
    }
    Ok(())
}
