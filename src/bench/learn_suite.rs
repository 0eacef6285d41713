//! `olps bench learn --python PY` (or `--peers FILE`): the learning suite. `bench/river_peers.py`
//! writes the suite's streams as CSV and scores River's pipelines on them (StandardScaler +
//! LinearRegression / LogisticRegression with SGD, AdaGrad, Adam and FTRL at their usual rates);
//! this module scores olps's defaults on the same CSVs, prequentially (predict, then learn, one
//! row at a time), and checks the goal of issue 17 per stream: accuracy >= the best peer's −
//! 0.002, MAE <= the best peer's × 1.01. The table goes to the terminal, the report, and with
//! `--markdown` into its own section of the file (the rest of the file is kept).
//!
//! The peers run in the same command (or their JSON is read back with `--peers`, e.g. to score
//! another build of olps on the same draw). Python is needed here only, never by the tests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use super::learn::read_csv;
use super::report::number;
use super::{Ctx, Figure, Report};
use crate::learner::{Example, Learner, LearnerConfig, ModelKind};

/// Where `--markdown` puts the suite's table in its file.
pub const SECTION_BEGIN: &str = "<!-- learn-suite:begin -->";
pub const SECTION_END: &str = "<!-- learn-suite:end -->";

/// Accuracy goal: at least the best peer's minus this.
pub const ACCURACY_MARGIN: f64 = 0.002;
/// MAE goal: at most the best peer's times this.
pub const MAE_FACTOR: f64 = 1.01;

/// What `bench/river_peers.py` prints.
#[derive(Debug, Deserialize)]
pub struct PeerRun {
    pub river: String,
    pub seed: u64,
    pub streams: Vec<SuiteStream>,
}

#[derive(Debug, Deserialize)]
pub struct SuiteStream {
    pub name: String,
    pub kind: ModelKind,
    pub file: PathBuf,
    pub rows: usize,
    pub description: String,
    /// Pipeline name → its score; `null` when it diverged (non-finite).
    pub peers: BTreeMap<String, PeerScore>,
}

#[derive(Debug, Deserialize)]
pub struct PeerScore {
    pub mae: Option<f64>,
    pub accuracy: Option<f64>,
}

/// One learner's prequential scores over a stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Mean absolute error (linear) or accuracy (logistic).
    pub metric: f64,
    /// Mean loss (squared error or log loss) of the learner's own objective.
    pub loss: f64,
    /// Largest |prediction| over the stream (a diverging model shows here first).
    pub max_abs_prediction: f64,
    /// Every prediction and loss finite.
    pub finite: bool,
}

/// Scores `config` prequentially over `examples`: MAE for linear, accuracy (prediction >= 0.5
/// against label >= 0.5) for logistic.
pub fn score(kind: ModelKind, config: &LearnerConfig, examples: &[Example]) -> Score {
    let mut learner = Learner::new(kind, config.clone());
    let (mut metric, mut loss, mut max_abs, mut finite) = (0.0, 0.0, 0.0f64, true);
    for e in examples {
        let step = learner.learn(e);
        finite &= step.prediction.is_finite() && step.loss.is_finite();
        max_abs = max_abs.max(step.prediction.abs());
        loss += step.loss;
        metric += match kind {
            ModelKind::Linear => (step.prediction - e.label).abs(),
            ModelKind::Logistic => {
                f64::from(u8::from((step.prediction >= 0.5) == (e.label >= 0.5)))
            }
        };
    }
    let n = examples.len().max(1) as f64;
    Score {
        metric: metric / n,
        loss: loss / n,
        max_abs_prediction: max_abs,
        finite,
    }
}

/// The running-mean predictor's MAE (linear) or the running majority class's accuracy.
pub fn naive_score(kind: ModelKind, examples: &[Example]) -> f64 {
    let (mut sum, mut total) = (0.0, 0.0);
    for (i, e) in examples.iter().enumerate() {
        let mean = if i == 0 { 0.0 } else { sum / i as f64 };
        total += match kind {
            ModelKind::Linear => (mean - e.label).abs(),
            ModelKind::Logistic => f64::from(u8::from((mean > 0.5) == (e.label >= 0.5))),
        };
        sum += e.label;
    }
    total / examples.len().max(1) as f64
}

