//! `learn`: the learner alone, no database: prequential loss (and accuracy for the logistic
//! model) and examples per second over a CSV stream, for every optimizer. Baselines: the
//! prequential loss of the running-mean predictor, and the accuracy of the running majority class.
//!
//! The CSV has feature columns and the label last. Linear models learn the label as is; logistic
//! models learn `label > 0` (for seed_stream.csv: the sign of the sum, which flips at row 1000).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};

use super::{Ctx, Figure, Report};
use crate::learner::{loss, Example, Learner, LearnerConfig, ModelKind, OptimizerKind};

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let (file, rows) = match ctx.args.data.as_deref() {
        Some(path) => (
            path.file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default(),
            read_csv(path)?,
        ),
        None => (
            "seed_stream.csv".to_string(),
            parse_csv(SEED_STREAM_CSV, "seed_stream.csv")?,
        ),
    };
    if rows.is_empty() {
        bail!("{file} has no rows");
    }
    // Enough passes for a stable rate: the stream repeated with a fresh learner each pass.
    let target = ctx.args.events.unwrap_or(200_000).max(rows.len() as u64);
    let passes = (target as usize).div_ceil(rows.len()).max(1);
    for kind in [ModelKind::Linear, ModelKind::Logistic] {
        let examples: Vec<Example> = rows
            .iter()
            .map(|(features, y)| {
                let label = match kind {
                    ModelKind::Linear => *y,
                    ModelKind::Logistic => f64::from(u8::from(*y > 0.0)),
                };
                Example::new(features.clone(), label, 1.0)
            })
            .collect::<Result<_, _>>()
            .context("invalid example in the CSV")?;
        let (base_loss, base_acc) = baselines(kind, &examples);
        for &optimizer in OptimizerKind::ALL {
            // Each optimizer at its own default rate, as `olps model create --optimizer` gives.
            let config = LearnerConfig::from_input(&serde_json::json!({ "optimizer": optimizer }))
                .map_err(|e| anyhow::anyhow!("settings for {optimizer}: {e}"))?;
            config
                .validate()
                .map_err(|e| anyhow::anyhow!("settings for {optimizer}: {e}"))?;
            // One pass for the quality figures, then timed passes.
            let (mean_loss, accuracy) = prequential(kind, &config, &examples);
            let started = Instant::now();
            let mut sink = 0.0;
            for _ in 0..passes {
                let mut learner = Learner::new(kind, config.clone());
                for e in &examples {
                    sink += learner.learn(e).loss;
                }
            }
            let secs = started.elapsed().as_secs_f64();
            std::hint::black_box(sink);
            let rate = (passes * examples.len()) as f64 / secs;
            let case = format!("{kind}, {optimizer}, {file}");
            report.add(
                Figure::new(
                    "learn",
                    &format!("{case}: prequential {}", loss_name(kind)),
                    "",
                    mean_loss,
                )
                .lower_is_better()
                .baseline("running-mean predictor", base_loss)
                .detail("examples", examples.len()),
            );
            if let Some(acc) = accuracy {
                report.add(
                    Figure::new("learn", &format!("{case}: prequential accuracy"), "", acc)
                        .baseline("running majority class", base_acc.unwrap_or(f64::NAN)),
                );
            }
            report.add(
                Figure::new("learn", &format!("{case}: speed"), "examples/s", rate)
                    .detail("examples", (passes * examples.len()) as u64)
                    .detail("seconds", secs),
            );
            ctx.say(&format!(
                "learn {case}: loss {mean_loss:.4}, {rate:.0} examples/s"
            ));
        }
    }
    Ok(())
}

fn loss_name(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Linear => "squared error",
        ModelKind::Logistic => "log loss",
    }
}

/// Mean prequential loss and, for logistic models, accuracy (prediction >= 0.5 vs label >= 0.5).
pub fn prequential(
    kind: ModelKind,
    config: &LearnerConfig,
    examples: &[Example],
) -> (f64, Option<f64>) {
    let mut learner = Learner::new(kind, config.clone());
    let (mut loss_sum, mut correct) = (0.0, 0usize);
    for e in examples {
        let step = learner.learn(e);
        loss_sum += step.loss;
        if (step.prediction >= 0.5) == (e.label >= 0.5) {
            correct += 1;
        }
    }
    let n = examples.len().max(1) as f64;
    (
        loss_sum / n,
        (kind == ModelKind::Logistic).then_some(correct as f64 / n),
    )
}

/// The running-mean predictor's prequential loss, and the running majority class's accuracy.
fn baselines(kind: ModelKind, examples: &[Example]) -> (f64, Option<f64>) {
    let (mut sum, mut count) = (0.0, 0.0);
    let (mut loss_sum, mut correct) = (0.0, 0usize);
    for e in examples {
        let mean = if count > 0.0 { sum / count } else { 0.5 };
        let prediction = match kind {
            ModelKind::Linear => {
                if count > 0.0 {
                    mean
                } else {
                    0.0
                }
            }
            ModelKind::Logistic => mean,
        };
        loss_sum += loss(kind, prediction, e.label);
        if (prediction >= 0.5) == (e.label >= 0.5) {
            correct += 1;
        }
        sum += e.label;
        count += 1.0;
    }
    let n = examples.len().max(1) as f64;
    (
        loss_sum / n,
        (kind == ModelKind::Logistic).then_some(correct as f64 / n),
    )
}

/// One CSV row: the features by column name, and the label.
pub type Row = (Vec<(String, f64)>, f64);

/// The design document's drift example (`tests/data/seed_stream.csv`), built in so the
/// benchmark needs no file beside the binary.
pub const SEED_STREAM_CSV: &str = include_str!("../../tests/data/seed_stream.csv");

/// Rows of a CSV with a header: every column but the last is a feature (named by the header),
/// the last is the label.
pub fn read_csv(path: &Path) -> anyhow::Result<Vec<Row>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_csv(&text, &path.display().to_string())
}

/// [`read_csv`] of a CSV's text; `origin` names it in errors. A column whose header is
/// `cat:NAME` holds a category: the value `v` becomes the feature `NAME=v` with value 1 (one-hot,
/// sparse). An empty cell is an absent feature (the label must be there).
pub fn parse_csv(text: &str, origin: &str) -> anyhow::Result<Vec<Row>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .context("empty CSV")?
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    if header.len() < 2 {
        bail!("{origin}: need feature columns and a label");
    }
    let columns = header.len() - 1;
    lines
        .enumerate()
        .map(|(i, line)| {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if cells.len() != header.len() {
                bail!("{origin} line {}: {} columns", i + 2, cells.len());
            }
            let number = |cell: &str, column: &str| {
                cell.parse::<f64>().with_context(|| {
                    format!(
                        "{origin} line {}: {column} is not a number: {cell:?}",
                        i + 2
                    )
                })
            };
            let mut features = Vec::with_capacity(columns);
            for (name, cell) in header[..columns].iter().zip(&cells) {
                if cell.is_empty() {
                    continue;
                }
                match name.strip_prefix("cat:") {
                    Some(category) => features.push((format!("{category}={cell}"), 1.0)),
                    None => features.push((name.clone(), number(cell, name)?)),
                }
            }
            let label = number(cells[columns], &header[columns])?;
            Ok((features, label))
        })
        .collect()
}
