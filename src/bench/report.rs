//! The benchmark report: figures with their same-run baselines and ratios, the machine they were
//! measured on, and its renderings (terminal table, JSON, Markdown for docs/BENCHMARKS.md).

use std::fmt::Write as _;

use serde::Serialize;

use super::{sys, Ctx};

/// One measured figure, next to its baseline from the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub scenario: String,
    /// What was measured, e.g. "1 worker, 1 model".
    pub case: String,
    /// The quantity, e.g. "events/s".
    pub metric: String,
    pub value: f64,
    /// Whether a larger value is better (throughput) or a smaller one (latency, memory, loss).
    pub higher_is_better: bool,
    /// The baseline's name and value, measured in the same run.
    pub baseline: Option<Baseline>,
    /// value / baseline value.
    pub ratio: Option<f64>,
    /// The goal for this figure, in words (e.g. "ratio >= 0.8").
    pub target: Option<String>,
    /// Whether the goal was met.
    pub met: Option<bool>,
    /// Anything a reader needs to read the figure right.
    pub note: Option<String>,
    /// Extra measurements (counts, checks) for scripts and tests.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub name: String,
    pub value: f64,
}

impl Figure {
    pub fn new(scenario: &str, case: &str, metric: &str, value: f64) -> Figure {
        Figure {
            scenario: scenario.into(),
            case: case.into(),
            metric: metric.into(),
            value,
            higher_is_better: true,
            baseline: None,
            ratio: None,
            target: None,
            met: None,
            note: None,
            details: serde_json::Map::new(),
        }
    }

    pub fn lower_is_better(mut self) -> Figure {
        self.higher_is_better = false;
        self
    }

    pub fn baseline(mut self, name: &str, value: f64) -> Figure {
        self.baseline = Some(Baseline {
            name: name.into(),
            value,
        });
        self.ratio = (value != 0.0 && value.is_finite()).then(|| self.value / value);
        self
    }

    /// A target on the ratio: at least `min` (throughput) or at most `max` (latency).
    pub fn target_ratio_at_least(mut self, min: f64) -> Figure {
        self.target = Some(format!("ratio >= {min}"));
        self.met = self.ratio.map(|r| r >= min);
        self
    }

    pub fn target_ratio_at_most(mut self, max: f64) -> Figure {
        self.target = Some(format!("ratio <= {max}"));
        self.met = self.ratio.map(|r| r <= max);
        self
    }

    pub fn target_value_at_least(mut self, min: f64, unit: &str) -> Figure {
        self.target = Some(format!(">= {} {unit}", thousands(min)));
        self.met = Some(self.value >= min);
        self
    }

    pub fn target_value_at_most(mut self, max: f64, unit: &str) -> Figure {
        self.target = Some(format!("<= {} {unit}", number(max)));
        self.met = Some(self.value <= max);
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Figure {
        self.note = Some(note.into());
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<serde_json::Value>) -> Figure {
        self.details.insert(key.into(), value.into());
        self
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub database: String,
    pub machine: sys::Machine,
    pub scenarios_run: Vec<String>,
    pub figures: Vec<Figure>,
    /// Markdown a scenario adds below its figures (e.g. the soak's per-interval table).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<(String, String)>,
    /// The learning suite's Markdown section (`olps bench learn --python`), when it ran.
    #[serde(skip)]
    pub learn_suite_markdown: Option<String>,
}

impl Report {
    pub async fn new(ctx: &Ctx, database: &str) -> Report {
        Report {
            command: ctx.args.command_line(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            finished_at: None,
            database: crate::db::redact(database),
            machine: sys::Machine::describe(&ctx.pool).await,
            scenarios_run: Vec::new(),
            figures: Vec::new(),
            sections: Vec::new(),
            learn_suite_markdown: None,
        }
    }

    pub fn finish(&mut self) {
        self.finished_at =
            Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }

    pub fn add(&mut self, figure: Figure) {
        self.figures.push(figure);
    }

    /// Markdown shown below the scenario's figures in [`Report::markdown`].
    pub fn add_section(&mut self, scenario: &str, markdown: String) {
        self.sections.push((scenario.into(), markdown));
    }

    /// Figures of one scenario.
    pub fn of<'a>(&'a self, scenario: &'a str) -> impl Iterator<Item = &'a Figure> + 'a {
        self.figures.iter().filter(move |f| f.scenario == scenario)
    }

    fn rows(&self) -> Vec<[String; 7]> {
        self.figures
            .iter()
            .map(|f| {
                [
                    f.scenario.clone(),
                    f.case.clone(),
                    format!("{} {}", number(f.value), f.metric),
                    f.baseline
                        .as_ref()
                        .map(|b| format!("{} ({})", number(b.value), b.name))
                        .unwrap_or_else(|| "-".into()),
                    f.ratio
                        .map(|r| format!("{r:.2}"))
                        .unwrap_or_else(|| "-".into()),
                    f.target.clone().unwrap_or_else(|| "-".into()),
                    match f.met {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => "-".into(),
                    },
                ]
            })
            .collect()
    }

    const HEADER: [&'static str; 7] = [
        "scenario", "case", "figure", "baseline", "ratio", "target", "met",
    ];

    /// A plain-text table for the terminal.
    pub fn table(&self) -> String {
        let rows = self.rows();
        let mut widths = Self::HEADER.map(|h| h.chars().count());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                let _ = write!(s, "{cell:<w$}");
            }
            s.trim_end().to_string()
        };
        let mut out = String::new();
        out.push_str(&line(&Self::HEADER.map(String::from)));
        out.push('\n');
        out.push_str(&line(&widths.map(|w| "-".repeat(w))));
        out.push('\n');
        for row in &rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        let notes: Vec<&Figure> = self.figures.iter().filter(|f| f.note.is_some()).collect();
        if !notes.is_empty() {
            out.push_str("\nnotes:\n");
            for f in notes {
                let _ = writeln!(
                    out,
                    "  {} / {}: {}",
                    f.scenario,
                    f.case,
                    f.note.as_deref().unwrap_or("")
                );
            }
        }
        out
    }