/// Whether `value` meets the goal against the best peer's `best`.
pub fn goal_met(kind: ModelKind, value: f64, best: f64) -> bool {
    match kind {
        ModelKind::Linear => value <= best * MAE_FACTOR,
        ModelKind::Logistic => value >= best - ACCURACY_MARGIN,
    }
}

/// The examples of a suite CSV (labels as they are: a logistic stream's are 0 or 1).
pub fn examples_of(path: &Path) -> anyhow::Result<Vec<Example>> {
    read_csv(path)?
        .into_iter()
        .enumerate()
        .map(|(i, (features, label))| {
            Example::new(features, label, 1.0)
                .with_context(|| format!("{} row {}: invalid example", path.display(), i + 1))
        })
        .collect()
}

/// One stream's result.
struct Outcome {
    stream: SuiteStream,
    olps: Score,
    legacy: Score,
    naive: f64,
    best: Option<(String, f64)>,
}

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let run = peer_run(ctx)?;
    let config = ctx.settings()?;
    let legacy = LearnerConfig::legacy();
    let mut outcomes = Vec::new();
    for stream in run.streams {
        let examples = examples_of(&stream.file)?;
        if examples.len() != stream.rows {
            bail!(
                "{}: {} rows, the peers scored {}",
                stream.file.display(),
                examples.len(),
                stream.rows
            );
        }
        let olps = score(stream.kind, &config, &examples);
        let legacy = score(stream.kind, &legacy, &examples);
        let naive = naive_score(stream.kind, &examples);
        let best = best_peer(&stream);
        ctx.say(&format!(
            "learn suite {}: olps {:.4}, best peer {}",
            stream.name,
            olps.metric,
            best.as_ref()
                .map_or("none".to_string(), |(n, v)| format!("{n} {v:.4}"))
        ));
        outcomes.push(Outcome {
            stream,
            olps,
            legacy,
            naive,
            best,
        });
    }
    for o in &outcomes {
        report.add(figure(o));
    }
    report.learn_suite_markdown = Some(markdown(ctx, report, &run.river, run.seed, &outcomes));
    Ok(())
}

/// Runs the peers' script (or reads `--peers`).
fn peer_run(ctx: &Ctx) -> anyhow::Result<PeerRun> {
    let text = match (&ctx.args.peers, &ctx.args.python) {
        (Some(path), _) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        (None, Some(python)) => {
            let script = &ctx.args.suite_script;
            let data_dir = script
                .parent()
                .map(|p| p.join("data"))
                .unwrap_or_else(|| PathBuf::from("data"));
            ctx.say(&format!(
                "learn suite: {} {} --seed {} (River's pipelines, a minute or two)",
                python.display(),
                script.display(),
                ctx.args.seed
            ));
            let out = std::process::Command::new(python)
                .arg(script)
                .arg("--seed")
                .arg(ctx.args.seed.to_string())
                .arg("--data-dir")
                .arg(&data_dir)
                .stderr(std::process::Stdio::inherit())
                .output()
                .with_context(|| format!("cannot run {}", python.display()))?;
            if !out.status.success() {
                bail!(
                    "{} {} failed ({}); install its requirements: python3 -m venv .venv && \
                     .venv/bin/pip install -r bench/requirements.txt",
                    python.display(),
                    script.display(),
                    out.status
                );
            }
            String::from_utf8(out.stdout).context("the peers' output is not UTF-8")?
        }
        (None, None) => bail!("the learning suite needs --python or --peers"),
    };
    if let Some(path) = &ctx.args.save_peers {
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    serde_json::from_str(&text).context("the peers' output is not the expected JSON")
}

fn best_peer(stream: &SuiteStream) -> Option<(String, f64)> {
    let scores = stream.peers.iter().filter_map(|(name, s)| {
        let v = match stream.kind {
            ModelKind::Linear => s.mae,
            ModelKind::Logistic => s.accuracy,
        }?;
        v.is_finite().then(|| (name.clone(), v))
    });
    match stream.kind {
        ModelKind::Linear => scores.min_by(|a, b| a.1.total_cmp(&b.1)),
        ModelKind::Logistic => scores.max_by(|a, b| a.1.total_cmp(&b.1)),
    }
}

fn metric_name(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Linear => "MAE",
        ModelKind::Logistic => "accuracy",
    }
}

