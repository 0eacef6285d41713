//! `olps bench all` at a tiny size: the harness is correct (every event really applied, every
//! scenario reports figures with baselines, the JSON and Markdown are written, and no bench model
//! or row is left behind). Speed is not checked here: timing claims live in the benchmarks.

use olps::bench::{self, BenchArgs, Scenario};

use crate::common::{TestDb, OLPS, SEED_STREAM};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_all_tiny_applies_everything_and_cleans_up() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("olps-bench-smoke-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();

    let mut args = BenchArgs::new(Scenario::All);
    args.events = Some(300);
    args.feature_pool = 200;
    args.models = 2;
    args.batch_size = 100;
    args.connections = 2;
    args.rate = 300.0;
    args.naive_events = Some(5);
    args.batch_sweep = Some(vec![300]);
    args.memory_events = Some(vec![300, 600]);
    args.snapshot_params = Some(vec![500]);
    args.quiet = true;
    args.olps_bin = Some(OLPS.into());
    // The repository's copy of the reference stream, for `learn`.
    args.data = Some(SEED_STREAM.into());
    args.json = Some(dir.join("bench.json"));
    args.markdown = Some(dir.join("BENCHMARKS.md"));

    let report = bench::run_on(&db.url, "test database", args.clone())
        .await
        .expect("olps bench all runs");

    for scenario in [
        "ingest",
        "drain",
        "freshness",
        "predict",
        "snapshot",
        "learn",
    ] {
        assert!(
            report.scenarios_run.iter().any(|s| s == scenario),
            "{scenario} did not run"
        );
        assert!(
            report.of(scenario).next().is_some(),
            "{scenario} reported no figure"
        );
    }
    for f in &report.figures {
        assert!(
            f.value.is_finite(),
            "{} / {}: {}",
            f.scenario,
            f.case,
            f.value
        );
        if let Some(b) = &f.baseline {
            assert!(b.value.is_finite(), "{} / {}: baseline", f.scenario, f.case);
        }
    }

    // Drain really applied every event, olps and baseline alike, and left no queue rows.
    let drained: Vec<_> = report
        .of("drain")
        .filter(|f| f.details.contains_key("applied"))
        .collect();
    assert!(drained.len() >= 4, "drain cases: {}", drained.len());
    for f in drained {
        assert_eq!(
            f.details["applied"], f.details["events"],
            "drain {}: not every event applied",
            f.case
        );
        assert_eq!(f.details["queue_left"], 0, "drain {}", f.case);
    }
    // Every drain case has its same-run baseline and ratio.
    let first = report
        .of("drain")
        .find(|f| f.case.starts_with("1 worker, 1 model"))
        .expect("1 worker, 1 model case");
    assert!(first.baseline.is_some() && first.ratio.is_some());
    // Memory was measured at both sizes, for the worker and the service.
    let memory = report.of("drain").filter(|f| f.metric == "MiB").count();
    assert_eq!(memory, 4);

    // The files.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("bench.json")).unwrap()).unwrap();
    assert!(json["figures"].as_array().unwrap().len() >= 10);
    let md = std::fs::read_to_string(dir.join("BENCHMARKS.md")).unwrap();
    assert!(md.contains("## Figures") && md.contains("### drain"));
    std::fs::remove_dir_all(&dir).ok();

    // Nothing left behind: no bench model, no row of one.
    let models: i64 = sqlx::query_scalar("SELECT count(*) FROM models")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(models, 0, "models left behind");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c
         JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_attribute a ON a.attrelid = c.oid
         WHERE c.relkind = 'r' AND n.nspname = current_schema() AND a.attname = 'model_id'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(tables.len() >= 6);
    for table in tables {
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{table}\""))
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(rows, 0, "rows left in {table}");
    }
}

#[test]
fn bench_command_line_parses() {
    use clap::Parser;
    let cli = olps::cli::Cli::try_parse_from([
        "olps",
        "bench",
        "drain",
        "--events",
        "1000",
        "--workers",
        "2",
        "--models",
        "3",
        "--batch-size",
        "500",
        "--memory-events",
        "0",
        "--json",
        "out.json",
    ])
    .expect("parses");
    match cli.command {
        olps::cli::Command::Bench(args) => {
            assert_eq!(args.scenario, Scenario::Drain);
            assert_eq!(args.events, Some(1000));
            assert_eq!(args.workers, Some(2));
            assert_eq!(args.models, 3);
            assert_eq!(args.batch_size, 500);
            assert_eq!(args.memory_events, Some(vec![0]));
        }
        other => panic!("parsed as {other:?}"),
    }
}

/// `olps bench soak`, a 9-second one: three phases of three intervals each, a snapshot really
/// held in the middle one, the worker keeping up with the feed, the figures and the table reported, and no
/// bench row left behind. Whether the queue stays healthy is the benchmark's verdict, not this
/// test's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_soak_short_run_reports_every_interval_and_cleans_up() {
    let db = TestDb::new().await;
    let mut args = BenchArgs::new(Scenario::Soak);
    args.seconds = Some(9.0);
    args.rate = 200.0;
    args.batch_size = 100;
    args.feature_pool = 200;
    args.quiet = true;
    let report = bench::run_on(&db.url, "test database", args)
        .await
        .expect("olps bench soak runs");
    let capacity = report
        .of("soak")
        .find(|f| f.case.contains("worker capacity during the hold"))
        .expect("capacity figure");
    assert!(capacity.value.is_finite() && capacity.value > 0.0);
    assert!(capacity.baseline.is_some() && capacity.met.is_some());
    let intervals = capacity.details["intervals"].as_array().unwrap();
    assert_eq!(intervals.len(), 9, "one row per second");
    let phases: Vec<&str> = intervals
        .iter()
        .map(|i| i["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        ["before", "before", "before", "hold", "hold", "hold", "after", "after", "after"]
    );
    let fed: u64 = intervals.iter().map(|i| i["fed"].as_u64().unwrap()).sum();
    assert!(fed >= 1000, "fed {fed} events at 200/s over 9 s");
    let depth = intervals[8]["depth"].as_i64().unwrap();
    assert!(
        depth < 600,
        "the worker kept up: {depth} events pending at the end"
    );
    for i in intervals {
        assert!(i["queue"]["table_bytes"].as_i64().unwrap() >= 0);
        assert!(i["events"]["table_bytes"].as_i64().unwrap() > 0);
    }
    assert!(report
        .of("soak")
        .any(|f| f.case.contains("feedback_queue size")));
    assert!(report
        .sections
        .iter()
        .any(|(s, md)| s == "soak" && md.contains("verdict:") && md.contains("| hold |")));
    let models: i64 = sqlx::query_scalar("SELECT count(*) FROM models")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(models, 0, "the soak's model was deleted");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM feedback_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "the soak's events were deleted");
}