    /// docs/BENCHMARKS.md: how to run, the machine, and the figures.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        md.push_str(MARKDOWN_INTRO);
        md.push_str("\n## The machine and the run\n\n");
        let m = &self.machine;
        let _ = writeln!(md, "- Command: `{}`", self.command);
        let _ = writeln!(
            md,
            "- Run: {} to {}",
            self.started_at,
            self.finished_at.as_deref().unwrap_or("?")
        );
        let _ = writeln!(
            md,
            "- CPU: {} ({} logical cores); memory {}; kernel {}",
            m.cpu, m.cores, m.memory, m.kernel
        );
        let _ = writeln!(
            md,
            "- Load average when the run started: {}",
            m.load_average
        );
        let _ = writeln!(
            md,
            "- PostgreSQL: {} ({})",
            m.postgres_version, self.database
        );
        let _ = writeln!(md, "- PostgreSQL settings: {}", m.postgres_settings);
        if let Some(commit) = &m.git_commit {
            let _ = writeln!(md, "- olps commit: `{commit}`");
        }
        let mut scenarios: Vec<&str> = Vec::new();
        for f in &self.figures {
            if !scenarios.contains(&f.scenario.as_str()) {
                scenarios.push(&f.scenario);
            }
        }
        md.push_str("\n## Figures\n\nRatio = figure ÷ baseline, both measured in this run.\n");
        for scenario in scenarios {
            let _ = writeln!(md, "\n### {scenario}\n");
            md.push_str("| case | figure | baseline (same run) | ratio | target | met |\n");
            md.push_str("| --- | ---: | ---: | ---: | --- | --- |\n");
            for f in self.of(scenario) {
                let _ = writeln!(
                    md,
                    "| {} | {} {} | {} | {} | {} | {} |",
                    f.case,
                    number(f.value),
                    f.metric,
                    f.baseline
                        .as_ref()
                        .map(|b| format!("{} ({})", number(b.value), b.name))
                        .unwrap_or_else(|| "–".into()),
                    f.ratio
                        .map(|r| format!("{r:.2}"))
                        .unwrap_or_else(|| "–".into()),
                    f.target.clone().unwrap_or_else(|| "–".into()),
                    match f.met {
                        Some(true) => "yes",
                        Some(false) => "**no**",
                        None => "–",
                    }
                );
            }
            let notes: Vec<&Figure> = self.of(scenario).filter(|f| f.note.is_some()).collect();
            if !notes.is_empty() {
                md.push('\n');
                for f in notes {
                    let _ = writeln!(md, "- *{}*: {}", f.case, f.note.as_deref().unwrap_or(""));
                }
            }
            for (_, section) in self.sections.iter().filter(|(s, _)| s == scenario) {
                md.push('\n');
                md.push_str(section);
            }
        }
        md.push_str(MARKDOWN_OUTRO);
        md
    }
}

/// A number for people: thousands separators for large values, 3 significant digits for small.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a >= 1000.0 {
        thousands(v)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a == 0.0 {
        "0".into()
    } else {
        format!("{v:.3}")
    }
}

