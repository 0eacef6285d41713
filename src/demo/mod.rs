//! `olps demo`: the main job end to end, on the embedded default (or DATABASE_URL).
//!
//! A logistic fraud model learns a generated transaction stream: each transaction is predicted
//! over HTTP before its label arrives, then the labels are written as plain SQL feedback rows
//! (as a service client would) naming the `prediction_id` each prediction returned, without the
//! features: delayed labels, trained on the features logged with each prediction. The
//! in-process worker learns them, one version per chunk so
//! a seed always gives the same versions and numbers. Partway the fraud pattern changes (a
//! snapshot is taken first; the drift detectors fire; accuracy recovers); later a bad feed of
//! flipped labels arrives, and the model is rolled back to the snapshot taken before it with
//! the `olps rollback` command a user would type.

pub mod plot;
pub mod stream;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::Database;
use crate::http::{self, AppState};
use crate::learner::{LearnerConfig, ModelKind};
use crate::models::{self, NewModel};
use crate::monitor;
use crate::worker::{Worker, WorkerConfig};
use stream::{Generator, Pattern, Transaction};

pub const MODEL_NAME: &str = "demo-fraud";

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Transactions to stream.
    #[arg(long, default_value_t = 6_000, value_parser = clap::value_parser!(u64).range(400..=1_000_000))]
    pub events: u64,
    /// Seed of the generated stream: the same seed gives the same report.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep the service and worker running after the report (Ctrl-C stops them).
    #[arg(long)]
    pub keep: bool,
    /// Transactions per chunk: one prediction round, one SQL insert, one model version.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub chunk: u64,
    /// Where the report and the learning-curve SVG are written.
    #[arg(long, default_value = "olps-demo")]
    pub out: PathBuf,
    /// The olps binary used for the rollback command (default: this executable).
    #[arg(long, hide = true)]
    pub olps_bin: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The demo's outcome, also written as JSON next to the report.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub model_id: Uuid,
    pub seed: u64,
    pub events: u64,
    pub versions: i64,
    pub change_at_event: u64,
    pub bad_feed: (u64, u64),
    pub accuracy_before_change: f64,
    pub accuracy_after_change_first_chunks: f64,
    pub accuracy_recovered: f64,
    pub accuracy_end: f64,
    pub drift_events: Vec<(String, i64, i64)>,
    pub snapshot_before_change: (Uuid, i64),
    pub snapshot_before_bad_feed: (Uuid, i64),
    pub holdout_at_snapshot: f64,
    pub holdout_after_bad_feed: f64,
    pub holdout_after_rollback: f64,
    pub rollback_version: i64,
    pub rollback_command: String,
    pub events_per_second: f64,
    pub seconds: f64,
    /// Labels learned by naming their prediction's id (no features sent with them), and the
    /// logged predictions marked as labeled.
    pub labels_by_prediction_id: (i64, i64),
    pub svg: PathBuf,
    pub report: PathBuf,
    pub commands: Vec<String>,
    pub text: String,
}

struct Demo {
    client: reqwest::Client,
    base: String,
    pool: PgPool,
    model_id: Uuid,
}

impl Demo {
    /// Predicts each transaction over HTTP (the single-instance route, as a service would),
    /// a few requests in flight; returns predictions in order and the version they came from.
    async fn predict_each(
        &self,
        txns: &[Transaction],
    ) -> anyhow::Result<(Vec<f64>, i64, Vec<Uuid>)> {
        let url = format!("{}/v1/models/{}/predict", self.base, self.model_id);
        let answers: Vec<anyhow::Result<(f64, i64, Uuid)>> = futures::stream::iter(txns)
            .map(|t| {
                let body =
                    json!({"features": features_json(t), "entity_id": format!("txn-{}", t.id)});
                let request = self.client.post(&url).json(&body).send();
                async move {
                    let response = request.await?;
                    let status = response.status();
                    let value: Value = response.json().await?;
                    if !status.is_success() {
                        bail!("predict answered {status}: {value}");
                    }
                    Ok((
                        value["prediction"].as_f64().context("prediction")?,
                        value["version"].as_i64().context("version")?,
                        value["prediction_id"]
                            .as_str()
                            .and_then(|id| Uuid::parse_str(id).ok())
                            .context("prediction_id")?,
                    ))
                }
            })
            .buffered(8)
            .collect()
            .await;
        let mut predictions = Vec::with_capacity(txns.len());
        let mut ids = Vec::with_capacity(txns.len());
        let mut version = None;
        for answer in answers {
            let (p, v, id) = answer?;
            ids.push(id);
            if version.is_some_and(|seen| seen != v) {
                bail!("predictions of one chunk came from two versions");
            }
            version = Some(v);
            predictions.push(p);
        }
        Ok((predictions, version.unwrap_or(0), ids))
    }