fn goal_text(kind: ModelKind) -> String {
    match kind {
        ModelKind::Linear => format!("<= best x {MAE_FACTOR}"),
        ModelKind::Logistic => format!(">= best - {ACCURACY_MARGIN}"),
    }
}

fn figure(o: &Outcome) -> Figure {
    let kind = o.stream.kind;
    let mut f = Figure::new(
        "learn",
        &format!(
            "suite {}: prequential {} (olps defaults)",
            o.stream.name,
            metric_name(kind)
        ),
        "",
        o.olps.metric,
    );
    if kind == ModelKind::Linear {
        f = f.lower_is_better();
    }
    if let Some((name, best)) = &o.best {
        f = f.baseline(&format!("best River peer, {name}"), *best);
        f.target = Some(goal_text(kind));
        f.met = Some(goal_met(kind, o.olps.metric, *best));
    }
    f.detail("rows", o.stream.rows)
        .detail("legacy_defaults", o.legacy.metric)
        .detail("naive", o.naive)
        .detail("finite", o.olps.finite)
        .detail("max_abs_prediction", o.olps.max_abs_prediction)
}

fn markdown(ctx: &Ctx, report: &Report, river: &str, seed: u64, outcomes: &[Outcome]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "{SECTION_BEGIN}");
    md.push_str("## Learning suite: olps's defaults against River's tuned pipelines\n\n");
    let _ = writeln!(
        md,
        "<!-- Generated by `olps bench learn --python .venv/bin/python --markdown docs/BENCHMARKS.md`; \
         do not edit by hand. -->\n"
    );
    md.push_str(
        "Each stream is scored prequentially (predict the row, then learn it). olps: the defaults \
         of `olps model create` (`olps before`: the defaults before issue 17, which existing \
         models keep). Peers: River StandardScaler | LinearRegression / LogisticRegression with \
         SGD (0.001, 0.01, 0.1), AdaGrad (0.01, 0.1, 0.5), Adam (0.001, 0.01, 0.1) and FTRL \
         (alpha 0.05, 0.1, 0.5); the best of the twelve per stream is the bar. Goal: accuracy >= \
         best − 0.002, MAE <= best × 1.01. `naive`: the running mean (MAE) or the running \
         majority class (accuracy). Streams: `bench/river_peers.py`.\n\n",
    );
    let _ = writeln!(md, "- Command: `{}`", ctx.args.command_line());
    let _ = writeln!(
        md,
        "- Run: {}; River {river}; draw (seed) {seed}",
        report.started_at
    );
    if let Some(commit) = &report.machine.git_commit {
        let _ = writeln!(
            md,
            "- olps commit: `{commit}` (the learner alone, no database)"
        );
    }
    let met = outcomes
        .iter()
        .filter(|o| {
            o.best
                .as_ref()
                .is_some_and(|(_, b)| goal_met(o.stream.kind, o.olps.metric, *b))
        })
        .count();
    let _ = writeln!(
        md,
        "- Goal met on **{met} of {}** streams; olps's predictions finite on {} of {}\n",
        outcomes.len(),
        outcomes.iter().filter(|o| o.olps.finite).count(),
        outcomes.len()
    );
    md.push_str(
        "| stream | kind | rows | metric | olps | olps before | naive | best River peer | goal | met |\n",
    );
    md.push_str("| --- | --- | ---: | --- | ---: | ---: | ---: | --- | --- | --- |\n");
    for o in outcomes {
        let kind = o.stream.kind;
        let (best, met) = match &o.best {
            Some((name, b)) => {
                let met = goal_met(kind, o.olps.metric, *b);
                let by = match kind {
                    ModelKind::Linear => format!("× {:.3}", o.olps.metric / b),
                    ModelKind::Logistic => format!("{:+.4}", o.olps.metric - b),
                };
                (
                    format!("{} ({name})", fmt_metric(kind, *b)),
                    format!("{} ({by})", if met { "yes" } else { "**no**" }),
                )
            }
            None => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            o.stream.name,
            kind,
            o.stream.rows,
            metric_name(kind),
            fmt_metric(kind, o.olps.metric),
            fmt_metric(kind, o.legacy.metric),
            fmt_metric(kind, o.naive),
            best,
            goal_text(kind),
            met
        );
    }
    md.push_str("\nStreams:\n\n");
    for o in outcomes {
        let _ = writeln!(md, "- `{}`: {}", o.stream.name, o.stream.description);
    }
    let _ = writeln!(md, "{SECTION_END}");
    md
}

