//! Idempotent ingest (issue 13, item 5): an event may carry its own `id`; a retried request stores
//! each event once (over HTTP as over SQL), and the answer counts new and already stored events.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::common::{counts, drain, spawn_app};

fn event(id: Option<Uuid>, entity: &str, label: f64) -> Value {
    let mut e = json!({"entity_id": entity, "feedback_type": "explicit", "feedback_value": label,
                       "features": {"x": label, "y": 1.0}});
    if let Some(id) = id {
        e["id"] = json!(id);
    }
    e
}

async fn examples_seen(pool: &sqlx::PgPool, model: &str) -> i64 {
    sqlx::query_scalar("SELECT examples_seen FROM models WHERE name = $1")
        .bind(model)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retried_request_stores_each_event_once_and_says_so() {
    let app = spawn_app().await;
    app.create_model("m", "linear").await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let batch = json!({"events": [event(Some(a), "e1", 1.0), event(None, "e2", 2.0),
                                  event(Some(b), "e3", 3.0)]});
    let (status, first) = app.post("/v1/models/m/feedback", &batch).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(
        (&first["accepted"], &first["new"], &first["already_stored"]),
        (&json!(3), &json!(3), &json!(0))
    );
    let ids: Vec<String> = serde_json::from_value(first["ids"].clone()).unwrap();
    assert_eq!(ids[0], a.to_string(), "the client's ids, in request order");
    assert_eq!(ids[2], b.to_string());
    assert_eq!(counts(app.pool()).await, (3, 3));

    // The same request again (a retry after a timeout): the events with ids are already there;
    // the one without an id is a new event each time (give every event an id to retry safely).
    let (status, again) = app.post("/v1/models/m/feedback", &batch).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(
        (&again["accepted"], &again["new"], &again["already_stored"]),
        (&json!(3), &json!(1), &json!(2))
    );
    assert_eq!(again["ids"][0], first["ids"][0]);
    assert_eq!(again["ids"][2], first["ids"][2]);
    assert_ne!(again["ids"][1], first["ids"][1]);
    // The enqueue trigger fired for inserted rows only: one queue row per stored event.
    assert_eq!(counts(app.pool()).await, (4, 4));

    drain(app.pool(), 100).await;
    assert_eq!(examples_seen(app.pool(), "m").await, 4);

    // After the events were learned (and left the queue), a retry still stores nothing.
    let (status, late) = app
        .post("/v1/models/m/feedback", &event(Some(a), "e1", 1.0))
        .await;
    assert_eq!(status, 202, "{late}");
    assert_eq!(
        (&late["new"], &late["already_stored"]),
        (&json!(0), &json!(1))
    );
    assert_eq!(late["ids"], json!([a]));
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM feedback_queue")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(pending, 0);
    drain(app.pool(), 100).await;
    assert_eq!(examples_seen(app.pool(), "m").await, 4, "learned once");

    // The first event stored under an id wins: a different event under that id is not stored.
    let (status, other) = app
        .post("/v1/models/m/feedback", &event(Some(b), "changed", 9.0))
        .await;
    assert_eq!(status, 202, "{other}");
    assert_eq!(other["already_stored"], 1);
    let entity: String = sqlx::query_scalar("SELECT entity_id FROM feedback_events WHERE id = $1")
        .bind(b)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(entity, "e3");
}

#[tokio::test]
async fn an_id_repeated_within_a_request_is_refused_naming_both_indexes() {
    let app = spawn_app().await;
    app.create_model("m", "linear").await;
    let a = Uuid::new_v4();
    let batch = json!({"events": [event(Some(a), "e1", 1.0), event(None, "e2", 2.0),
                                  event(Some(a), "e3", 3.0)]});
    let (status, body) = app.post("/v1/models/m/feedback", &batch).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_feedback");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("events[2].id") && message.contains("events[0].id"),
        "{message}"
    );
    // The same UUID, spelled differently, is the same id.
    let upper = a.to_string().to_uppercase();
    let batch = json!({"events": [event(Some(a), "e1", 1.0), {"id": upper, "entity_id": "e",
                       "feedback_type": "explicit", "feedback_value": 1.0}]});
    let (status, body) = app.post("/v1/models/m/feedback", &batch).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(counts(app.pool()).await, (0, 0), "nothing stored");
}

