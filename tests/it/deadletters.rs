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
