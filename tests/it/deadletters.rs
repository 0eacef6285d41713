//! Dead letters a person can act on (issue 13 item 7): `olps deadletters list` shows the rows
//! the worker set aside with their reasons; once the cause is fixed, `olps deadletters requeue`
//! puts them back, and the worker learns each exactly once.

use olps::learner::ModelKind;
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn a_dead_letter_fixed_and_requeued_is_learned_exactly_once() {
    let (db, model) = TestDb::with_model("dead-cli", ModelKind::Linear).await;
    let pool = &db.pool;
    let id = model.model_id;
    let cli = Cli::new(&db.url);
    let good = sparse_stream(30, 2, 6, false, 8);
    insert_stream(pool, id, &good[..20]).await;
    // A row a client wrote by SQL with a feature that is not a number, and one with a label
    // that is not finite.
    sqlx::query(
        r#"INSERT INTO feedback_events (model_id, entity_id, feedback_type, feedback_value, metadata)
           VALUES ($1, 'bad-feature', 'explicit', 0.5, '{"features": {"f1": "twelve"}}'),
                  ($1, 'bad-label', 'explicit', 'Infinity', '{"features": {"f1": 1}}')"#,
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
    insert_stream(pool, id, &good[20..]).await;
    let stats = drain(pool, 100).await;
    assert_eq!((stats.examples, stats.dead), (30, 2));

    // Listed, newest first, with the reason.
    let listed: Value = serde_json::from_str(
        &cli.ok("deadletters list --model dead-cli --format json")
            .await,
    )
    .unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let bad = listed
        .iter()
        .find(|d| d["entity_id"] == "bad-feature")
        .unwrap();
    assert!(
        bad["dead_reason"]
            .as_str()
            .unwrap()
            .contains("metadata.features.f1: is not a number"),
        "{bad}"
    );
    assert_eq!(bad["model_name"], "dead-cli");
    let feedback_id = bad["feedback_id"].as_str().unwrap().to_string();
    let table = cli.ok("deadletters list --reason-like NOT%NUMBER").await;
    assert!(
        table.contains("bad-feature") && !table.contains("bad-label"),
        "{table}"
    );
    let none: Value = serde_json::from_str(
        &cli.ok("deadletters list --model dead-cli --reason-like nothing-like-this --format json")
            .await,
    )
    .unwrap();
    assert_eq!(none, serde_json::json!([]));

    // Fixed by SQL, requeued by its event id: learned once, after what was learned before.
    sqlx::query(
        r#"UPDATE feedback_events SET metadata = '{"features": {"f1": 12}}'
           WHERE model_id = $1 AND entity_id = 'bad-feature'"#,
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
    let out = cli
        .ok(&format!(
            "deadletters requeue --model dead-cli --id {feedback_id}"
        ))
        .await;
    assert!(
        out.contains("1 dead-lettered rows back in the queue"),
        "{out}"
    );
    let stats = drain(pool, 100).await;
    assert_eq!((stats.examples, stats.dead), (1, 0));
    let (processed, applied_version, queue_rows): (bool, Option<i64>, i64) = sqlx::query_as(
        "SELECT e.processed, e.applied_version,
                (SELECT count(*) FROM feedback_queue q WHERE q.model_id = e.model_id
                                                       AND q.feedback_id = e.id)
         FROM feedback_events e WHERE e.model_id = $1 AND e.entity_id = 'bad-feature'",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((processed, applied_version, queue_rows), (true, Some(2), 0));
    let mut learned = good.clone();
    learned.push((vec![("f1".to_string(), 12.0)], 0.5));
    assert_params_equal(pool, id, &learn_in_memory(&model, &learned)).await;
    assert_linear_history(pool, id).await;

    // It is not a dead letter any more: requeueing it again does nothing.
    let again = format!("deadletters requeue --model dead-cli --id {feedback_id}");
    let (args, out) = cli.run(&again).await;
    assert!(!out.status.success(), "{}", describe(&args, &out));
    assert!(
        stderr(&out).contains("is not a dead letter of this model"),
        "{}",
        describe(&args, &out)
    );
    assert_eq!(drain(pool, 100).await.examples, 0);

    // --all requeues the rest; a label that is still not finite is set aside again, once.
    let out = cli.ok("deadletters requeue --all").await;
    assert!(
        out.contains("1 dead-lettered rows back in the queue"),
        "{out}"
    );
    let stats = drain(pool, 100).await;
    assert_eq!((stats.examples, stats.dead), (0, 1));
    let listed: Value =
        serde_json::from_str(&cli.ok("deadletters list --format json").await).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["entity_id"], "bad-label");
    assert_params_equal(pool, id, &learn_in_memory(&model, &learned)).await;

    // The command says what it needs.
    let err = cli.fails("deadletters requeue").await;
    assert!(err.contains("--model") && err.contains("--all"), "{err}");
    let err = cli
        .fails(&format!("deadletters requeue --all --id {feedback_id}"))
        .await;
    assert!(err.contains("--id"), "{err}");
}

/// A statement the deployment cannot run (SQLSTATE 0A000 `feature_not_supported`, what Citus
/// raises for a plan it refuses) says nothing about the rows: the batch is retried as it is, no
/// row is dead-lettered, and once the cause is gone every row is applied exactly once. (The
/// refusal is provoked by a trigger raising that SQLSTATE when the batch marks its events
/// applied, a statement routed to one shard; on Citus the trigger runs there and the coordinator
/// passes the SQLSTATE on. A shard's error in a statement Citus runs through COPY, such as the
/// INSERT … SELECT of a version's record, reaches the worker as XX000 instead.)
#[tokio::test]
async fn a_feature_not_supported_error_dead_letters_nothing_and_the_batch_is_retried() {
    use olps::worker::{Worker, WorkerConfig};

    let (db, model) = TestDb::with_model("unsupported", ModelKind::Linear).await;
    let pool = &db.pool;
    let id = model.model_id;
    let rows = sparse_stream(40, 2, 6, false, 9);
    insert_stream(pool, id, &rows).await;
    // One statement each: Citus propagates each to the nodes on its own.
    for ddl in [
        "CREATE FUNCTION olps_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             RAISE EXCEPTION 'refused by the test' USING ERRCODE = 'feature_not_supported';
         END $$",
        "CREATE TRIGGER olps_test_refuse BEFORE UPDATE ON feedback_events
             FOR EACH ROW EXECUTE FUNCTION olps_test_refuse()",
    ] {
        sqlx::raw_sql(ddl).execute(pool).await.unwrap();
    }
    let config = WorkerConfig {
        batch_size: 16,
        maintenance_check: None,
        ..WorkerConfig::default()
    };
    let mut worker = Worker::new(pool.clone(), config);
    // More attempts than splitting 16 rows down to one row would take (5): a row fault would
    // have dead-lettered a row by now.
    for attempt in 0..8 {
        let error = worker
            .run_batch(id)
            .await
            .expect_err("the batch is refused");
        assert!(
            error.is_transient() && error.to_string().contains("refused by the test"),
            "attempt {attempt}: {error:?}"
        );
    }
    let (pending, dead): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), count(*) FILTER (WHERE status = 'dead')
         FROM feedback_queue WHERE model_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((pending, dead), (40, 0), "nothing set aside, nothing lost");
    assert_eq!(current_version(pool, id).await, 0);

    sqlx::query("DROP TRIGGER olps_test_refuse ON feedback_events")
        .execute(pool)
        .await
        .unwrap();
    let stats = drain(pool, 16).await;
    assert_eq!((stats.examples, stats.dead), (40, 0));
    let (applied, seen): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM feedback_events
                 WHERE model_id = $1 AND processed AND applied_version IS NOT NULL),
                (SELECT examples_seen FROM models WHERE model_id = $1)",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((applied, seen), (40, 40), "every row applied exactly once");
    assert_eq!(assert_linear_history(pool, id).await, 3, "16 + 16 + 8 rows");
}
