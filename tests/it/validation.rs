//! One set of rules for every way in (src/validation.rs, README "Limits"): the same events sent
//! over HTTP (`POST /v1/models/{m}/feedback`) and inserted as plain SQL rows into
//! `feedback_events` are accepted and refused alike — HTTP 2xx ⇔ the SQL row is learned; HTTP 4xx
//! ⇔ the SQL row is dead-lettered with a reason (or PostgreSQL itself refuses the insert: NUL, a
//! float8 out of range). When both refuse by a rule, they say the same thing about the same
//! field. Whatever HTTP accepts, the worker learns; predict refuses the feature sets feedback
//! refuses.

use std::time::Duration;

use crate::common::*;
use serde_json::Value;
use uuid::Uuid;

/// One event, as JSON text pieces, so that both paths get exactly the same input (including what
/// JSON cannot say, like NaN, which HTTP then refuses as invalid JSON).
#[derive(Clone)]
struct Case {
    name: &'static str,
    logistic: bool,
    entity_id: String,
    feedback_type: String,
    /// A JSON number literal and a float8 literal at once ("0.5", "NaN", "1e400").
    label: &'static str,
    /// Likewise; None omits it over HTTP and inserts NULL over SQL.
    confidence: Option<&'static str>,
    /// JSON text of the features object.
    features: String,
    /// JSON text of `metadata.note`, when given.
    note: Option<&'static str>,
    accept: bool,
    /// Text that a rule's refusal must contain, on both paths.
    needle: &'static str,
    /// Only the features differ from a valid event: predict must agree too.
    features_only: bool,
}

fn valid(name: &'static str) -> Case {
    Case {
        name,
        logistic: false,
        entity_id: format!("entity-{name}"),
        feedback_type: "explicit".into(),
        label: "3.5",
        confidence: Some("0.9"),
        features: r#"{"amount": 12.5, "country=US": 1}"#.into(),
        note: None,
        accept: true,
        needle: "",
        features_only: false,
    }
}

fn refused(name: &'static str, needle: &'static str) -> Case {
    Case {
        accept: false,
        needle,
        ..valid(name)
    }
}

