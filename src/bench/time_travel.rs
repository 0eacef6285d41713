//! Timings of the version line at a given model size: snapshot, point-in-time reads, rollback
//! and roll-forward (`cargo test --release --test … time_travel_timings`, `olps bench snapshot`).

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::timeline::error::TimelineError;

/// Times of the time-travel operations on a synthetic model ([`measure_time_travel`]).
#[derive(Debug, Clone, Serialize)]
pub struct TimeTravelTimings {
    pub parameters: i64,
    /// Building the model: 4 versions written set-based (all, all, all, 1% of the parameters).
    pub setup_ms: f64,
    /// Snapshot of version 2 (every parameter).
    pub snapshot_ms: f64,
    /// Point-in-time read of version 2, from its snapshot.
    pub read_snapshot_version_ms: f64,
    /// Point-in-time read of version 1, from history alone (no snapshot at or below it).
    pub read_history_version_ms: f64,
    /// Point-in-time read of the current version.
    pub read_current_ms: f64,
    /// Point-in-time read of version 3, one version back (1% of the parameters changed since).
    pub read_previous_version_ms: f64,
    /// Rollback of the last version (1% of the parameters differ), the common "undo" case.
    pub rollback_last_version_ms: f64,
    /// Rollback to the snapshot (every parameter differs).
    pub rollback_to_snapshot_ms: f64,
    /// Rollback to version 1, rebuilt from history (every parameter differs).
    pub rollback_from_history_ms: f64,
    /// Roll forward to version 4 (every parameter differs).
    pub roll_forward_ms: f64,
}

/// Creates a model with `parameters` parameters written set-based over four versions, then times
/// a snapshot, point-in-time reads and rollbacks on it (the benchmarks reuse this). The model
/// (named `time-travel-…`) is left in place.
pub async fn measure_time_travel(
    pool: &PgPool,
    parameters: i64,
) -> Result<TimeTravelTimings, TimelineError> {
    use std::time::Instant;

    use crate::learner::{LearnerConfig, ModelKind};
    use crate::params::UpdateType;
    use crate::timeline::reconstruct::{parameters_at, At};
    use crate::timeline::rollback::RollbackTarget;

    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let model = crate::models::create(
        pool,
        &crate::models::NewModel {
            name: format!("time-travel-{parameters}-{}", Uuid::new_v4().simple()),
            kind: ModelKind::Linear,
            settings: LearnerConfig::default(),
        },
    )
    .await?;
    let id = model.model_id;
    let started = Instant::now();
    let mut snapshot = None;
    let mut snapshot_ms = 0.0;
    for (version, every) in [(1i64, 1i64), (2, 1), (3, 1), (4, 100)] {
        let mut tx = pool.begin().await?;
        let changed = sqlx::query(
            "WITH new AS (
                 SELECT 'f' || i AS parameter_id, sin(i * $2::float8) AS value,
                        cos(i * $2::float8) AS m, 1 + i % 7 AS v, $2 * 10 AS cnt
                 FROM generate_series(1, $3::int8) i WHERE i % $4 = 0
             ), old AS (
                 SELECT p.parameter_id, p.current_value FROM model_parameters p
                 WHERE p.model_id = $1
             ), up AS (
                 INSERT INTO model_parameters AS p
                     (model_id, parameter_id, current_value, opt_m, opt_v, update_count,
                      version, last_updated)
                 SELECT $1, parameter_id, value, m, v, cnt, $2, now() FROM new
                 ON CONFLICT (model_id, parameter_id) DO UPDATE SET
                     current_value = EXCLUDED.current_value, opt_m = EXCLUDED.opt_m,
                     opt_v = EXCLUDED.opt_v, update_count = EXCLUDED.update_count,
                     version = EXCLUDED.version, last_updated = EXCLUDED.last_updated
             )
             INSERT INTO parameter_updates
                 (model_id, model_version, parameter_id, old_value, new_value, opt_m, opt_v,
                  update_count, update_type, learning_rate, source)
             SELECT $1, $2, n.parameter_id, o.current_value, n.value, n.m, n.v, n.cnt, 'batch',
                    0.01, 'time-travel'
             FROM new n LEFT JOIN old o ON o.parameter_id = n.parameter_id",
        )
        .bind(id)
        .bind(version)
        .bind(parameters)
        .bind(every)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let record = crate::timeline::version::VersionRecord {
            kind: UpdateType::Gradient,
            parameters_changed: changed as i32,
            source: Some("time-travel".into()),
            ..Default::default()
        };
        crate::timeline::version::commit_version(&mut tx, id, version, version * 10, &record)
            .await?;
        tx.commit().await?;
        if version == 2 {
            let t = Instant::now();
            let mut tx = pool.begin().await?;
            snapshot =
                Some(crate::timeline::snapshots::create(&mut tx, id, Some("time-travel")).await?);
            tx.commit().await?;
            snapshot_ms = ms(t);
        }
    }
    sqlx::query("ANALYZE parameter_updates, model_parameters")
        .execute(pool)
        .await?;
    let setup_ms = ms(started) - snapshot_ms;
    let snapshot = snapshot.expect("snapshot of version 2");
    let current = 4;

    let t = Instant::now();
    let read = parameters_at(
        &mut *pool.begin().await?,
        id,
        At::Version(snapshot.model_version),
    )
    .await?;
    let read_snapshot_version_ms = ms(t);
    debug_assert_eq!(read.parameters.len() as i64, parameters);
    let t = Instant::now();
    parameters_at(&mut *pool.begin().await?, id, At::Version(1)).await?;
    let read_history_version_ms = ms(t);
    let t = Instant::now();
    parameters_at(&mut *pool.begin().await?, id, At::Version(current)).await?;
    let read_current_ms = ms(t);
    let t = Instant::now();
    parameters_at(&mut *pool.begin().await?, id, At::Version(current - 1)).await?;
    let read_previous_version_ms = ms(t);

    // Undo the last version (a rollback to 3), then return to 4, untimed.
    let t = Instant::now();
    committed_rollback(pool, id, &RollbackTarget::Version(current - 1)).await?;
    let rollback_last_version_ms = ms(t);
    committed_rollback(pool, id, &RollbackTarget::Version(current)).await?;

    let t = Instant::now();
    committed_rollback(
        pool,
        id,
        &RollbackTarget::Snapshot(snapshot.snapshot_id.to_string()),
    )
    .await?;
    let rollback_to_snapshot_ms = ms(t);
    let t = Instant::now();
    committed_rollback(pool, id, &RollbackTarget::Version(1)).await?;
    let rollback_from_history_ms = ms(t);
    let t = Instant::now();
    committed_rollback(pool, id, &RollbackTarget::Version(4)).await?;
    let roll_forward_ms = ms(t);
    Ok(TimeTravelTimings {
        parameters,
        setup_ms,
        snapshot_ms,
        read_snapshot_version_ms,
        read_history_version_ms,
        read_current_ms,
        read_previous_version_ms,
        rollback_last_version_ms,
        rollback_to_snapshot_ms,
        rollback_from_history_ms,
        roll_forward_ms,
    })
}

/// A rollback in a transaction of its own, committed.
async fn committed_rollback(
    pool: &PgPool,
    model_id: Uuid,
    target: &crate::timeline::rollback::RollbackTarget,
) -> Result<(), TimelineError> {
    let mut tx = pool.begin().await?;
    crate::timeline::rollback::rollback(&mut tx, model_id, target).await?;
    tx.commit().await?;
    Ok(())
}
