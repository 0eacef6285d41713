//! `snapshot`: snapshot, rollback and point-in-time read times for models of `--snapshot-params`
//! parameters (default 100,000 and 1,000,000), timed by [`crate::timeline::time_travel::measure_time_travel`]
//! (the history module's own timing of its operations on a synthetic model of four versions).
//! Baseline: a bare copy of the same parameter rows into `snapshot_parameters` with one
//! `INSERT … SELECT` in its own transaction, i.e. PostgreSQL copying the rows and nothing else.

use std::time::Instant;

use anyhow::Context;
use uuid::Uuid;

use super::time_travel::{self, TimeTravelTimings};
use super::{Ctx, Figure, Report};

/// Target (Deliver): a snapshot or rollback of 1,000,000 parameters under 5 s.
pub const TARGET_MS: f64 = 5_000.0;

pub async fn run(ctx: &Ctx, report: &mut Report) -> anyhow::Result<()> {
    let sizes = ctx
        .args
        .snapshot_params
        .clone()
        .unwrap_or_else(|| vec![100_000, 1_000_000]);
    for n in sizes.into_iter().filter(|n| *n > 0) {
        ctx.say(&format!("snapshot: building a model of {n} parameters"));
        super::data::settle(&ctx.pool).await;
        let started = chrono::Utc::now();
        let timings = time_travel::measure_time_travel(&ctx.pool, n as i64).await;
        // The model it made (named time-travel-<n>-…): ours to delete, whatever happened.
        let made: Vec<Uuid> = sqlx::query_scalar(
            "SELECT model_id FROM models WHERE name LIKE $1 AND created_at >= $2",
        )
        .bind(format!("time-travel-{n}-%"))
        .bind(started)
        .fetch_all(&ctx.pool)
        .await?;
        let outcome = async {
            let timings = timings.context("time_travel::measure_time_travel")?;
            let model = *made.first().context("the time-travel model is not there")?;
            let baseline = bare_copy(ctx, model).await?;
            add_figures(report, n, &timings, baseline);
            ctx.say(&format!(
                "snapshot of {n} parameters: snapshot {:.0} ms, rollback {:.0} ms (bare copy {:.0} ms)",
                timings.snapshot_ms, timings.rollback_to_snapshot_ms, baseline
            ));
            anyhow::Ok(())
        }
        .await;
        ctx.cleanup(&made).await?;
        outcome?;
    }
    Ok(())
}

/// The bare copy of a model's current parameter rows into `snapshot_parameters` (one statement,
/// one transaction, committed), in ms.
async fn bare_copy(ctx: &Ctx, model: Uuid) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tx = ctx.pool.begin().await?;
    let snapshot: Uuid = sqlx::query_scalar(
        "INSERT INTO snapshots (model_id, model_version, label, kind)
         SELECT model_id, version, 'bench-bare-copy', 'manual' FROM models WHERE model_id = $1
         RETURNING snapshot_id",
    )
    .bind(model)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO snapshot_parameters
             (model_id, snapshot_id, parameter_id, value, opt_m, opt_v, update_count,
              feature_mean, feature_m2, last_version)
         SELECT model_id, $2, parameter_id, current_value, opt_m, opt_v, update_count,
                feature_mean, feature_m2, version
         FROM model_parameters WHERE model_id = $1",
    )
    .bind(model)
    .bind(snapshot)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

fn add_figures(report: &mut Report, n: u64, t: &TimeTravelTimings, bare_ms: f64) {
    let size = super::report::number(n as f64);
    let base = "bare INSERT … SELECT of the rows";
    let big = n >= 1_000_000;
    let timed = |what: &str, ms: f64, target: bool| {
        let mut f = Figure::new("snapshot", &format!("{size} parameters: {what}"), "ms", ms)
            .lower_is_better()
            .baseline(base, bare_ms)
            .detail("parameters", n);
        if target && big {
            f = f.target_value_at_most(TARGET_MS, "ms");
        }
        f
    };
    report.add(
        timed("snapshot", t.snapshot_ms, true)
            .detail("setup_ms", t.setup_ms)
            .note(
                "synthetic model of four versions (all parameters changed in versions 1-3, 1% in \
                 4); snapshot of version 2",
            ),
    );
    report.add(timed(
        "rollback to the snapshot (every parameter differs)",
        t.rollback_to_snapshot_ms,
        true,
    ));
    report.add(timed(
        "rollback to version 1, from history",
        t.rollback_from_history_ms,
        true,
    ));
    report.add(timed("roll forward to version 4", t.roll_forward_ms, true));
    report.add(timed(
        "read at the snapshot's version",
        t.read_snapshot_version_ms,
        false,
    ));
    report.add(timed(
        "read at version 1, from history",
        t.read_history_version_ms,
        false,
    ));
    report.add(timed("read the current version", t.read_current_ms, false));
}
