//! Prometheus metrics for alerting (issue 19, part 5), against a real PostgreSQL: the alert rules
//! (deploy/prometheus/olps-rules.yml) and the Grafana dashboard (deploy/grafana/
//! olps-dashboard.json) are parsed, and every metric they use must be exported by GET /metrics;
//! the drift, quarantine, dead-letter and queue-by-priority gauges say what the database holds.

use std::collections::BTreeSet;
use std::path::Path;

use olps::learner::ModelKind;
use olps::serving::ServingConfig;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::*;

/// The `olps_*` metric names in a PromQL expression.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let mut rest = expr;
    while let Some(at) = rest.find("olps_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        into.insert(name);
    }
}

/// The metrics the rules file uses: those of every `expr:`, and the file is a list of groups
/// of rules each with an alert name and an expression.
fn rules_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let (mut alerts, mut exprs) = (0, 0);
    for line in text.lines() {
        let line = line.trim();
        if let Some(expr) = line.strip_prefix("expr:") {
            let expr = expr.trim();
            assert!(
                !expr.is_empty() && expr != "|" && expr != ">",
                "write each expr on its line: {line}"
            );
            metric_names(expr, &mut names);
            exprs += 1;
        }
        if line.starts_with("- alert:") {
            alerts += 1;
        }
    }
    assert!(text.starts_with('#') || text.starts_with("groups:"));
    assert!(text.contains("\ngroups:\n") || text.starts_with("groups:"));
    assert_eq!(alerts, exprs, "every alert has one expr");
    assert!(alerts >= 4, "{alerts} alerts");
    names
}

/// The metrics the dashboard uses: in every string of the document (panel targets and
/// template queries).
fn dashboard_metrics(value: &Value, into: &mut BTreeSet<String>) {
    match value {
        Value::String(s) => metric_names(s, into),
        Value::Array(items) => items.iter().for_each(|v| dashboard_metrics(v, into)),
        Value::Object(map) => map.values().for_each(|v| dashboard_metrics(v, into)),
        _ => {}
    }
}

/// The metric families a Prometheus text document declares (`# TYPE name kind`).
fn exported(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let mut parts = l.split(' ');
            (
                parts.next().unwrap().to_string(),
                parts.next().unwrap().to_string(),
            )
        })
        .collect()
}

fn sample(metrics: &str, line_start: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_use_is_exported() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let rules = std::fs::read_to_string(root.join("prometheus/olps-rules.yml")).unwrap();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/olps-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));
    let mut used = rules_metrics(&rules);
    for required in [
        "olps_model_drift_events",
        "olps_model_quarantined",
        "olps_dead_letters",
        "olps_queue_oldest_pending_age_by_priority_seconds",
    ] {
        assert!(used.contains(required), "the rules alert on {required}");
    }
    dashboard_metrics(&dashboard, &mut used);

    // A model with traffic of every kind the metrics describe.
    let (db, model) = TestDb::with_model("alerting-metrics", ModelKind::Logistic).await;
    let service = Service::start(&db.pool, ServingConfig::default()).await;
    let (status, answer) = service
        .post(
            "/v1/models/alerting-metrics/predict",
            &json!({"features": {"x": 1.0}, "entity_id": "a"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let prediction_id = answer["prediction_id"].as_str().unwrap().to_string();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM prediction_log WHERE model_id = $1")
        .bind(model.model_id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "prediction not logged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, _) = service
        .post(
            "/v1/models/alerting-metrics/feedback",
            &json!({"entity_id": "a", "feedback_type": "explicit", "feedback_value": 1,
                    "prediction_id": prediction_id}),
        )
        .await;
    assert_eq!(status, 202);
    // A row without features for an entity never predicted (dead letter: no_features).
    sqlx::query(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value)
         VALUES ($1, 'nobody', 'explicit', 1)",
    )
    .bind(model.model_id)
    .execute(&db.pool)
    .await
    .unwrap();
    let stats = drain(&db.pool, 100).await;
    assert_eq!((stats.examples, stats.dead), (1, 1), "{stats:?}");
    // Left pending: two implicit events (priority 0.5), one explicit (1).
    sqlx::query(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, metadata)
         VALUES ($1, 'p', 'implicit', 1, '{\"features\": {}}'), ($1, 'q', 'implicit', 0, '{\"features\": {}}'),
                ($1, 'r', 'explicit', 1, '{\"features\": {}}')",
    )
    .bind(model.model_id)
    .execute(&db.pool)
    .await
    .unwrap();
    // A drift event and a quarantine, as the worker and its guard store them.
    sqlx::query(
        "INSERT INTO drift_events (model_id, model_version, detector, statistic, threshold,
                                   at_example, adaptation)
         VALUES ($1, 1, 'adwin', 3.0, 1.0, 1, 'boost')",
    )
    .bind(model.model_id)
    .execute(&db.pool)
    .await
    .unwrap();
    assert!(
        olps::monitor::quarantine(&db.pool, model.model_id, "test: guard tripped")
            .await
            .unwrap()
    );

    let text = service.text("/metrics").await;
    let families = exported(&text);
    let histograms: BTreeSet<&str> = families
        .iter()
        .filter(|(_, kind)| kind == "histogram")
        .map(|(name, _)| name.as_str())
        .collect();
    let names: BTreeSet<&str> = families.iter().map(|(name, _)| name.as_str()).collect();
    let mut missing = Vec::new();
    for name in &used {
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| histograms.contains(base))
            })
            .unwrap_or(name);
        let has_sample = text
            .lines()
            .any(|l| l.starts_with(name.as_str()) && l[name.len()..].starts_with(['{', ' ']));
        if !names.contains(family) || !has_sample {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "used by deploy/ but not exported: {missing:?}\n{text}"
    );

    // The gauges say what the database holds.
    let m = "model=\"alerting-metrics\"";
    let expect = [
        (format!("olps_model_quarantined{{{m}}}"), 1.0),
        (format!("olps_model_drift_events{{{m}}}"), 1.0),
        (
            format!("olps_dead_letters{{{m},reason=\"no_features\"}}"),
            1.0,
        ),
        (
            format!("olps_dead_letters{{{m},reason=\"prediction_id\"}}"),
            0.0,
        ),
        (
            format!("olps_queue_depth_by_priority{{{m},priority=\"0.5\"}}"),
            2.0,
        ),
        (
            format!("olps_queue_depth_by_priority{{{m},priority=\"1\"}}"),
            1.0,
        ),
        (format!("olps_label_delay_seconds_count{{{m}}}"), 1.0),
    ];
    for (line, value) in expect {
        assert_eq!(sample(&text, &line), Some(value), "{line}\n{text}");
    }
    let age = sample(
        &text,
        &format!("olps_queue_oldest_pending_age_by_priority_seconds{{{m},priority=\"0.5\"}}"),
    )
    .unwrap();
    assert!((0.0..60.0).contains(&age), "{age}");
    // Dead letters of an unknown model are labelled with its UUID.
    let unknown = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, metadata)
         VALUES ($1, 'x', 'explicit', 1, '{\"features\": {}}')",
    )
    .bind(unknown)
    .execute(&db.pool)
    .await
    .unwrap();
    olps::worker::queue::dead_letter_unknown_models(&db.pool, olps::citus::Topology::Single)
        .await
        .unwrap();
    let text = service.text("/metrics").await;
    assert_eq!(
        sample(
            &text,
            &format!("olps_dead_letters{{model=\"{unknown}\",reason=\"unknown_model\"}}")
        ),
        Some(1.0),
        "{text}"
    );
}
