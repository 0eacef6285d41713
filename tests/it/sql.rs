//! The analysts' queries in `sql/`: every file runs through psql (with its variables) against a
//! fixture built through the public interfaces, and its rows are checked against what the fixture
//! recorded or what the tables hold.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use olps::learner::{LearnerConfig, ModelKind, OptimizerKind, ParamState};
use olps::timeline::history::HistoryFilter;
use olps::timeline::reconstruct::At;
use olps::timeline::rollback::RollbackTarget;
use uuid::Uuid;

use crate::common::*;

pub(crate) type Rows = Vec<HashMap<String, String>>;
/// timestamp, update_type, source, learning_rate
type UpdateRow = (DateTime<Utc>, String, Option<String>, Option<f64>);
/// model_version, kind, rolled_back_to, examples, dead_lettered, parameters_changed, examples_seen
type VersionRow = (i64, String, Option<i64>, i32, i32, i32, i64);

fn psql_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("psql").is_file() {
                return dir.join("psql");
            }
        }
    }
    olps::embedded::find_pg_bin_dir()
        .map(|d| d.join("psql"))
        .filter(|p| p.is_file())
        .expect("psql is needed to run the files in sql/ (install the PostgreSQL client)")
}

/// Runs `sql/<file>` with psql and the given variables; returns its rows by column name.
pub(crate) async fn run_sql(url: &str, file: &str, vars: &[(&str, String)]) -> Rows {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/").to_string() + file;
    let mut cmd = tokio::process::Command::new(psql_binary());
    cmd.arg(url)
        .args(["-X", "-q", "--csv", "-v", "ON_ERROR_STOP=1", "-f", &path])
        .env("PGTZ", "UTC");
    for (name, value) in vars {
        cmd.arg("-v").arg(format!("{name}={value}"));
    }
    let out = cmd.output().await.expect("run psql");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut records = parse_csv(&stdout).into_iter();
    let header = records
        .next()
        .unwrap_or_else(|| panic!("{file}: no header"));
    records
        .map(|r| header.iter().cloned().zip(r).collect())
        .collect()
}

/// RFC 4180 CSV, as psql --csv writes it.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, '\r') => {}
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

pub(crate) fn f(row: &HashMap<String, String>, column: &str) -> f64 {
    row[column]
        .parse()
        .unwrap_or_else(|_| panic!("{column}: '{}' is not a number", row[column]))
}

pub(crate) fn opt_f(row: &HashMap<String, String>, column: &str) -> Option<f64> {
    (!row[column].is_empty()).then(|| f(row, column))
}

pub(crate) fn i(row: &HashMap<String, String>, column: &str) -> i64 {
    row[column]
        .parse()
        .unwrap_or_else(|_| panic!("{column}: '{}' is not an integer", row[column]))
}

fn ts(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
        .unwrap_or_else(|e| panic!("'{text}': {e}"))
        .with_timezone(&Utc)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0)
}

/// `challengers.sql` is checked by `shadow::comparison_from_route_sql_and_by_hand_agree`.
const FILES: [&str; 11] = [
    "audit_trail.sql",
    "challengers.sql",
    "dead_letters.sql",
    "parameter_history.sql",
    "parameters_at.sql",
    "prequential_loss.sql",
    "queue_depth.sql",
    "requeue_dead_letters.sql",
    "top_movers.sql",
    "update_stats_5min.sql",
    "version_timeline.sql",
];

