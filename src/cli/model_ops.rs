//! `olps model update`, `olps model settings-history` and `olps model replay`: the settings that
//! change ([`crate::settings`]) and replaying one model's feedback into another
//! ([`crate::replay`]).

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use sqlx::PgPool;

use super::Format;
use crate::auth::audit;
use crate::learner::LrSchedule;
use crate::models;
use crate::replay;
use crate::settings::{self, SettingsPatch};
use crate::timeline::history;

/// The learner settings `olps model create` and `olps model update` both take as flags.
#[derive(Debug, Args)]
pub struct LearnerFlags {
    #[arg(long, allow_negative_numbers = true)]
    pub learning_rate: Option<f64>,
    /// constant or invscaling (SGD only).
    #[arg(long)]
    pub lr_schedule: Option<LrSchedule>,
    #[arg(long, allow_negative_numbers = true)]
    pub power_t: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    pub l1: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    pub l2: Option<f64>,
    /// Clip each parameter's gradient to [-C, C]; 0 turns clipping off.
    #[arg(long, allow_negative_numbers = true)]
    pub clip_gradient: Option<f64>,
}

impl LearnerFlags {
    /// `--settings` (a JSON object, or none) with the flags given written over it.
    pub(super) fn over_settings(
        &self,
        settings: Option<&str>,
    ) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        let mut given = match settings {
            Some(json) => {
                match serde_json::from_str(json).context("--settings is not valid JSON")? {
                    serde_json::Value::Object(m) => m,
                    _ => anyhow::bail!("--settings: must be a JSON object"),
                }
            }
            None => serde_json::Map::new(),
        };
        let numbers = [
            ("learning_rate", self.learning_rate),
            ("power_t", self.power_t),
            ("l1", self.l1),
            ("l2", self.l2),
            ("clip_gradient", self.clip_gradient),
        ];
        for (name, value) in numbers {
            let Some(value) = value else { continue };
            // JSON has no NaN or infinity (serde_json would store null): refuse them here.
            if !value.is_finite() {
                anyhow::bail!("{name} must be a finite number, got {value}");
            }
            given.insert(name.to_string(), value.into());
        }
        if let Some(schedule) = self.lr_schedule {
            given.insert("lr_schedule".into(), schedule.as_str().into());
        }
        Ok(given)
    }
}

#[derive(Debug, Args)]
pub struct UpdateModelArgs {
    /// The model (UUID or name).
    pub model: String,
    #[command(flatten)]
    pub learner: LearnerFlags,
    /// Settings to change as JSON, e.g. '{"drift": {"detector": "page_hinkley"}, "guard":
    /// {"enabled": true}}' (drift and guard change field by field); the flags above override it.
    #[arg(long)]
    pub settings: Option<String>,
    /// Snapshot policy fields to change as JSON, e.g. '{"every_versions": 100, "keep": 5}'
    /// (null turns a part off).
    #[arg(long)]
    pub snapshot_policy: Option<String>,
}

impl UpdateModelArgs {
    /// The request, as `PATCH /v1/models/{m}` takes it.
    pub(super) fn patch(&self) -> anyhow::Result<SettingsPatch> {
        let mut body = serde_json::Map::new();
        let given = self.learner.over_settings(self.settings.as_deref())?;
        if !given.is_empty() {
            body.insert("settings".into(), given.into());
        }
        if let Some(json) = &self.snapshot_policy {
            let policy: serde_json::Value =
                serde_json::from_str(json).context("--snapshot-policy is not valid JSON")?;
            body.insert("snapshot_policy".into(), policy);
        }
        Ok(SettingsPatch::from_json(&body.into())?)
    }
}

pub async fn update(pool: &PgPool, args: &UpdateModelArgs) -> anyhow::Result<()> {
    let patch = args.patch()?;
    let model = models::find(pool, &args.model).await?;
    let mut tx = pool.begin().await?;
    let updated = settings::update(&mut tx, model.model_id, &patch, "cli").await?;
    tx.commit().await?;
    let Some(change) = &updated.change else {
        println!(
            "model '{}': nothing changed (the values given are already in force)",
            model.name
        );
        return Ok(());
    };
    audit::record_cli(
        pool,
        audit::Entry {
            action: "model.update".into(),
            model_id: Some(model.model_id),
            target: Some(model.name.clone()),
            details: serde_json::to_value(change).ok(),
            ..Default::default()
        },
    )
    .await;
    println!(
        "model '{}': changed {}; the worker learns with them from version {} on (its next batch)",
        model.name,
        change.changed_fields.join(", "),
        change.model_version
    );
    println!("{}", serde_json::to_string_pretty(&updated.model.settings)?);
    Ok(())
}