#[tokio::test]
async fn ids_must_be_uuids() {
    let app = spawn_app().await;
    app.create_model("m", "logistic").await;
    for (id, mentions) in [
        (json!("not-a-uuid"), "must be a UUID"),
        (json!(""), "must be a UUID"),
        (json!(42), "a UUID string"),
        (json!({"a": 1}), "a UUID string"),
        (
            json!(["6f1d7c1e-3a3b-4d0c-9a55-0f2b8e1f4a10"]),
            "a UUID string",
        ),
    ] {
        let batch = json!({"events": [event(None, "ok", 1.0),
            {"id": id, "entity_id": "e", "feedback_type": "explicit", "feedback_value": 1.0}]});
        let (status, body) = app.post("/v1/models/m/feedback", &batch).await;
        assert_eq!(status, 422, "{id}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("events[1].id: ") && message.contains(mentions),
            "{id}: {message}"
        );
    }
    // null is no id.
    let (status, body) = app
        .post(
            "/v1/models/m/feedback",
            &json!({"id": null, "entity_id": "e", "feedback_type": "explicit", "feedback_value": 1}),
        )
        .await;
    assert_eq!((status, &body["new"]), (202, &json!(1)), "{body}");
    assert_eq!(counts(app.pool()).await, (1, 1));
}

/// HTTP and SQL share the ids: an event stored by plain SQL is "already stored" for HTTP, and
/// SQL's `ON CONFLICT (model_id, id) DO NOTHING` skips one stored over HTTP. Ids are per model.
#[tokio::test]
async fn http_and_sql_share_ids_per_model() {
    let app = spawn_app().await;
    let m = app.create_model("m", "linear").await;
    let other = app.create_model("other", "linear").await;
    let insert_sql = |id: Uuid, model: Uuid| {
        sqlx::query(
            "INSERT INTO feedback_events (id, model_id, entity_id, feedback_type, feedback_value, metadata)
             VALUES ($1, $2, 'sql', 'explicit', 1.0, '{\"features\": {\"x\": 1}}')
             ON CONFLICT (model_id, id) DO NOTHING",
        )
        .bind(id)
        .bind(model)
    };
    let by_sql = Uuid::new_v4();
    let done = insert_sql(by_sql, m).execute(app.pool()).await.unwrap();
    assert_eq!(done.rows_affected(), 1);
    let (_, body) = app
        .post("/v1/models/m/feedback", &event(Some(by_sql), "http", 1.0))
        .await;
    assert_eq!(
        (&body["new"], &body["already_stored"]),
        (&json!(0), &json!(1))
    );

    let by_http = Uuid::new_v4();
    let (_, body) = app
        .post("/v1/models/m/feedback", &event(Some(by_http), "http", 1.0))
        .await;
    assert_eq!(body["new"], 1);
    let done = insert_sql(by_http, m).execute(app.pool()).await.unwrap();
    assert_eq!(done.rows_affected(), 0);
    // Without ON CONFLICT, SQL refuses the repeat outright.
    let refused = sqlx::query(
        "INSERT INTO feedback_events (id, model_id, entity_id, feedback_type, feedback_value)
         VALUES ($1, $2, 'sql', 'explicit', 1.0)",
    )
    .bind(by_http)
    .bind(m)
    .execute(app.pool())
    .await
    .unwrap_err();
    assert!(refused
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation()));

    // The same id on another model is another event.
    let (_, body) = app
        .post(
            "/v1/models/other/feedback",
            &event(Some(by_http), "http", 1.0),
        )
        .await;
    assert_eq!(body["new"], 1);
    let per_model: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT model_id, count(*) FROM feedback_queue GROUP BY model_id ORDER BY count(*)",
    )
    .fetch_all(app.pool())
    .await
    .unwrap();
    assert_eq!(per_model, vec![(other, 1), (m, 2)]);
    drain(app.pool(), 100).await;
    assert_eq!(examples_seen(app.pool(), "m").await, 2);
    assert_eq!(examples_seen(app.pool(), "other").await, 1);
}

/// Concurrent retries of one request (a client that gave up waiting and sent it again, several
/// times): every event is stored once, and the answers' `new` add up to the events.
#[tokio::test]
async fn concurrent_retries_store_each_event_once() {
    let app = spawn_app().await;
    app.create_model("m", "linear").await;
    let events: Vec<Value> = (0..200)
        .map(|i| event(Some(Uuid::new_v4()), &format!("e{i}"), i as f64 / 10.0))
        .collect();
    let batch = json!({ "events": events });
    let answers =
        futures::future::join_all((0..8).map(|_| app.post("/v1/models/m/feedback", &batch))).await;
    let mut new = 0;
    for (status, body) in &answers {
        assert_eq!(*status, 202, "{body}");
        assert_eq!(body["accepted"], 200);
        assert_eq!(
            body["new"].as_u64().unwrap() + body["already_stored"].as_u64().unwrap(),
            200
        );
        new += body["new"].as_u64().unwrap();
    }
    assert_eq!(new, 200);
    assert_eq!(counts(app.pool()).await, (200, 200));
    drain(app.pool(), 1000).await;
    assert_eq!(examples_seen(app.pool(), "m").await, 200);
}