/// An integer with thousands separators (rounded).
pub fn thousands(v: f64) -> String {
    let n = v.round() as i128;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

const MARKDOWN_INTRO: &str = "# Benchmarks

<!-- Generated by `olps bench all --markdown docs/BENCHMARKS.md`; do not edit by hand. -->

`olps bench` measures olps on the machine it runs on, and puts every figure next to what
PostgreSQL itself does on the same machine in the same run (a bare-SQL baseline), as a ratio:
absolute times on a shared machine drift, ratios much less. The targets are goals for the code,
not assertions in tests (tests/it/bench_smoke.rs only checks the harness, at a tiny size).

## Running

```sh
cargo build --release
# the embedded default database (.olps/), or any PostgreSQL with DATABASE_URL=postgres://...
target/release/olps bench all --markdown docs/BENCHMARKS.md --json bench.json
target/release/olps bench drain --events 100000 --batch-size 2000 --workers 1
target/release/olps bench drain --events 5000 --workers 1 --models 1   # quick: every size follows the flags
```

Every scenario creates its own models (named `bench-…`) and deletes them and all their rows when
it ends. Progress lines go to stderr, the table to stdout. Common options: `--events N` (per
case), `--features F` (per event, default 10) from `--feature-pool P` names (default 10,000),
`--models M` (the several-models cases, default 4), `--workers W` (default 1 and 2),
`--batch-size B` (the fixed worker batch of the fixed-batch cases, default 1,000),
`--min-batch`, `--max-batch`, `--batch-budget-ms` (the adaptive batching of the default-settings
cases; default: the worker's, 1,000, 20,000 and 1,000 ms), `--connections C` (HTTP and SQL clients,
default 4), `--json FILE`, `--markdown FILE`, `--quiet`. Every size follows the flags: with
`--events N` and no `--memory-events`, memory is measured at N/10 and N events.

| scenario | what it measures | baseline (same run) |
| --- | --- | --- |
| `ingest` | feedback events/s through `POST /v1/models/{m}/feedback` (1,000 events a request, C connections, service in-process on 127.0.0.1:0), a plain SQL multi-row INSERT and a COPY (C connections, 1,000 rows a statement), queue trigger on | the same rows COPYed by a bare client with the trigger on |
| `drain` | events/s turned into committed parameter updates with full history (1 and 2 workers, 1 and M models, fixed batch), the worker's default settings (adaptive batching: against the fixed batch and against the bare drain replaying the batch sizes the worker chose), the naive design, and the peak resident memory of `olps worker --until-empty` (default settings) and `olps serve` (ingest) as child processes at `--memory-events` (default 100k and 1M, or N/10 and N with `--events N`) | a bare set-based SQL drain: the same claim, parameter writes, history insert and acknowledgement per batch, with no learning |
| `freshness` | delay from a feedback row's commit to the commit of the first model version that includes it, at `--rate` events/s for `--duration` s, the worker with its default settings, measured client-side (insert return → receipt of the version's NOTIFY, sent at commit) | the bare set-based drain woken the same way |
| `predict` | predictions/s and latency (server time from the `Server-Timing` header, and round trip), batch 1 and 100, C keep-alive connections from a Rust client in the same process, while a worker commits new versions | PostgreSQL computing the same predictions: one SQL statement per request joining the features with `model_parameters` |
| `snapshot` | snapshot, rollback and point-in-time read of models with `--snapshot-params` parameters (default 100k, 1M) | copying the model's parameter rows with one INSERT … SELECT |
| `learn` | the learner alone on `--data` (default: the built-in tests/data/seed_stream.csv), every optimizer at its default rate: prequential loss / accuracy and events/s; with `--python PY` (or `--peers FILE`), the learning suite instead: olps's defaults on every stream of `bench/river_peers.py` (section below) | prequential loss of the running-mean predictor; accuracy of the majority class; for the suite, the best of twelve River pipelines on the same stream |
| `soak` (not in `all`) | `--minutes` (default 30) at `--rate` events/s with a worker draining and a REPEATABLE READ snapshot held during the middle third: per interval the drain, the worker's capacity, queue depth, claim latency, dead tuples and sizes of `feedback_queue` and `feedback_events`; a verdict | the same run before the hold |
";

const MARKDOWN_OUTRO: &str = "
## Reading the figures

- Throughput figures are higher-is-better and their ratio is olps ÷ baseline; latency, memory
  and loss figures are lower-is-better and their ratio is olps ÷ baseline too (so below 1 is
  better there).
- The machine is shared with builds and tests: compare ratios, not absolute figures, between
  runs.
";
