//! `olps demo` at a small size on the test database: every event processed, the rollback
//! restores the snapshot's accuracy, the SVG is XML, the printed commands run, and the same seed
//! gives the same report.

use olps::demo::{DemoArgs, DemoReport};

use crate::common::{TestDb, OLPS};

async fn run_demo(db: &TestDb, out: &std::path::Path) -> DemoReport {
    let args = DemoArgs {
        events: 1_200,
        seed: 7,
        keep: false,
        chunk: 50,
        out: out.to_path_buf(),
        olps_bin: Some(OLPS.into()),
        quiet: true,
    };
    let database = olps::db::Database {
        url: db.url.clone(),
        description: "test database".into(),
        embedded: false,
    };
    olps::demo::run(args, &database).await.expect("demo runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_end_to_end_and_is_deterministic() {
    let db = TestDb::new().await;
    let out = std::env::temp_dir().join(format!("olps-demo-test-{}", uuid::Uuid::new_v4()));
    let report = run_demo(&db, &out).await;

    // Every event processed, none pending or dead.
    let (processed, total, queued): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE processed), count(*),
                (SELECT count(*) FROM feedback_queue WHERE model_id = $1)
         FROM feedback_events WHERE model_id = $1",
    )
    .bind(report.model_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (processed, total, queued),
        (report.events as i64, report.events as i64, 0)
    );
    // Every label named its prediction and carried no features (delayed labels by prediction
    // id); each trained on its own logged prediction.
    assert_eq!(
        report.labels_by_prediction_id,
        (report.events as i64, report.events as i64),
        "{report:#?}"
    );
    assert!(report.text.contains("delayed labels by prediction_id"));

    // The rollback restores the snapshot's parameters, so held-out accuracy is the same.
    assert!(
        (report.holdout_after_rollback - report.holdout_at_snapshot).abs() < 1e-9,
        "{report:#?}"
    );
    assert!(
        report.holdout_after_bad_feed < report.holdout_at_snapshot,
        "the bad feed hurt"
    );
    assert!(report.rollback_version > report.snapshot_before_bad_feed.1);
    assert!(
        !report.drift_events.is_empty(),
        "the pattern change is detected"
    );

    // The SVG exists and is XML.
    let svg = std::fs::read_to_string(&report.svg).expect("svg written");
    let doc = roxmltree::Document::parse(&svg).expect("svg parses as XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(report.text.contains(&report.svg.display().to_string()));

    // The printed commands run.
    for command in &report.commands {
        let words: Vec<String> = command
            .replace("$DATABASE_URL", &db.url)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let program = match words[0].as_str() {
            "olps" => OLPS.to_string(),
            other => other.to_string(),
        };
        let output = std::process::Command::new(program)
            .args(&words[1..])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("DATABASE_URL", &db.url)
            .output()
            .expect("command starts");
        assert!(
            output.status.success(),
            "{command}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    // The same seed gives the same numbers and versions.
    let again = run_demo(&db, &out).await;
    assert_eq!(again.versions, report.versions);
    assert_eq!(again.rollback_version, report.rollback_version);
    assert_eq!(again.drift_events, report.drift_events);
    for (a, b) in [
        (again.accuracy_before_change, report.accuracy_before_change),
        (
            again.accuracy_after_change_first_chunks,
            report.accuracy_after_change_first_chunks,
        ),
        (again.accuracy_recovered, report.accuracy_recovered),
        (again.accuracy_end, report.accuracy_end),
        (again.holdout_at_snapshot, report.holdout_at_snapshot),
        (again.holdout_after_bad_feed, report.holdout_after_bad_feed),
        (again.holdout_after_rollback, report.holdout_after_rollback),
    ] {
        assert_eq!(a.to_bits(), b.to_bits());
    }
    let _ = std::fs::remove_dir_all(&out);
}
