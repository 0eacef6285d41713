//! The HTTP API of the foundation: models and feedback ingest, against a real PostgreSQL.

use serde_json::{json, Value};

use crate::common::{counts, spawn_app};

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error.code>")
}

fn error_message(body: &Value) -> &str {
    body["error"]["message"]
        .as_str()
        .unwrap_or("<no error.message>")
}

#[tokio::test]
async fn models_create_list_show_by_uuid_and_name() {
    let app = spawn_app().await;
    let (status, created) = app
        .post(
            "/v1/models",
            &json!({"name": "fraud", "kind": "logistic", "settings": {"optimizer": "adagrad", "learning_rate": 0.2}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["version"], 0);
    assert_eq!(created["settings"]["optimizer"], "adagrad");
    let id = created["model_id"].as_str().unwrap().to_string();

    let (status, by_id) = app.get(&format!("/v1/models/{id}")).await;
    assert_eq!(status, 200);
    let (_, by_name) = app.get("/v1/models/fraud").await;
    assert_eq!(by_id, by_name);
    assert_eq!(by_name["kind"], "logistic");

    app.create_model("pricing", "linear").await;
    let (status, list) = app.get("/v1/models").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fraud", "pricing"]);

    let (status, body) = app.get("/v1/models/nope").await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "not_found");
    assert!(error_message(&body).contains("nope"));
}

#[tokio::test]
async fn duplicate_model_name_is_409() {
    let app = spawn_app().await;
    app.create_model("dup", "linear").await;
    let (status, body) = app
        .post("/v1/models", &json!({"name": "dup", "kind": "logistic"}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_code(&body), "conflict");
    assert!(error_message(&body).contains("dup"), "{body}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM models")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn bad_model_requests_are_4xx_and_store_nothing() {
    let app = spawn_app().await;
    let cases = [
        (json!({"name": "", "kind": "linear"}), "name"),
        (json!({"name": "x", "kind": "tree"}), "kind"),
        (json!({"kind": "linear"}), "name"),
        (
            json!({"name": "x", "kind": "linear", "settings": {"learning_rate": -1}}),
            "learning_rate",
        ),
        (
            json!({"name": "x", "kind": "linear", "settings": {"optimiser": "adam"}}),
            "optimiser",
        ),
        (
            json!({"name": "8a1d3d0e-2b7e-4f57-a3f7-8e9a2f6c1b11", "kind": "linear"}),
            "UUID",
        ),
        (json!({"name": "x".repeat(201), "kind": "linear"}), "200"),
        // A path segment URLs drop: the model could never be addressed by name.
        (json!({"name": ".", "kind": "linear"}), "'.' or '..'"),
        (json!({"name": "..", "kind": "linear"}), "'.' or '..'"),
    ];
    for (body, needle) in cases {
        let (status, response) = app.post("/v1/models", &body).await;
        assert_eq!(status, 400, "{body} -> {response}");
        assert!(
            error_message(&response).contains(needle),
            "{body}: message should mention {needle}: {response}"
        );
    }
    let (status, response) = app.post_raw("/v1/models", b"{not json".to_vec()).await;
    assert_eq!(status, 400, "{response}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM models")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
}

fn good_event(i: usize) -> Value {
    json!({
        "entity_id": format!("txn-{i}"),
        "feedback_type": "explicit",
        "feedback_value": 1.0,
        "confidence": 0.9,
        "features": {"amount": 12.5, "country=US": 1}
    })
}

#[tokio::test]
async fn feedback_single_and_batch_are_stored_and_enqueued() {
    let app = spawn_app().await;
    let model = app.create_model("fraud", "logistic").await;
    let (status, body) = app.post("/v1/models/fraud/feedback", &good_event(0)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1);

    let batch: Vec<Value> = (1..=5).map(good_event).collect();
    let (status, body) = app
        .post(
            &format!("/v1/models/{model}/feedback"),
            &json!({"events": batch}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 5);
    assert_eq!(body["ids"].as_array().unwrap().len(), 5);
    assert_eq!(counts(app.pool()).await, (6, 6));

    // Stored as documented: features under metadata->'features', queue in insertion order.
    let rows: Vec<(String, f64, f64, Value)> = sqlx::query_as(
        "SELECT e.entity_id, e.feedback_value, e.confidence, e.metadata
         FROM feedback_queue q JOIN feedback_events e ON e.model_id = q.model_id AND e.id = q.feedback_id
         ORDER BY q.priority DESC, q.created_at, q.seq",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    let entities: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        entities,
        ["txn-0", "txn-1", "txn-2", "txn-3", "txn-4", "txn-5"]
    );
    assert_eq!(rows[0].3["features"]["amount"], 12.5);
    assert_eq!((rows[0].1, rows[0].2), (1.0, 0.9));
}

#[tokio::test]
async fn feedback_validation_matrix_rejects_and_stores_nothing() {
    let app = spawn_app().await;
    app.create_model("clf", "logistic").await;
    app.create_model("reg", "linear").await;
    let long = "x".repeat(257);
    let long_feature = "f".repeat(201);
    let many_features: serde_json::Map<String, Value> =
        (0..1001).map(|i| (format!("f{i}"), json!(1.0))).collect();
    let with = |patch: Value| {
        let mut e = good_event(0);
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                e.as_object_mut().unwrap().remove(k);
            } else {
                e[k] = v.clone();
            }
        }
        e
    };
    // (model, body, expected status, text the message must contain)
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("clf", with(json!({"entity_id": null})), 422, "entity_id"),
        ("clf", with(json!({"entity_id": ""})), 422, "entity_id"),
        ("clf", with(json!({"entity_id": "  "})), 422, "entity_id"),
        ("clf", with(json!({"entity_id": long})), 422, "entity_id"),
        ("clf", with(json!({"entity_id": 42})), 422, "entity_id"),
        (
            "clf",
            with(json!({"feedback_type": ""})),
            422,
            "feedback_type",
        ),
        (
            "clf",
            with(json!({"feedback_type": "x".repeat(65)})),
            422,
            "feedback_type",
        ),
        (
            "clf",
            with(json!({"feedback_value": null})),
            422,
            "feedback_value",
        ),
        (
            "clf",
            with(json!({"feedback_value": "1"})),
            422,
            "feedback_value",
        ),
        ("clf", with(json!({"feedback_value": 1.5})), 422, "[0, 1]"),
        ("clf", with(json!({"feedback_value": -0.1})), 422, "[0, 1]"),
        ("clf", with(json!({"confidence": 0})), 422, "confidence"),
        ("clf", with(json!({"confidence": 1.01})), 422, "confidence"),
        (
            "clf",
            with(json!({"confidence": "high"})),
            422,
            "confidence",
        ),
        ("clf", with(json!({"features": [1, 2]})), 422, "features"),
        (
            "clf",
            with(json!({"features": {"amount": "12"}})),
            422,
            "features.amount",
        ),
        (
            "clf",
            with(json!({"features": {"amount": null}})),
            422,
            "features.amount",
        ),
        ("clf", with(json!({"features": {"": 1}})), 422, "features"),
        (
            "clf",
            with(json!({"features": {long_feature.clone(): 1}})),
            422,
            "200",
        ),
        ("clf", with(json!({"features": many_features})), 422, "1000"),
        (
            "clf",
            with(json!({"features": {"__intercept__": 1}})),
            422,
            "__intercept__",
        ),
        ("clf", with(json!({"metadata": "x"})), 422, "metadata"),
        (
            "clf",
            with(json!({"metadata": {"features": {"a": 1}}})),
            422,
            "twice",
        ),
        (
            "clf",
            with(json!({"timestamp": "yesterday"})),
            422,
            "timestamp",
        ),
        ("clf", with(json!({"labell": 1})), 422, "labell"),
        ("clf", json!([good_event(0)]), 422, "body"),
        ("clf", json!({"events": []}), 422, "events"),
        ("clf", json!({"events": "all"}), 422, "events"),
        (
            "clf",
            json!({"events": [good_event(0), good_event(1), with(json!({"feedback_value": 7}))]}),
            422,
            "events[2].feedback_value",
        ),
        (
            "clf",
            json!({"events": [good_event(0), 5]}),
            422,
            "events[1]",
        ),
        ("nope", good_event(0), 404, "nope"),
        // A linear model takes any finite label, but 1e400 is not a finite JSON number.
        ("reg", with(json!({"feedback_value": 1e300})), 202, ""),
    ];
    for (model, body, expected, needle) in &cases {
        let (status, response) = app
            .post(&format!("/v1/models/{model}/feedback"), body)
            .await;
        assert_eq!(status, *expected, "{model} {body} -> {response}");
        if *expected != 202 {
            assert!(
                error_message(&response).contains(needle),
                "message should name {needle}: {response}"
            );
            assert!(response["error"]["code"].is_string());
        }
    }
    let (status, response) = app
        .post_raw(
            "/v1/models/reg/feedback",
            br#"{"entity_id":"a","feedback_type":"x","feedback_value":1e400}"#.to_vec(),
        )
        .await;
    assert_eq!(status, 400, "{response}");
    let (status, response) = app
        .post_raw("/v1/models/clf/feedback", b"nope".to_vec())
        .await;
    assert_eq!(status, 400, "{response}");
    // Only the one valid linear event was stored.
    assert_eq!(counts(app.pool()).await, (1, 1));
}

#[tokio::test]
async fn oversized_body_is_413_and_batch_over_limit_is_rejected() {
    let app = spawn_app().await;
    app.create_model("clf", "logistic").await;
    let events: Vec<Value> = (0..10_001).map(good_event).collect();
    let (status, body) = app
        .post("/v1/models/clf/feedback", &json!({"events": events}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body).contains("10000"), "{body}");
    let huge = vec![b' '; olps::http::MAX_BODY_BYTES + 10];
    let (status, body) = app.post_raw("/v1/models/clf/feedback", huge).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(error_code(&body), "payload_too_large");
    assert_eq!(counts(app.pool()).await, (0, 0));
}

#[tokio::test]
async fn batch_of_ten_thousand_is_one_request() {
    let app = spawn_app().await;
    let model = app.create_model("big", "linear").await;
    let events: Vec<Value> = (0..10_000)
        .map(|i| {
            json!({"entity_id": format!("e{i}"), "feedback_type": if i % 2 == 0 {"explicit"} else {"implicit"},
                   "feedback_value": i as f64, "features": {"x": i as f64, "y": 1}})
        })
        .collect();
    let (status, body) = app
        .post(
            &format!("/v1/models/{model}/feedback"),
            &json!({"events": events}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 10_000);
    assert_eq!(counts(app.pool()).await, (10_000, 10_000));
    let (explicit, implicit): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE priority = 1.0), count(*) FILTER (WHERE priority = 0.5) FROM feedback_queue",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!((explicit, implicit), (5_000, 5_000));
}

#[tokio::test]
async fn injection_attempts_are_stored_verbatim() {
    let app = spawn_app().await;
    app.create_model("clf", "logistic").await;
    let nasty = "x'); DROP TABLE feedback_events; --";
    let event = json!({
        "entity_id": nasty,
        "feedback_type": "explicit' OR '1'='1",
        "feedback_value": 1,
        "features": {"name\"; DELETE FROM models; --": 1.0},
        "metadata": {"note": "'; TRUNCATE feedback_queue; --"}
    });
    let (status, body) = app.post("/v1/models/clf/feedback", &event).await;
    assert_eq!(status, 202, "{body}");
    let (entity, kind, metadata): (String, String, Value) =
        sqlx::query_as("SELECT entity_id, feedback_type, metadata FROM feedback_events")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(entity, nasty);
    assert_eq!(kind, "explicit' OR '1'='1");
    assert_eq!(metadata["note"], "'; TRUNCATE feedback_queue; --");
    assert_eq!(metadata["features"]["name\"; DELETE FROM models; --"], 1.0);
    assert_eq!(counts(app.pool()).await, (1, 1));
    let (status, _) = app.get("/v1/models/clf").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn healthz_and_json_errors_for_unknown_routes() {
    let app = spawn_app().await;
    let (status, body) = app.get("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = app.get("/v1/nothing").await;
    assert_eq!(status, 404);
    assert_eq!(error_code(&body), "not_found");
}