fn fmt_metric(kind: ModelKind, v: f64) -> String {
    match kind {
        ModelKind::Linear => number(v),
        ModelKind::Logistic => format!("{v:.4}"),
    }
}

/// The file `--markdown` writes: `body` (the report's own Markdown, or the file as it was when
/// only the suite ran) with the suite's section replaced by `section` (or kept as it was).
pub fn merge_markdown(body: &str, section: Option<&str>, old: Option<&str>) -> String {
    let kept = old.and_then(extract_section);
    let section = section.map(str::to_string).or(kept);
    let mut out = strip_section(body);
    if let Some(section) = section {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
        out.push_str(section.trim_end());
        out.push('\n');
    }
    out
}

fn extract_section(text: &str) -> Option<String> {
    let start = text.find(SECTION_BEGIN)?;
    let end = text[start..].find(SECTION_END)? + start + SECTION_END.len();
    Some(text[start..end].to_string())
}

fn strip_section(text: &str) -> String {
    match (text.find(SECTION_BEGIN), text.find(SECTION_END)) {
        (Some(start), Some(end)) if end > start => {
            let mut out = text[..start].trim_end().to_string();
            out.push('\n');
            let rest = text[end + SECTION_END.len()..].trim_start();
            if !rest.is_empty() {
                out.push('\n');
                out.push_str(rest);
            }
            out
        }
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suite_section_replaces_only_itself() {
        let section = format!("{SECTION_BEGIN}\nnew table\n{SECTION_END}");
        let old =
            format!("# Benchmarks\n\nother figures\n\n{SECTION_BEGIN}\nold table\n{SECTION_END}\n");
        // A suite run on an existing file keeps everything else.
        let merged = merge_markdown(&old, Some(&section), Some(&old));
        assert!(merged.contains("other figures") && merged.contains("new table"));
        assert!(!merged.contains("old table"));
        assert_eq!(merged.matches(SECTION_BEGIN).count(), 1);
        // A run without the suite (bench all) keeps the file's section.
        let merged = merge_markdown("# Benchmarks\n\nfresh figures\n", None, Some(&old));
        assert!(merged.contains("fresh figures") && merged.contains("old table"));
        // No section anywhere: the body as it is.
        assert_eq!(merge_markdown("body\n", None, None), "body\n");
    }

    #[test]
    fn suite_csvs_have_categories_and_absent_cells() {
        let rows = crate::bench::learn::parse_csv(
            "cat:city,amount,label\nparis,2.5,1\n,3,0\nrome,,1\n",
            "test",
        )
        .unwrap();
        assert_eq!(
            rows[0].0,
            vec![("city=paris".to_string(), 1.0), ("amount".to_string(), 2.5)]
        );
        assert_eq!(rows[1].0, vec![("amount".to_string(), 3.0)]);
        assert_eq!(rows[2], (vec![("city=rome".to_string(), 1.0)], 1.0));
        let err = crate::bench::learn::parse_csv("a,label\nx,1\n", "test").unwrap_err();
        assert!(err.to_string().contains("a is not a number"), "{err}");
        assert!(crate::bench::learn::parse_csv("a,label\n1,\n", "test").is_err());
    }

    #[test]
    fn goals() {
        assert!(goal_met(ModelKind::Linear, 1.01, 1.0));
        assert!(!goal_met(ModelKind::Linear, 1.0101, 1.0));
        assert!(goal_met(ModelKind::Logistic, 0.8981, 0.9));
        assert!(!goal_met(ModelKind::Logistic, 0.8979, 0.9));
    }
}