fn features(mut case: Case, features: impl Into<String>) -> Case {
    case.features = features.into();
    case.features_only = true;
    case
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn many_features(n: usize) -> String {
    let entries: Vec<String> = (0..n).map(|i| format!("\"f{i}\": {i}")).collect();
    format!("{{{}}}", entries.join(", "))
}

fn cases() -> Vec<Case> {
    let name = |n: usize| format!("{{{}: 1}}", json_str(&"n".repeat(n)));
    let mut cases = vec![
        valid("valid"),
        Case {
            logistic: true,
            label: "1",
            ..valid("valid logistic")
        },
        Case {
            logistic: true,
            label: "0",
            confidence: None,
            ..valid("logistic 0, no confidence")
        },
        features(valid("no features at all (intercept only)"), "{}"),
        features(
            refused(
                "empty feature name",
                "features: feature names must not be empty",
            ),
            r#"{"": 1}"#,
        ),
        features(
            refused("reserved name", "features.__intercept__: is reserved"),
            r#"{"__intercept__": 1}"#,
        ),
        features(
            refused("whitespace is a name, __intercept__ too", "is reserved"),
            r#"{" ": 1, "__intercept__": 1}"#,
        ),
        // A repeated key: serde_json's map and jsonb both keep the last value.
        Case {
            features_only: false,
            ..features(valid("duplicate key, last wins"), r#"{"a": 1, "a": 2}"#)
        },
        features(valid("name of 200 characters"), name(200)),
        features(
            valid("name of 200 two-byte characters"),
            format!("{{{}: 1}}", json_str(&"é".repeat(200))),
        ),
        features(
            refused("name of 201 characters", "at most 200 characters, got 201"),
            name(201),
        ),
        features(
            refused(
                "name of 6,400 characters",
                "at most 200 characters, got 6400",
            ),
            name(6400),
        ),
        features(
            refused("NUL in a feature name", "NUL"),
            r#"{"a\u0000b": 1}"#,
        ),
        Case {
            entity_id: "e\0".into(),
            ..refused("NUL in entity_id", "entity_id: must not contain NUL")
        },
        Case {
            feedback_type: "explicit\0".into(),
            ..refused(
                "NUL in feedback_type",
                "feedback_type: must not contain NUL",
            )
        },
        Case {
            note: Some(r#""a\u0000""#),
            ..refused("NUL in metadata", "metadata.note: must not contain NUL")
        },
        Case {
            note: Some(r#"{"nested": ["ok", "also ok"]}"#),
            ..valid("other metadata")
        },
        features(valid("1,000 features"), many_features(1000)),
        features(
            refused(
                "1,001 features",
                "features: at most 1000 features per example, got 1001",
            ),
            many_features(1001),
        ),
        features(
            refused("a string value", "features.a: is not a number (got \"x\")"),
            r#"{"b": 1, "a": "x"}"#,
        ),
        features(
            refused("a null value", "features.a: is not a number (got null)"),
            r#"{"a": null}"#,
        ),
        features(
            refused(
                "an array value",
                "features.a: is not a number (got an array)",
            ),
            r#"{"a": [1]}"#,
        ),
        features(
            refused("a value beyond f64", "number out of range"),
            r#"{"ok": 1, "big": 1e400}"#,
        ),
        features(valid("a value below f64's smallest"), r#"{"tiny": 1e-400}"#),
        // Extreme but valid values on a logistic model (whose loss is bounded; see
        // `huge_linear_label_keeps_the_model_readable` for a linear one).
        Case {
            logistic: true,
            label: "1",
            ..features(valid("a huge finite value"), r#"{"huge": -1.7e308}"#)
        },
        features(
            refused("features not an object", "features: is not an object"),
            "[1, 2]",
        ),
        Case {
            label: "NaN",
            ..refused(
                "NaN label",
                "feedback_value: must be a finite number, got NaN",
            )
        },
        Case {
            label: "-Infinity",
            ..refused(
                "infinite label",
                "feedback_value: must be a finite number, got -inf",
            )
        },
        Case {
            label: "1e400",
            ..refused("label beyond float8", "")
        },
        Case {
            label: "-1e6",
            ..valid("large linear label")
        },
        Case {
            logistic: true,
            label: "1.5",
            ..refused(
                "logistic label 1.5",
                "feedback_value: must be between 0 and 1",
            )
        },
        Case {
            logistic: true,
            label: "-0.1",
            ..refused("logistic label -0.1", "[0, 1]")
        },
        Case {
            confidence: Some("0"),
            ..refused(
                "confidence 0",
                "confidence: must be a number in (0, 1], got 0",
            )
        },
        Case {
            confidence: Some("1.5"),
            ..refused(
                "confidence 1.5",
                "confidence: must be a number in (0, 1], got 1.5",
            )
        },
        Case {
            confidence: Some("-1"),
            ..refused("confidence -1", "confidence")
        },
        Case {
            confidence: Some("NaN"),
            ..refused(
                "confidence NaN",
                "confidence: must be a number in (0, 1], got NaN",
            )
        },
        Case {
            confidence: Some("1"),
            ..valid("confidence 1")
        },
        Case {
            confidence: Some("0.001"),
            ..valid("confidence 0.001")
        },
        Case {
            entity_id: "x".repeat(256),
            ..valid("entity_id of 256 characters")
        },
        Case {
            entity_id: "x".repeat(257),
            ..refused(
                "entity_id of 257 characters",
                "entity_id: must be at most 256 characters, got 257",
            )
        },
        Case {
            entity_id: String::new(),
            ..refused("empty entity_id", "entity_id: must not be empty")
        },
        Case {
            entity_id: "  ".into(),
            ..refused("blank entity_id", "entity_id: must not be empty")
        },
        Case {
            feedback_type: "t".repeat(64),
            ..valid("feedback_type of 64 characters")
        },
        Case {
            feedback_type: "t".repeat(65),
            ..refused(
                "feedback_type of 65 characters",
                "feedback_type: must be at most 64 characters, got 65",
            )
        },
        Case {
            feedback_type: String::new(),
            ..refused("empty feedback_type", "feedback_type: must not be empty")
        },
        // Several problems: both paths report the first in the same order.
        Case {
            entity_id: "x".repeat(300),
            logistic: true,
            label: "7",
            confidence: Some("3"),
            features: r#"{"": 1}"#.into(),
            ..refused("several problems", "entity_id")
        },
        Case {
            logistic: true,
            label: "7",
            confidence: Some("3"),
            features: r#"{"": 1}"#.into(),
            ..refused("label, confidence and features", "feedback_value")
        },
    ];
    for (i, case) in cases.iter_mut().enumerate() {
        if case.entity_id == format!("entity-{}", case.name) {
            case.entity_id = format!("e{i}");
        }
    }
    cases
}

fn http_body(case: &Case) -> String {
    let mut fields = vec![
        format!("\"entity_id\": {}", json_str(&case.entity_id)),
        format!("\"feedback_type\": {}", json_str(&case.feedback_type)),
        format!("\"feedback_value\": {}", case.label),
        format!("\"features\": {}", case.features),
    ];
    if let Some(c) = case.confidence {
        fields.push(format!("\"confidence\": {c}"));
    }
    if let Some(note) = case.note {
        fields.push(format!("\"metadata\": {{\"note\": {note}}}"));
    }
    format!("{{{}}}", fields.join(", "))
}

fn sql_metadata(case: &Case) -> String {
    match case.note {
        Some(note) => format!("{{\"features\": {}, \"note\": {note}}}", case.features),
        None => format!("{{\"features\": {}}}", case.features),
    }
}

#[derive(Debug)]
enum SqlOutcome {
    Learned,
    Dead(String),
    InsertRefused(String),
}

#[tokio::test]
async fn http_and_sql_accept_and_refuse_the_same_events() {
    let app = spawn_app().await;
    let pool = app.pool().clone();
    let http_lin = app.create_model("http_lin", "linear").await;
    let http_log = app.create_model("http_log", "logistic").await;
    let sql_lin = app.create_model("sql_lin", "linear").await;
    let sql_log = app.create_model("sql_log", "logistic").await;
    let cases = cases();

    // HTTP: one request per event.
    let mut http: Vec<(u16, Value)> = Vec::new();
    for case in &cases {
        let model = if case.logistic {
            "http_log"
        } else {
            "http_lin"
        };
        let answer = app
            .post_raw(
                &format!("/v1/models/{model}/feedback"),
                http_body(case).into_bytes(),
            )
            .await;
        http.push(answer);
    }

    // SQL: one plain insert per event (text in, cast by PostgreSQL, as a client's literal would).
    let mut sql_ids: Vec<Result<Uuid, String>> = Vec::new();
    for case in &cases {
        let model = if case.logistic { sql_log } else { sql_lin };
        let id = sqlx::query_scalar::<_, Uuid>(
            "INSERT INTO feedback_events
                 (model_id, entity_id, feedback_type, feedback_value, confidence, metadata)
             VALUES ($1, $2, $3, $4::text::float8, $5::text::float8, $6::text::jsonb)
             RETURNING id",
        )
        .bind(model)
        .bind(&case.entity_id)
        .bind(&case.feedback_type)
        .bind(case.label)
        .bind(case.confidence)
        .bind(sql_metadata(case))
        .fetch_one(&pool)
        .await
        .map_err(|e| e.to_string());
        sql_ids.push(id);
    }

    // The worker drains everything (a wedged model would never let it finish).
    let stats = tokio::time::timeout(Duration::from_secs(300), drain(&pool, 1000))
        .await
        .expect("the worker drains every row: no input wedges a model");
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM feedback_queue WHERE status = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pending, 0, "{stats:?}");

    let mut failures = Vec::new();
    for ((case, (status, body)), sql_id) in cases.iter().zip(&http).zip(&sql_ids) {
        let sql = match sql_id {
            Err(e) => SqlOutcome::InsertRefused(e.clone()),
            Ok(id) => {
                let (processed, status, reason): (bool, Option<String>, Option<String>) =
                    sqlx::query_as(
                        "SELECT e.processed, q.status, q.dead_reason FROM feedback_events e
                         LEFT JOIN feedback_queue q
                           ON q.model_id = e.model_id AND q.feedback_id = e.id
                         WHERE e.id = $1",
                    )
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                match (processed, status.as_deref()) {
                    (true, None) => SqlOutcome::Learned,
                    (false, Some("dead")) => SqlOutcome::Dead(reason.unwrap_or_default()),
                    other => panic!("{}: row neither learned nor dead: {other:?}", case.name),
                }
            }
        };
        let http_accepted = (200..300).contains(status);
        let message = body["error"]["message"].as_str().unwrap_or("").to_string();
        let sql_accepted = matches!(sql, SqlOutcome::Learned);
        let mut problems = Vec::new();
        if http_accepted != case.accept {
            problems.push(format!("HTTP answered {status}: {body}"));
        }
        if !http_accepted && !(400..500).contains(status) {
            problems.push(format!("HTTP refusal is not a 4xx: {status} {body}"));
        }
        if sql_accepted != case.accept {
            problems.push(format!("SQL row: {sql:?}"));
        }
        if *status == 422 && !message.contains(case.needle) {
            problems.push(format!("HTTP message {message:?} lacks {:?}", case.needle));
        }
        if let SqlOutcome::InsertRefused(e) = &sql {
            // Only what PostgreSQL cannot store: NUL in text or jsonb, a float8 out of range.
            if !["0x00", "unsupported Unicode escape", "out of range"]
                .iter()
                .any(|n| e.contains(n))
            {
                problems.push(format!("insert refused for another reason: {e}"));
            }
        }
        if let SqlOutcome::Dead(reason) = &sql {
            if !reason.contains(case.needle) {
                problems.push(format!("dead reason {reason:?} lacks {:?}", case.needle));
            }
            // Both refused by a rule: the same words about the same field (the features are
            // `features` over HTTP, `metadata.features` in the row).
            if *status == 422 && reason.trim_start_matches("metadata.") != message {
                problems.push(format!(
                    "different reasons: HTTP {message:?}, SQL {reason:?}"
                ));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{}:\n    {}", case.name, problems.join("\n    ")));
        }
    }
    assert!(
        failures.is_empty(),
        "HTTP and SQL disagree:\n{}",
        failures.join("\n")
    );

    // Whatever HTTP accepted, the worker learned: no HTTP-stored event was dead-lettered.
    let (stored, learned): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE processed) FROM feedback_events
         WHERE model_id = ANY($1)",
    )
    .bind(vec![http_lin, http_log])
    .fetch_one(&pool)
    .await
    .unwrap();
    let accepted = cases.iter().filter(|c| c.accept).count() as i64;
    assert_eq!((stored, learned), (accepted, accepted));
    // A repeated key kept its last value on both paths.
    for model in [http_lin, sql_lin] {
        let a: f64 = sqlx::query_scalar(
            "SELECT feature_mean FROM model_parameters WHERE model_id = $1 AND parameter_id = 'a'",
        )
        .bind(model)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(a, 2.0, "model {model}: the mean of a (seen once, as 2)");
    }
    // Both paths learned the same examples: the linear models are bit-identical.
    let http_params = olps::params::load_all(&pool, http_lin).await.unwrap();
    let sql_params = olps::params::load_all(&pool, sql_lin).await.unwrap();
    assert_eq!(http_params.len(), sql_params.len());
    for (name, state) in &http_params {
        assert_eq!(
            state_bits(state),
            state_bits(&sql_params[name]),
            "parameter {name}"
        );
    }

    // Predict takes features under the same rules (a repeated name aside: predict refuses it).
    for case in cases.iter().filter(|c| c.features_only) {
        let (status, body) = app
            .post_raw(
                "/v1/models/http_lin/predict",
                format!("{{\"features\": {}}}", case.features).into_bytes(),
            )
            .await;
        assert_eq!(
            status == 200,
            case.accept,
            "predict, {}: {status} {body}",
            case.name
        );
        if status == 400 && case.needle.contains(':') {
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(case.needle), "{}: {message}", case.name);
        }
    }
    let (status, body) = app
        .post_raw(
            "/v1/models/http_lin/predict",
            br#"{"features": {"a": 1, "a": 2}}"#.to_vec(),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("features.a: is given more than once"),
        "{body}"
    );
}

/// A linear model takes any finite label (tests/api.rs stores 1e300), but learning a few such
/// labels makes the squared loss saturate at f64::MAX and the drift detectors' sums overflow to
/// infinity; the stored `learner_state` then holds `null` and the model cannot be read any more:
/// feedback and predict answer 500, and the worker fails every later batch of the model. A
/// learner bug (src/learner/drift.rs), not a validation rule; kept here as its reproduction.
#[tokio::test]
#[ignore = "learner bug: linear labels of 1e300 leave the model's drift state unreadable"]
async fn huge_linear_labels_keep_the_model_readable() {
    let app = spawn_app().await;
    let pool = app.pool().clone();
    app.create_model("reg", "linear").await;
    let event = |label: f64| {
        serde_json::json!({"entity_id": "e", "feedback_type": "explicit",
        "feedback_value": label, "features": {"a": 1}})
    };
    let events: Vec<Value> = [1e300, -1e300, 1.0, 2.0, 3.0, 1e300, 4.0, 5.0, 6.0, 7.0, 8.0]
        .into_iter()
        .map(event)
        .collect();
    let (status, answer) = app
        .post(
            "/v1/models/reg/feedback",
            &serde_json::json!({ "events": events }),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    tokio::time::timeout(Duration::from_secs(60), drain(&pool, 1000))
        .await
        .expect("the model drains");
    let (status, answer) = app.post("/v1/models/reg/feedback", &event(1.0)).await;
    assert_eq!(status, 202, "feedback after the huge labels: {answer}");
    let (status, answer) = app
        .post(
            "/v1/models/reg/predict",
            &serde_json::json!({"features": {"a": 1}}),
        )
        .await;
    assert_eq!(status, 200, "predict after the huge labels: {answer}");
    tokio::time::timeout(Duration::from_secs(30), drain(&pool, 1000))
        .await
        .expect("the model keeps draining");
}