    /// Waits until the service's prediction log has written the predictions (it writes off the
    /// request path, in batches). A label sent earlier would wait for its prediction in the
    /// queue (status `waiting`) and be learned a little later, in another version: the demo
    /// waits so that a seed always gives the same versions.
    async fn wait_logged(&self, ids: &[Uuid]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logged: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM prediction_log WHERE model_id = $1 AND prediction_id = ANY($2)",
            )
            .bind(self.model_id)
            .bind(ids)
            .fetch_one(&self.pool)
            .await?;
            if logged == ids.len() as i64 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the prediction log wrote {logged} of {} predictions within 30 s",
                    ids.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Accuracy of one batch-predict request over a held-out set, and its version.
    async fn holdout(&self, txns: &[Transaction]) -> anyhow::Result<(f64, i64)> {
        let url = format!("{}/v1/models/{}/predict", self.base, self.model_id);
        let instances: Vec<Value> = txns
            .iter()
            .map(|t| json!({"features": features_json(t)}))
            .collect();
        let response = self
            .client
            .post(&url)
            .json(&json!({"instances": instances}))
            .send()
            .await?;
        let value: Value = response.json().await?;
        let predictions = value["predictions"].as_array().context("predictions")?;
        let correct = predictions
            .iter()
            .zip(txns)
            .filter(|(p, t)| (p.as_f64().unwrap_or(0.5) >= 0.5) == t.fraud)
            .count();
        Ok((
            correct as f64 / txns.len() as f64,
            value["version"].as_i64().unwrap_or(0),
        ))
    }

