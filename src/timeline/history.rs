//! The update history (`parameter_updates`) for people and scripts, and its retention.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::error::TimelineError;
use super::reconstruct::horizon;
use crate::models;
use crate::params::UpdateType;

/// Rows returned by `updates` when no limit is given, and the most it returns.
pub const DEFAULT_HISTORY_LIMIT: i64 = 1_000;
pub const MAX_HISTORY_LIMIT: i64 = 100_000;

/// Which history rows `updates` returns: newest first, up to `limit` (default
/// [`DEFAULT_HISTORY_LIMIT`]); `since` is inclusive, `until` exclusive.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub parameter: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: Option<i64>,
}

/// One `parameter_updates` row.
#[derive(Debug, Clone, PartialEq, Serialize, FromRow)]
pub struct UpdateRow {
    pub model_version: i64,
    pub parameter_id: String,
    pub old_value: Option<f64>,
    pub new_value: f64,
    pub update_type: UpdateType,
    pub learning_rate: Option<f64>,
    pub source: Option<String>,
    pub timestamp: DateTime<Utc>,
    pub opt_m: f64,
    pub opt_v: f64,
    pub update_count: i64,
    pub feature_mean: f64,
    pub feature_m2: f64,
    pub metadata: Option<serde_json::Value>,
}

impl HistoryFilter {
    pub fn validate(&self) -> Result<i64, TimelineError> {
        let limit = self.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
        if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
            return Err(TimelineError::InvalidArgument(format!(
                "limit: must be between 1 and {MAX_HISTORY_LIMIT}, got {limit}"
            )));
        }
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if since >= until {
                return Err(TimelineError::InvalidArgument(format!(
                    "since ({since}) must be before until ({until})"
                )));
            }
        }
        if let Some(p) = &self.parameter {
            if p.is_empty() {
                return Err(TimelineError::InvalidArgument(
                    "parameter: must not be empty".into(),
                ));
            }
        }
        Ok(limit)
    }
}

/// A model's update history, newest first (by version, then parameter).
pub async fn updates(
    conn: &mut PgConnection,
    model_id: Uuid,
    filter: &HistoryFilter,
) -> Result<Vec<UpdateRow>, TimelineError> {
    let limit = filter.validate()?;
    horizon(&mut *conn, model_id).await?;
    // Only the conditions in use, so each shape gets its own plan (and index).
    let mut sql = String::from(
        "SELECT model_version, parameter_id, old_value, new_value, update_type, learning_rate,
                source, timestamp, opt_m, opt_v, update_count, feature_mean, feature_m2, metadata
         FROM parameter_updates WHERE model_id = $1",
    );
    let mut n = 2;
    let mut next = |sql: &mut String, condition: &str| {
        sql.push_str(&condition.replace('?', &format!("${n}")));
        n += 1;
    };
    if filter.parameter.is_some() {
        next(&mut sql, " AND parameter_id = ?");
    }
    if filter.since.is_some() {
        next(&mut sql, " AND timestamp >= ?");
    }
    if filter.until.is_some() {
        next(&mut sql, " AND timestamp < ?");
    }
    next(
        &mut sql,
        " ORDER BY model_version DESC, parameter_id COLLATE \"C\" LIMIT ?",
    );
    let mut query = sqlx::query_as(&sql).bind(model_id);
    if let Some(p) = &filter.parameter {
        query = query.bind(p);
    }
    if let Some(t) = filter.since {
        query = query.bind(t);
    }
    if let Some(t) = filter.until {
        query = query.bind(t);
    }
    Ok(query.bind(limit).fetch_all(&mut *conn).await?)
}

/// What `prune` did (or, with `dry_run`, would do), and why.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub model_id: Uuid,
    pub before: DateTime<Utc>,
    pub dry_run: bool,
    pub current_version: i64,
    /// The newest version whose every predecessor was created before `before`.
    pub last_version_before: i64,
    /// The snapshot the retained history now starts from, when there is one at or below
    /// `last_version_before`.
    pub floor_snapshot: Option<Uuid>,
    /// History of versions 1..=this is gone (was `previous_pruned_through`).
    pub pruned_through: i64,
    pub previous_pruned_through: i64,
    pub deleted_rows: i64,
    /// History rows older than `before` that were kept: their versions come after the floor
    /// snapshot, so reconstructing them (and everything later) needs those rows.
    pub kept_rows_before: i64,
    /// Versions that can no longer be reconstructed (`first..=last`), apart from
    /// `unreachable_except` (versions with a snapshot of their own).
    pub unreachable: Option<(i64, i64)>,
    pub unreachable_except: Vec<i64>,
    /// What was kept and why, for people.
    pub notes: Vec<String>,
}

