//! `olps model challenger add|remove|list|promote`: shadow models ([`crate::shadow`]).

use clap::{Args, Subcommand};
use sqlx::PgPool;

use super::Format;
use crate::auth::{audit, Principal};
use crate::models;
use crate::shadow::{compare, links, promote};

#[derive(Debug, Args)]
pub struct PairArgs {
    /// The champion (UUID or name).
    #[arg(long)]
    pub model: String,
    /// The challenger (UUID or name): a model of the same kind.
    #[arg(long)]
    pub challenger: String,
}

#[derive(Debug, Subcommand)]
pub enum ChallengerCommand {
    /// Make --challenger a challenger of --model: from --model's next batch on, it learns a copy
    /// of every event --model learns, in the same order.
    Add(PairArgs),
    /// End the link (the events already copied stay with the challenger).
    Remove(PairArgs),
    /// The model's challengers, each compared with it over the same events.
    List {
        #[arg(long)]
        model: String,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// --model takes the challenger's parameters, state and settings as one new version.
    Promote(PairArgs),
}

pub async fn run(pool: &PgPool, command: ChallengerCommand) -> anyhow::Result<()> {
    match command {
        ChallengerCommand::List { model, format } => list(pool, &model, format).await,
        ChallengerCommand::Add(pair) => {
            let (champion, challenger) = pair.models(pool).await?;
            let mut tx = pool.begin().await?;
            let link = links::add(&mut tx, &champion, &challenger, "cli").await?;
            tx.commit().await?;
            record(
                pool,
                "challenger.add",
                &champion,
                serde_json::to_value(&link)?,
            )
            .await;
            println!(
                "'{}' is a challenger of '{}' from its version {} on: it learns every event '{}' \
                 learns after it, in the same order",
                challenger.name, champion.name, link.since_version, champion.name
            );
            Ok(())
        }
        ChallengerCommand::Remove(pair) => {
            let (champion, challenger) = pair.models(pool).await?;
            let mut tx = pool.begin().await?;
            let link = links::remove(&mut tx, &champion, &challenger).await?;
            tx.commit().await?;
            record(
                pool,
                "challenger.remove",
                &champion,
                serde_json::to_value(&link)?,
            )
            .await;
            println!(
                "'{}' is no longer a challenger of '{}' (the events copied so far stay with it)",
                challenger.name, champion.name
            );
            Ok(())
        }
        ChallengerCommand::Promote(pair) => {
            let (champion, challenger) = pair.models(pool).await?;
            let mut tx = pool.begin().await?;
            let by = Principal::cli().describe();
            let done = promote::promote(&mut tx, &champion, &challenger, &by).await?;
            tx.commit().await?;
            record(
                pool,
                "challenger.promote",
                &champion,
                serde_json::to_value(&done)?,
            )
            .await;
            println!(
                "promoted '{}' (version {}) into '{}': version {} ({} parameters changed{})",
                done.challenger,
                done.challenger_version,
                champion.name,
                done.version,
                done.parameters_changed,
                if done.settings_changed.is_empty() {
                    String::new()
                } else {
                    format!("; settings changed: {}", done.settings_changed.join(", "))
                }
            );
            println!(
                "undo with `olps rollback --model {} --to-version {}`",
                champion.name, done.previous_version
            );
            Ok(())
        }
    }
}

impl PairArgs {
    async fn models(&self, pool: &PgPool) -> anyhow::Result<(models::Model, models::Model)> {
        Ok((
            models::find(pool, &self.model).await?,
            models::find(pool, &self.challenger).await?,
        ))
    }
}

async fn record(pool: &PgPool, action: &str, champion: &models::Model, details: serde_json::Value) {
    audit::record_cli(
        pool,
        audit::Entry {
            action: action.into(),
            model_id: Some(champion.model_id),
            target: Some(champion.name.clone()),
            details: Some(details),
            ..Default::default()
        },
    )
    .await;
}

async fn list(pool: &PgPool, model: &str, format: Format) -> anyhow::Result<()> {
    let model = models::find(pool, model).await?;
    let compared = compare::compare(pool, model.model_id, model.kind).await?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&compared)?),
        Format::Table => {
            if compared.is_empty() {
                println!("model '{}' has no challengers", model.name);
                return Ok(());
            }
            let show = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |x| format!("{x:.6}"));
            println!(
                "{:<24}  {:>7}  {:>8}  {:>10}  {:>12}  {:>12}  {:>9}  {:>9}",
                "challenger",
                "since",
                "events",
                "not_yet",
                "loss(champ)",
                "loss(chall)",
                "acc(champ)",
                "acc(chall)"
            );
            for c in compared {
                println!(
                    "{:<24}  {:>7}  {:>8}  {:>10}  {:>12}  {:>12}  {:>9}  {:>9}",
                    c.challenger,
                    c.since_version,
                    c.events,
                    c.not_learned_by_challenger,
                    show(c.champion_mean_loss),
                    show(c.challenger_mean_loss),
                    show(c.champion_accuracy),
                    show(c.challenger_accuracy)
                );
            }
        }
    }
    Ok(())
}