pub async fn settings_history(pool: &PgPool, model: &str, format: Format) -> anyhow::Result<()> {
    let model = models::find(pool, model).await?;
    let changes = settings::history(pool, model.model_id).await?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&changes)?),
        Format::Table => {
            if changes.is_empty() {
                println!(
                    "model '{}' has the settings it was created with (no changes)",
                    model.name
                );
            }
            println!(
                "{:>6}  {:>12}  {:<32}  {:<12}  changed",
                "change", "from_version", "changed_at", "by"
            );
            for c in changes {
                println!(
                    "{:>6}  {:>12}  {:<32}  {:<12}  {}",
                    c.change_id,
                    c.model_version,
                    c.changed_at.to_rfc3339(),
                    c.changed_by.as_deref().unwrap_or("?"),
                    c.changed_fields.join(", ")
                );
            }
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The model whose learned feedback is replayed (UUID or name).
    #[arg(long)]
    pub from: String,
    /// The model that learns it (UUID or name); same kind as --from.
    #[arg(long)]
    pub into: String,
    /// Only events whose timestamp is at or after this time (RFC 3339, e.g.
    /// 2026-11-25T17:00:00Z, or a date).
    #[arg(long)]
    pub since: Option<String>,
    /// Then wait until a worker has learned the replayed events, showing progress.
    #[arg(long)]
    pub wait: bool,
}

pub async fn replay(pool: &PgPool, args: &ReplayArgs) -> anyhow::Result<()> {
    let since = match &args.since {
        Some(value) => {
            Some(history::parse_time(value).map_err(|m| anyhow::anyhow!("--since: {m}"))?)
        }
        None => None,
    };
    let from = models::find(pool, &args.from).await?;
    let into = models::find(pool, &args.into).await?;
    eprintln!(
        "olps: replaying the feedback '{}' has learned (version {}) into '{}'{}",
        from.name,
        from.version,
        into.name,
        since.map_or(String::new(), |t| format!(", from {}", t.to_rfc3339()))
    );
    let mut tx = pool.begin().await?;
    let report = replay::replay(&mut tx, &from, &into, since).await?;
    tx.commit().await?;
    audit::record_cli(
        pool,
        audit::Entry {
            action: "model.replay".into(),
            model_id: Some(into.model_id),
            target: Some(into.name.clone()),
            details: Some(serde_json::json!({
                "from": from.model_id, "since": since, "report": report,
            })),
            ..Default::default()
        },
    )
    .await;
    println!(
        "queued {} events of '{}' for '{}' in the order '{}' learned them",
        report.queued, from.name, into.name, from.name
    );
    if report.already_there > 0 {
        println!(
            "{} events were already queued or learned by '{}' (an earlier replay): not stored again",
            report.already_there, into.name
        );
    }
    if report.without_features > 0 {
        println!(
            "left out {} events without features of their own (delayed labels that trained on \
             the predictions '{}' logged)",
            report.without_features, from.name
        );
    }
    if report.not_applied > 0 {
        println!(
            "left out {} events '{}' has not learned (pending or dead-lettered)",
            report.not_applied, from.name
        );
    }
    if args.wait && report.queued > 0 {
        wait_for(pool, &into, report.queued).await?;
    } else if report.queued > 0 {
        println!("a worker learns them (`olps worker`, or `olps up`); `--wait` shows its progress");
    }
    Ok(())
}

/// Shows how far the workers got with the target's queue, until nothing of it is pending.
async fn wait_for(pool: &PgPool, into: &models::Model, queued: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_pending = i64::MAX;
    loop {
        let (pending, version): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM feedback_queue
                     WHERE model_id = $1 AND status = 'pending'),
                    (SELECT version FROM models WHERE model_id = $1)",
        )
        .bind(into.model_id)
        .fetch_one(pool)
        .await?;
        let learned = (queued - pending).max(0);
        eprintln!(
            "olps: '{}' learned {learned}/{queued} replayed events (version {version}, {:.0} s)",
            into.name,
            started.elapsed().as_secs_f64()
        );
        if pending == 0 {
            println!("'{}' is at version {version}", into.name);
            return Ok(());
        }
        if pending < last_pending {
            last_pending = pending;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "olps: no progress for 10 s: is a worker running for '{}'? (`olps worker --model \
                 {}`); quarantined models wait for `olps model resume`",
                into.name, into.name
            );
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