/// Deletes a model's history rows older than `before`, but only as far as a snapshot still covers
/// every version that remains reachable: with S the newest snapshot at a version all of whose
/// history is older than `before`, the rows of versions 1..=S go, and every version from S on
/// stays reconstructible (S plus the rows above it). Versions below S become unreachable (except
/// those with a snapshot of their own); rows older than `before` above S are kept. Without such a
/// snapshot nothing is deleted. The floor snapshot cannot be deleted while it is the floor.
/// Runs in the caller's transaction (which holds the model's lock from the update of its
/// horizon until it ends).
pub async fn prune(
    tx: &mut PgConnection,
    model_id: Uuid,
    before: DateTime<Utc>,
    dry_run: bool,
) -> Result<PruneReport, TimelineError> {
    let h = horizon(&mut *tx, model_id).await?;
    let last_version_before: i64 = sqlx::query_scalar(
        "SELECT coalesce(min(model_version), $2 + 1) - 1 FROM model_versions
         WHERE model_id = $1 AND created_at >= $3",
    )
    .bind(model_id)
    .bind(h.current)
    .bind(before)
    .fetch_one(&mut *tx)
    .await?;
    // The floor candidate, share-locked: a concurrent `snapshot delete` of it waits for us and
    // then sees the new horizon.
    let floor: Option<(Uuid, i64)> = sqlx::query_as(
        "SELECT snapshot_id, model_version FROM snapshots
         WHERE model_id = $1 AND model_version <= $2 AND model_version > 0
         ORDER BY model_version DESC, created_at DESC, snapshot_id
         LIMIT 1 FOR KEY SHARE",
    )
    .bind(model_id)
    .bind(last_version_before)
    .fetch_optional(&mut *tx)
    .await?;
    let mut report = PruneReport {
        model_id,
        before,
        dry_run,
        current_version: h.current,
        last_version_before,
        floor_snapshot: None,
        pruned_through: h.pruned_through,
        previous_pruned_through: h.pruned_through,
        deleted_rows: 0,
        kept_rows_before: 0,
        unreachable: None,
        unreachable_except: Vec::new(),
        notes: Vec::new(),
    };
    let count_kept = |from: i64| {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM parameter_updates
             WHERE model_id = $1 AND model_version > $2 AND timestamp < $3",
        )
        .bind(model_id)
        .bind(from)
        .bind(before)
    };
    match floor {
        None => {
            report.kept_rows_before = count_kept(h.pruned_through).fetch_one(&mut *tx).await?;
            report.notes.push(format!(
                "nothing deleted: no snapshot at or below version {last_version_before} (the last \
                 version older than {before}) covers the history to delete; take one \
                 (`olps snapshot create`) or enable automatic snapshots, then prune again"
            ));
        }
        Some((_, version)) if version <= h.pruned_through => {
            report.kept_rows_before = count_kept(h.pruned_through).fetch_one(&mut *tx).await?;
            report.notes.push(format!(
                "nothing deleted: the history of versions 1..={} is already pruned and no later \
                 snapshot at or below version {last_version_before} covers more",
                h.pruned_through
            ));
        }
        Some((snapshot_id, version)) => {
            report.floor_snapshot = Some(snapshot_id);
            report.pruned_through = version;
            report.deleted_rows = if dry_run {
                sqlx::query_scalar(
                    "SELECT count(*) FROM parameter_updates
                     WHERE model_id = $1 AND model_version <= $2",
                )
                .bind(model_id)
                .bind(version)
                .fetch_one(&mut *tx)
                .await?
            } else {
                let deleted = sqlx::query(
                    "DELETE FROM parameter_updates WHERE model_id = $1 AND model_version <= $2",
                )
                .bind(model_id)
                .bind(version)
                .execute(&mut *tx)
                .await?
                .rows_affected() as i64;
                // Last, so the model row is locked (and a worker batch or rollback waits) only
                // for the moment before commit; a rollback holding it makes this wait, so it never
                // reads history this deletes with the old horizon.
                models::raise_pruned_through(&mut *tx, model_id, version).await?;
                deleted
            };
            report.kept_rows_before = count_kept(version).fetch_one(&mut *tx).await?;
            report.notes.push(format!(
                "{} the history of versions 1..={version}: snapshot {snapshot_id} (version \
                 {version}) covers them; versions {version}..={} stay reachable",
                if dry_run { "would delete" } else { "deleted" },
                h.current
            ));
        }
    }
    if report.kept_rows_before > 0 {
        report.notes.push(format!(
            "kept {} history rows older than {before}: they belong to versions {}..={}, which \
             no snapshot covers, and reconstructing those versions (and every later one) needs \
             them",
            report.kept_rows_before,
            report.pruned_through + 1,
            last_version_before
        ));
    }
    if report.pruned_through > 1 {
        report.unreachable_except = sqlx::query_scalar(
            "SELECT DISTINCT model_version FROM snapshots
             WHERE model_id = $1 AND model_version BETWEEN 1 AND $2 - 1 ORDER BY 1",
        )
        .bind(model_id)
        .bind(report.pruned_through)
        .fetch_all(&mut *tx)
        .await?;
        report.unreachable = Some((1, report.pruned_through - 1));
        let except = if report.unreachable_except.is_empty() {
            String::new()
        } else {
            format!(
                " (except {}, which have snapshots of their own)",
                report
                    .unreachable_except
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        report.notes.push(format!(
            "versions 1..={} {} reachable for rollback or point-in-time reads{except}",
            report.pruned_through - 1,
            if dry_run {
                "would no longer be"
            } else {
                "are no longer"
            }
        ));
    }
    Ok(report)
}

/// Parses a moment given by a person or a script: RFC 3339 (`2026-11-25T17:00:00Z`), the same
/// with a space, a naive date-time (UTC), or a date (midnight UTC).
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(&t.replacen(' ', "T", 1)) {
        return Ok(dt.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, format) {
            return Ok(naive.and_utc());
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(date.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    Err(format!(
        "'{text}' is not a time: use RFC 3339 like 2026-11-25T17:00:00Z, or 2026-11-25 17:00:00 \
         (UTC), or a date"
    ))
}