#[tokio::test]
async fn every_query_in_sql_returns_the_expected_rows() {
    // Every file in sql/ is checked below.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");
    let present: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    let checked: BTreeSet<String> = FILES.iter().map(|s| s.to_string()).collect();
    assert_eq!(present, checked, "a file in sql/ without a check here");

    // The fixture: a logistic model learning version by version, a snapshot, a rollback, dead
    // letters (including a row for an unknown model), and pending feedback for two models.
    let db = TestDb::new().await;
    let pool = &db.pool;
    let url = db.url.as_str();
    let settings = LearnerConfig {
        optimizer: OptimizerKind::Adam,
        learning_rate: 0.05,
        standardize: true,
        ..LearnerConfig::default()
    };
    let clicks = create_model(pool, "clicks", ModelKind::Logistic, settings).await;
    let id = clicks.model_id;
    let prices = create_model(pool, "prices", ModelKind::Linear, LearnerConfig::default()).await;
    let rows = sparse_stream(480, 4, 30, true, 11);
    let mut recorded = BTreeMap::new();
    recorded.insert(0, State::new());
    insert_stream(pool, id, &rows[..240]).await;
    step_all(pool, id, 40, &mut recorded).await; // 1..=6
    committed::create_snapshot(pool, id, Some("mid"))
        .await
        .unwrap();
    insert_stream(pool, id, &rows[240..400]).await;
    step_all(pool, id, 40, &mut recorded).await; // 7..=10
    let out = committed::rollback(pool, id, &RollbackTarget::Version(4))
        .await
        .unwrap(); // 11
    recorded.insert(out.version, State::load(pool, id).await);
    let unknown = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, metadata)
         VALUES ($1, 'bad-nan', 'explicit', 'NaN', '{\"features\": {\"f1\": 1}}'),
                ($1, 'bad-range', 'explicit', 2, '{\"features\": {\"f1\": 1}}'),
                ($1, 'bad-nofeatures', 'explicit', 1, '{\"note\": \"x, \\\"quoted\\\"\"}'),
                ($2, 'bad-model', 'explicit', 1, '{\"features\": {\"f1\": 1}}')",
    )
    .bind(id)
    .bind(unknown)
    .execute(pool)
    .await
    .unwrap();
    insert_stream(pool, id, &rows[400..440]).await;
    drain(pool, 100).await; // 12: 40 learned, 3 dead; the unknown model's row dead too
    recorded.insert(12, State::load(pool, id).await);
    insert_stream(pool, id, &rows[440..]).await; // 40 pending
    insert_stream(pool, prices.model_id, &seed_stream()[..5]).await; // 5 pending
    assert_eq!(current_version(pool, id).await, 12);

    // parameter_history.sql: the intercept's history, oldest first.
    let got = run_sql(
        url,
        "parameter_history.sql",
        &[
            ("model", "clicks".into()),
            ("parameter_id", "__intercept__".into()),
        ],
    )
    .await;
    let filter = HistoryFilter {
        parameter: Some("__intercept__".into()),
        ..Default::default()
    };
    let mut want = committed::updates(pool, id, &filter).await.unwrap();
    want.reverse();
    assert_eq!(got.len(), want.len());
    assert!(got.len() >= 10);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(i(g, "model_version"), w.model_version);
        assert_eq!(g["update_type"], w.update_type.as_str());
        assert_eq!(g["source"], w.source.clone().unwrap_or_default());
        assert_eq!(opt_f(g, "learning_rate"), w.learning_rate);
        assert_eq!(opt_f(g, "old_value"), w.old_value);
        assert_eq!(f(g, "new_value").to_bits(), w.new_value.to_bits());
        assert_eq!(f(g, "change"), w.new_value - w.old_value.unwrap_or(0.0));
        assert_eq!(i(g, "update_count"), w.update_count);
        assert_eq!(ts(&g["timestamp"]), w.timestamp);
    }
    assert_eq!(got[10]["update_type"], "rollback");

    // top_movers.sql: versions 2 -> 9 from the recorded states; 11 (= 4) -> 4 moves nothing.
    for (from, to, top) in [(2i64, 9i64, 5usize), (9, 2, 50), (11, 4, 5)] {
        let got = run_sql(
            url,
            "top_movers.sql",
            &[
                ("model", id.to_string()),
                ("from_version", from.to_string()),
                ("to_version", to.to_string()),
                ("top", top.to_string()),
            ],
        )
        .await;
        let (a, b) = (&recorded[&from], &recorded[&to]);
        let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let mut want: Vec<(String, Option<f64>, Option<f64>, f64)> = names
            .into_iter()
            .map(|n| {
                let (va, vb) = (a.get(n).map(|s| s.value), b.get(n).map(|s| s.value));
                (n.clone(), va, vb, vb.unwrap_or(0.0) - va.unwrap_or(0.0))
            })
            .filter(|w| w.3 != 0.0)
            .collect();
        want.sort_by(|x, y| y.3.abs().total_cmp(&x.3.abs()).then(x.0.cmp(&y.0)));
        want.truncate(top);
        let got: Vec<(String, Option<f64>, Option<f64>, f64)> = got
            .iter()
            .map(|g| {
                let name = g["parameter_id"].clone();
                (
                    name,
                    opt_f(g, "value_from"),
                    opt_f(g, "value_to"),
                    f(g, "change"),
                )
            })
            .collect();
        assert_eq!(got, want, "top_movers {from} -> {to}");
        assert_eq!(
            got.is_empty(),
            from == 11,
            "{from} -> {to}: 11 holds 4's state"
        );
    }

    // parameters_at.sql: version 6 (its snapshot) and 9 (snapshot plus history).
    for version in [6i64, 9] {
        let got = run_sql(
            url,
            "parameters_at.sql",
            &[("model", "clicks".into()), ("version", version.to_string())],
        )
        .await;
        let state: State = got
            .iter()
            .map(|g| {
                let s = ParamState {
                    value: f(g, "value"),
                    m: f(g, "opt_m"),
                    v: f(g, "opt_v"),
                    count: i(g, "update_count"),
                    mean: f(g, "feature_mean"),
                    m2: f(g, "feature_m2"),
                };
                (g["parameter_id"].clone(), s)
            })
            .collect();
        assert_eq!(state.len(), recorded[&version].len());
        for (name, s) in &recorded[&version] {
            assert_eq!(state_bits(&state[name]), state_bits(s), "v{version} {name}");
        }
        assert!(got.iter().all(|g| i(g, "last_version") <= version));
    }

    // update_stats_5min.sql: counts and learning rates per bucket, type and source.
    let got = run_sql(
        url,
        "update_stats_5min.sql",
        &[("model", "clicks".into()), ("hours", "24".into())],
    )
    .await;
    let updates: Vec<UpdateRow> = sqlx::query_as(
        "SELECT timestamp, update_type, source, learning_rate FROM parameter_updates
         WHERE model_id = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut buckets: BTreeMap<(i64, String, String), Vec<Option<f64>>> = BTreeMap::new();
    for (t, kind, source, rate) in &updates {
        let bucket = t.timestamp().div_euclid(300) * 300;
        let key = (bucket, kind.clone(), source.clone().unwrap_or_default());
        buckets.entry(key).or_default().push(*rate);
    }
    assert_eq!(got.len(), buckets.len());
    for (g, ((bucket, kind, source), rates)) in got.iter().zip(&buckets) {
        assert_eq!(ts(&g["bucket"]).timestamp(), *bucket);
        assert_eq!((&g["update_type"], &g["source"]), (kind, source));
        assert_eq!(i(g, "update_count"), rates.len() as i64);
        let rates: Vec<f64> = rates.iter().flatten().copied().collect();
        if rates.is_empty() {
            assert_eq!(g["avg_learning_rate"], "", "rollback rows have no rate");
        } else {
            let mean = rates.iter().sum::<f64>() / rates.len() as f64;
            assert!(close(f(g, "avg_learning_rate"), mean), "{g:?} vs {mean}");
        }
    }
    let total: i64 = got.iter().map(|g| i(g, "update_count")).sum();
    assert_eq!(total, updates.len() as i64);

    // version_timeline.sql: one row per version, with the events each applied.
    let got = run_sql(url, "version_timeline.sql", &[("model", "clicks".into())]).await;
    let versions: Vec<VersionRow> = sqlx::query_as(
        "SELECT model_version, kind, rolled_back_to, examples, dead_lettered, parameters_changed,
                examples_seen
         FROM model_versions WHERE model_id = $1 ORDER BY 1",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    let applied: Vec<Option<i64>> =
        sqlx::query_scalar("SELECT applied_version FROM feedback_events WHERE model_id = $1")
            .bind(id)
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(got.len(), 12);
    for (g, v) in got.iter().zip(&versions) {
        assert_eq!(i(g, "model_version"), v.0);
        assert_eq!(g["kind"], v.1);
        assert_eq!(
            g["rolled_back_to"],
            v.2.map(|x| x.to_string()).unwrap_or_default()
        );
        let events = applied.iter().filter(|a| **a == Some(v.0)).count() as i64;
        assert_eq!(i(g, "feedback_applied"), events);
        assert_eq!(i(g, "examples"), v.3 as i64);
        assert_eq!(
            events, v.3 as i64,
            "a learned version applied its batch's events"
        );
        assert_eq!(
            (
                i(g, "dead_lettered"),
                i(g, "parameters_changed"),
                i(g, "examples_seen")
            ),
            (v.4 as i64, v.5 as i64, v.6)
        );
        let snapshot = if v.0 == 6 { "mid" } else { "" };
        assert_eq!(g["snapshots"], snapshot);
    }
    assert_eq!(
        (got[10]["kind"].as_str(), got[10]["rolled_back_to"].as_str()),
        ("rollback", "4")
    );
    assert_eq!(i(&got[11], "dead_lettered"), 3);

    // prequential_loss.sql: per learned version, moving over 3 and cumulative.
    let got = run_sql(
        url,
        "prequential_loss.sql",
        &[("model", "clicks".into()), ("window", "3".into())],
    )
    .await;
    let learned: Vec<(i64, i32, f64, Option<i32>)> = sqlx::query_as(
        "SELECT model_version, examples, loss_sum, correct FROM model_versions
         WHERE model_id = $1 AND kind = 'gradient' ORDER BY 1",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(got.len(), learned.len());
    assert_eq!(got.len(), 11, "12 versions, one of them a rollback");
    for (k, (g, v)) in got.iter().zip(&learned).enumerate() {
        assert_eq!(i(g, "model_version"), v.0);
        assert_eq!(f(g, "mean_loss"), v.2 / v.1 as f64);
        let window = &learned[k.saturating_sub(2)..=k];
        let (loss, n) = window.iter().fold((0.0, 0), |(l, n), w| (l + w.2, n + w.1));
        assert!(close(f(g, "moving_mean_loss"), loss / n as f64));
        let (loss, n, correct) = learned[..=k].iter().fold((0.0, 0, 0), |(l, n, c), w| {
            (l + w.2, n + w.1, c + w.3.unwrap())
        });
        assert!(close(f(g, "cumulative_mean_loss"), loss / n as f64));
        assert_eq!(f(g, "accuracy"), v.3.unwrap() as f64 / v.1 as f64);
        assert!(close(
            f(g, "cumulative_accuracy"),
            correct as f64 / n as f64
        ));
    }

    // queue_depth.sql: clicks 40 pending and 3 dead, prices 5 pending, the unknown model 1 dead.
    let got = run_sql(url, "queue_depth.sql", &[]).await;
    let oldest: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT model_id, min(created_at) FROM feedback_queue WHERE status = 'pending'
         GROUP BY model_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let oldest: HashMap<String, DateTime<Utc>> = oldest
        .into_iter()
        .map(|(m, t)| (m.to_string(), t))
        .collect();
    let summary: Vec<(String, String, i64, i64)> = got
        .iter()
        .map(|g| {
            (
                g["model_id"].clone(),
                g["name"].clone(),
                i(g, "pending"),
                i(g, "dead"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (id.to_string(), "clicks".into(), 40, 3),
            (prices.model_id.to_string(), "prices".into(), 5, 0),
            (unknown.to_string(), String::new(), 0, 1),
        ]
    );
    for g in &got[..2] {
        assert_eq!(ts(&g["oldest_pending_at"]), oldest[&g["model_id"]]);
        assert!(!g["oldest_pending_age"].is_empty());
    }
    assert_eq!(got[2]["oldest_pending_at"], "");

    // dead_letters.sql: the four rows set aside, each with its reason.
    let got = run_sql(url, "dead_letters.sql", &[]).await;
    let mut dead: Vec<(String, String, String)> = got
        .iter()
        .map(|g| {
            (
                g["entity_id"].clone(),
                g["model_name"].clone(),
                g["dead_reason"].clone(),
            )
        })
        .collect();
    dead.sort();
    let expect = [
        ("bad-model", "", "model"),
        ("bad-nan", "clicks", "NaN"),
        ("bad-nofeatures", "clicks", "features"),
        ("bad-range", "clicks", "between 0 and 1"),
    ];
    assert_eq!(dead.len(), expect.len());
    for ((entity, model, reason), (e, m, needle)) in dead.iter().zip(expect) {
        assert_eq!((entity.as_str(), model.as_str()), (e, m));
        assert!(reason.contains(needle), "{entity}: {reason}");
    }
    let metadata: serde_json::Value = serde_json::from_str(
        &got.iter()
            .find(|g| g["entity_id"] == "bad-nofeatures")
            .unwrap()["metadata"],
    )
    .unwrap();
    assert_eq!(metadata, serde_json::json!({"note": "x, \"quoted\""}));

    // requeue_dead_letters.sql: the model's dead letters whose reason matches, back to pending.
    let got = run_sql(
        url,
        "requeue_dead_letters.sql",
        &[
            ("model", "clicks".into()),
            ("reason_like", "BETWEEN 0 and 1".into()),
        ],
    )
    .await;
    assert_eq!(
        got.iter()
            .map(|g| g["entity_id"].as_str())
            .collect::<Vec<_>>(),
        ["bad-range"]
    );
    let (status, reason): (String, Option<String>) = sqlx::query_as(
        "SELECT q.status, q.dead_reason FROM feedback_queue q
         JOIN feedback_events e ON e.model_id = q.model_id AND e.id = q.feedback_id
         WHERE e.entity_id = 'bad-range'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), reason), ("pending", None));
    assert_eq!(run_sql(url, "dead_letters.sql", &[]).await.len(), 3);
    // Put back as it was, for the checks below.
    sqlx::query(
        "UPDATE feedback_queue SET status = 'dead', dead_reason = 'between 0 and 1', dead_at = now()
         WHERE feedback_id = (SELECT id FROM feedback_events WHERE entity_id = 'bad-range')",
    )
    .execute(pool)
    .await
    .unwrap();
    // Reading through the library agrees with the SQL function at the current version.
    let now = committed::parameters_at(pool, id, At::Current)
        .await
        .unwrap();
    assert_eq!(now.parameters.len(), recorded[&12].len());
}

#[tokio::test]
async fn audit_trail_lists_who_changed_what() {
    // audit_trail.sql (in FILES above): a rollback and a snapshot over HTTP by a token, a revoked
    // token, and a command-line rollback.
    let db = TestDb::new().await;
    let pool = &db.pool;
    let model = create_model(pool, "audited", ModelKind::Linear, LearnerConfig::default()).await;
    insert_stream(pool, model.model_id, &sparse_stream(30, 2, 5, false, 3)).await;
    drain(pool, 10).await; // versions 1..=3
    let service = Service::start(pool, olps::serving::ServingConfig::default()).await;
    let (status, body) = service
        .post(
            "/v1/models/audited/rollback",
            &serde_json::json!({"to_version": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let http_version = body["version"].as_i64().unwrap();
    let (status, _) = service
        .post(
            "/v1/models/audited/snapshots",
            &serde_json::json!({"label": "after"}),
        )
        .await;
    assert_eq!(status, 201);
    let cli = Cli::new(&db.url);
    let out = cli.ok("rollback --model audited --to-version 2").await;
    let cli_version: i64 = out.lines().last().unwrap().trim().parse().unwrap();
    let token_name: String =
        sqlx::query_scalar("SELECT name FROM api_tokens ORDER BY created_at LIMIT 1")
            .fetch_one(pool)
            .await
            .unwrap();
    cli.ok(&format!("token revoke {token_name}")).await;

    let rows = run_sql(&db.url, "audit_trail.sql", &[]).await;
    let got: Vec<(String, String, String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["action"].clone(),
                r["actor"].clone(),
                r["token_name"].clone(),
                r["token_status"].clone(),
                r["new_version"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "token.revoke".into(),
                "cli".into(),
                "".into(),
                "".into(),
                "".into()
            ),
            (
                "rollback".into(),
                "cli".into(),
                "".into(),
                "".into(),
                cli_version.to_string()
            ),
            (
                "snapshot.create".into(),
                "token".into(),
                token_name.clone(),
                "revoked".into(),
                "".into()
            ),
            (
                "rollback".into(),
                "token".into(),
                token_name.clone(),
                "revoked".into(),
                http_version.to_string()
            ),
        ]
    );
    assert_eq!(rows[3]["model_name"], "audited");
    assert_eq!(rows[3]["http_status"], "200");
    assert_eq!(rows[3]["route"], "/v1/models/{model}/rollback");
    assert!(
        rows[3]["version_source"].starts_with(&format!("rollback by token {token_name} (")),
        "{:?}",
        rows[3]
    );
    assert!(
        rows[1]["version_source"].starts_with("rollback by cli ("),
        "{:?}",
        rows[1]
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(count as usize, rows.len());
}