    /// Writes labels as plain SQL feedback rows (one statement), as a service client would: each
    /// names its prediction's id and carries no features (delayed labels by prediction id).
    async fn send_labels(
        &self,
        txns: &[Transaction],
        prediction_ids: &[Uuid],
        flip: bool,
    ) -> anyhow::Result<()> {
        let entity: Vec<String> = txns.iter().map(|t| format!("txn-{}", t.id)).collect();
        let label: Vec<f64> = txns
            .iter()
            .map(|t| if t.fraud != flip { 1.0 } else { 0.0 })
            .collect();
        sqlx::query(
            "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, confidence, prediction_id)
             SELECT $1, e, 'explicit', v, 1.0, p
             FROM unnest($2::text[], $3::float8[], $4::uuid[]) WITH ORDINALITY AS u(e, v, p, i)
             ORDER BY i",
        )
        .bind(self.model_id)
        .bind(&entity)
        .bind(&label)
        .bind(prediction_ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Waits until the worker has applied everything sent (bounded).
    async fn wait_applied(&self) -> anyhow::Result<i64> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (version, pending): (i64, i64) = sqlx::query_as(
                "SELECT m.version, (SELECT count(*) FROM feedback_queue q
                                    WHERE q.model_id = m.model_id
                                      AND q.status IN ('pending', 'waiting'))
                 FROM models m WHERE m.model_id = $1",
            )
            .bind(self.model_id)
            .fetch_one(&self.pool)
            .await?;
            if pending == 0 {
                return Ok(version);
            }
            if Instant::now() > deadline {
                bail!("the worker did not apply the feedback within 120 s ({pending} pending)");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the service answers from `version` (its model copy follows NOTIFY).
    async fn wait_serving(&self, version: i64, probe: &[Transaction]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.predict_each(&probe[..1]).await?.1 != version {
            if Instant::now() > deadline {
                bail!("the service did not load version {version} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    async fn snapshot(&self, label: &str) -> anyhow::Result<(Uuid, i64)> {
        let url = format!("{}/v1/models/{}/snapshots", self.base, self.model_id);
        let response = self
            .client
            .post(&url)
            .json(&json!({"label": label}))
            .send()
            .await?;
        let status = response.status();
        let value: Value = response.json().await?;
        if !status.is_success() {
            bail!("snapshot failed ({status}): {value}");
        }
        let id = value["snapshot_id"]
            .as_str()
            .or(value["id"].as_str())
            .context("snapshot id in the answer")?;
        Ok((
            id.parse()?,
            value["model_version"]
                .as_i64()
                .context("snapshot version")?,
        ))
    }
}

fn features_json(t: &Transaction) -> Value {
    Value::Object(
        t.features
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect(),
    )
}

fn accuracy(predictions: &[f64], txns: &[Transaction]) -> f64 {
    let correct = predictions
        .iter()
        .zip(txns)
        .filter(|(p, t)| (**p >= 0.5) == t.fraud)
        .count();
    correct as f64 / txns.len().max(1) as f64
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        f64::NAN
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Runs the demo on `database` and writes the report; returns it.
pub async fn run(args: DemoArgs, database: &Database) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    let pool = crate::db::connect(&database.url, 8).await?;
    if let Ok(old) = models::find(&pool, MODEL_NAME).await {
        let mut tx = pool.begin().await?;
        models::delete(&mut tx, old.model_id).await?;
        tx.commit().await?;
    }
    let settings = LearnerConfig::default();
    let model = models::create(
        &pool,
        &NewModel {
            name: MODEL_NAME.into(),
            kind: ModelKind::Logistic,
            settings,
        },
    )
    .await?;
    let model_id = model.model_id;

    // The service and the worker, in this process.
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(http::serve(
        listener,
        AppState::new(pool.clone()),
        shutdown.clone(),
    ));
    // The service requires tokens, as it does in production: the demo makes its own (predict, read
    // and write on its model), and revokes it at the end unless --keep.
    let token = demo_token(&pool, model_id).await?;
    let mut worker = Worker::new(
        pool.clone(),
        WorkerConfig {
            models: vec![model_id],
            batch_size: args.chunk as i64,
            poll_interval: Duration::from_millis(10),
            ..WorkerConfig::default()
        },
    );
    let worker_shutdown = shutdown.clone();
    let worker_task = tokio::spawn(async move { worker.run(worker_shutdown).await });
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.secret))?,
    );
    let demo = Demo {
        client: reqwest::Client::builder()
            .default_headers(headers)
            .build()?,
        base: format!("http://{addr}"),
        pool: pool.clone(),
        model_id,
    };

    let chunk = args.chunk;
    let round = |x: f64| ((x / chunk as f64).round() as u64).max(1) * chunk;
    let change_at = round(args.events as f64 * 0.4);
    let bad_start = round(args.events as f64 * 0.75);
    let bad_end = bad_start + round(args.events as f64 * 0.05);
    let total = round(args.events as f64).max(bad_end + chunk);

    let mut generator = Generator::new(args.seed);
    let mut holdout_generator = Generator::new(args.seed ^ 0x5eed);
    let holdout: Vec<Transaction> = (0..500)
        .map(|_| holdout_generator.next(Pattern::CardTesting))
        .collect();

    let progress = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} events  {per_sec}  {msg}")
            .expect("progress template"),
    );
    let mut curve: Vec<(f64, f64)> = Vec::new();
    let mut chunk_accuracy: Vec<(u64, f64)> = Vec::new();
    let mut snapshot_before_change = None;
    let mut snapshot_before_bad = None;
    let mut holdout_at_snapshot = f64::NAN;
    let mut holdout_after_bad = f64::NAN;
    let mut holdout_after_rollback = f64::NAN;
    let mut rollback_version = 0;
    let mut rollback_command = String::new();
    let mut bad_feed_version = 0.0;
    let mut sent = 0u64;
    let mut version = 0;
    while sent < total {
        if sent == change_at {
            snapshot_before_change = Some(demo.snapshot("before-change").await?);
        }
        if sent == bad_start {
            let snap = demo.snapshot("before-bad-feed").await?;
            holdout_at_snapshot = demo.holdout(&holdout).await?.0;
            snapshot_before_bad = Some(snap);
            bad_feed_version = version as f64 + 0.5;
        }
        let pattern = if sent < change_at {
            Pattern::CrossBorder
        } else {
            Pattern::CardTesting
        };
        let txns: Vec<Transaction> = (0..chunk).map(|_| generator.next(pattern)).collect();
        let (predictions, served, prediction_ids) = demo.predict_each(&txns).await?;
        if served != version {
            bail!("predictions came from version {served}, expected {version}");
        }
        let acc = accuracy(&predictions, &txns);
        chunk_accuracy.push((sent, acc));
        let flip = (bad_start..bad_end).contains(&sent);
        demo.wait_logged(&prediction_ids).await?;
        demo.send_labels(&txns, &prediction_ids, flip).await?;
        version = demo.wait_applied().await?;
        demo.wait_serving(version, &txns).await?;
        sent += chunk;
        let window: Vec<f64> = chunk_accuracy.iter().rev().take(5).map(|c| c.1).collect();
        curve.push((version as f64, mean(&window)));
        progress.set_position(sent);
        progress.set_message(format!(
            "version {version}  rolling accuracy {:.3}",
            mean(&window)
        ));

        if sent == bad_end {
            holdout_after_bad = demo.holdout(&holdout).await?.0;
            let (snapshot_id, _) = snapshot_before_bad.expect("snapshot taken before the bad feed");
            let olps = match &args.olps_bin {
                Some(p) => p.clone(),
                None => std::env::current_exe()?,
            };
            rollback_command =
                format!("olps rollback --model {MODEL_NAME} --snapshot {snapshot_id}");
            let output = tokio::process::Command::new(&olps)
                .args([
                    "rollback",
                    "--model",
                    MODEL_NAME,
                    "--snapshot",
                    &snapshot_id.to_string(),
                ])
                .env("DATABASE_URL", &database.url)
                .output()
                .await
                .with_context(|| format!("running {}", olps.display()))?;
            if !output.status.success() {
                bail!(
                    "rollback failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            rollback_version = models::find(&pool, &model_id.to_string()).await?.version;
            version = rollback_version;
            demo.wait_serving(version, &holdout).await?;
            let (acc, at) = demo.holdout(&holdout).await?;
            if at != rollback_version {
                bail!("holdout answered from version {at}, expected the rollback's {rollback_version}");
            }
            holdout_after_rollback = acc;
        }
    }
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();

    let drifts = monitor::drift_events(&pool, model_id, 0, i64::MAX).await?;
    let drift_events: Vec<(String, i64, i64)> = drifts
        .iter()
        .map(|d| (d.detector.clone(), d.at_example, d.model_version))
        .collect();
    let acc_between = |from: u64, to: u64| {
        mean(
            &chunk_accuracy
                .iter()
                .filter(|c| c.0 >= from && c.0 < to)
                .map(|c| c.1)
                .collect::<Vec<_>>(),
        )
    };
    let first_after = change_at + 5 * chunk;
    let (snap_change, snap_bad) = (
        snapshot_before_change.expect("snapshot before the change"),
        snapshot_before_bad.expect("snapshot before the bad feed"),
    );
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let out = std::fs::canonicalize(&args.out)?;
    let svg = out.join("learning-curve.svg");
    let mut markers = vec![plot::Marker {
        version: snap_change.1 as f64 + 0.5,
        label: "fraud pattern changes".into(),
        color: plotters::style::RGBColor(230, 140, 0),
    }];
    if let Some(first) = drifts.first() {
        markers.push(plot::Marker {
            version: first.model_version as f64,
            label: format!("drift detected ({})", first.detector),
            color: plotters::style::RGBColor(200, 0, 200),
        });
    }
    markers.push(plot::Marker {
        version: bad_feed_version,
        label: "bad feed (flipped labels)".into(),
        color: plotters::style::RGBColor(220, 0, 0),
    });
    markers.push(plot::Marker {
        version: rollback_version as f64,
        label: "rollback to snapshot".into(),
        color: plotters::style::RGBColor(0, 160, 0),
    });
    plot::learning_curve(
        &svg,
        "olps demo: fraud model learning online",
        &curve,
        &markers,
    )?;

    let url_hint = if database.embedded {
        database.url.clone()
    } else {
        "$DATABASE_URL".into()
    };
    let commands = vec![
        format!("olps history --model {MODEL_NAME} --limit 10"),
        format!("olps snapshot list --model {MODEL_NAME}"),
        format!(
            "olps rollback --model {MODEL_NAME} --to-version {}",
            snap_bad.1
        ),
        format!("psql {url_hint} -X -v ON_ERROR_STOP=1 -v model={MODEL_NAME} -f sql/version_timeline.sql"),
        format!("psql {url_hint} -X -v ON_ERROR_STOP=1 -v model={MODEL_NAME} -v window=500 -f sql/prequential_loss.sql"),
    ];
    let labels_by_prediction_id: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM feedback_events
                 WHERE model_id = $1 AND prediction_id IS NOT NULL AND processed
                   AND NOT coalesce(metadata ? 'features', false)),
                (SELECT count(*) FROM prediction_log
                 WHERE model_id = $1 AND labeled_at IS NOT NULL)",
    )
    .bind(model_id)
    .fetch_one(&pool)
    .await?;
    let report = DemoReport {
        labels_by_prediction_id,
        model_id,
        seed: args.seed,
        events: total,
        versions: models::find(&pool, &model_id.to_string()).await?.version,
        change_at_event: change_at,
        bad_feed: (bad_start, bad_end),
        accuracy_before_change: acc_between(change_at.saturating_sub(10 * chunk), change_at),
        accuracy_after_change_first_chunks: acc_between(change_at, first_after),
        accuracy_recovered: acc_between(bad_start.saturating_sub(5 * chunk), bad_start),
        accuracy_end: acc_between(total.saturating_sub(5 * chunk), total),
        drift_events,
        snapshot_before_change: snap_change,
        snapshot_before_bad_feed: snap_bad,
        holdout_at_snapshot,
        holdout_after_bad_feed: holdout_after_bad,
        holdout_after_rollback,
        rollback_version,
        rollback_command,
        events_per_second: total as f64 / seconds,
        seconds,
        svg: svg.clone(),
        report: out.join("report.txt"),
        commands,
        text: String::new(),
    };
    let text = render(&report, database);
    let report = DemoReport { text, ..report };
    std::fs::write(&report.report, &report.text)?;
    std::fs::write(
        args.out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;

    if args.keep {
        println!("{}", report.text);
        println!("The service keeps running at http://{addr} with a worker; Ctrl-C stops both.");
        println!(
            "Its API needs a token; the demo's (predict, read and write on {MODEL_NAME}, revoked when \
             the demo stops) is:\n  curl -H 'Authorization: Bearer {}' http://{addr}/v1/models",
            token.secret
        );
        crate::runtime::shutdown_token().cancelled().await;
    }
    crate::auth::tokens::revoke(
        &pool,
        &token.info.token_id.to_string(),
        &crate::auth::Principal::cli(),
    )
    .await?;
    shutdown.cancel();
    let _ = server.await;
    worker_task.await??;
    Ok(report)
}

/// The demo's API token: predict and read on its model only. A token of the same name left in
/// force by an interrupted run is revoked first.
async fn demo_token(
    pool: &PgPool,
    model_id: Uuid,
) -> anyhow::Result<crate::auth::tokens::CreatedToken> {
    use crate::auth::{tokens, Principal, Scope, Scopes};
    const TOKEN_NAME: &str = "olps-demo";
    match tokens::revoke(pool, TOKEN_NAME, &Principal::cli()).await {
        Ok(_) | Err(tokens::TokenError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let new = tokens::NewToken {
        name: TOKEN_NAME.into(),
        scopes: Scopes::from_list(&[Scope::Predict, Scope::Read, Scope::Write]),
        models: vec![model_id.to_string()],
        expires_in: None,
    };
    Ok(tokens::create(pool, &new, &Principal::cli()).await?)
}

fn render(r: &DemoReport, database: &Database) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "olps demo — seed {}, {} transactions, model {MODEL_NAME} ({})",
        r.seed, r.events, r.model_id
    ));
    line(format!("database: {}", database.description));
    line(String::new());
    line(format!(
        "  versions committed                     {}",
        r.versions
    ));
    line(format!(
        "  throughput (predict + label + learn)   {:.0} events/s over {:.1} s",
        r.events_per_second, r.seconds
    ));
    line(format!(
        "  delayed labels by prediction_id        {} learned without features ({} logged predictions trained on)",
        r.labels_by_prediction_id.0, r.labels_by_prediction_id.1
    ));
    line(format!(
        "  accuracy before the change             {:.3}",
        r.accuracy_before_change
    ));
    line(format!(
        "  accuracy right after the change        {:.3}   (pattern changes at event {})",
        r.accuracy_after_change_first_chunks, r.change_at_event
    ));
    match r.drift_events.first() {
        Some((detector, at, version)) => line(format!(
            "  drift detected                         {detector} at example {at} (version {version}); {} detections in all",
            r.drift_events.len()
        )),
        None => line("  drift detected                         no".into()),
    }
    line(format!(
        "  accuracy recovered                     {:.3}",
        r.accuracy_recovered
    ));
    line(format!(
        "  bad feed                               events {}..{} with flipped labels",
        r.bad_feed.0, r.bad_feed.1
    ));
    line(format!(
        "  held-out accuracy                      {:.3} at snapshot v{} -> {:.3} after the bad feed -> {:.3} after rollback (v{})",
        r.holdout_at_snapshot, r.snapshot_before_bad_feed.1, r.holdout_after_bad_feed, r.holdout_after_rollback, r.rollback_version
    ));
    line(format!(
        "  accuracy at the end                    {:.3}",
        r.accuracy_end
    ));
    line(String::new());
    line(format!("rolled back with:  {}", r.rollback_command));
    line(format!(
        "snapshots: before-change {} (v{}), before-bad-feed {} (v{})",
        r.snapshot_before_change.0,
        r.snapshot_before_change.1,
        r.snapshot_before_bad_feed.0,
        r.snapshot_before_bad_feed.1
    ));
    line(format!("learning curve: {}", r.svg.display()));
    line(String::new());
    line("explore what just happened:".into());
    for c in &r.commands {
        line(format!("  {c}"));
    }
    out
}
