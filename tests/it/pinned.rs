//! Predictions at a pinned version or snapshot (issue 19, part 2a), against a real PostgreSQL:
//! each answer equals, bit for bit, the learner in memory after the first k examples of the
//! stream; recent versions come from memory (the same copy twice); unknown versions and
//! snapshots are clear 404s.

use std::sync::Arc;

use olps::learner::ModelKind;
use olps::serving::{ModelCache, ServingConfig};
use serde_json::{json, Value};

use crate::common::*;

fn features_json(features: &[(String, f64)]) -> Value {
    Value::Object(
        features
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect(),
    )
}

const PER_VERSION: usize = 10;

#[tokio::test]
async fn predictions_at_a_pinned_version_or_snapshot_equal_the_learner_at_that_version() {
    let (db, model) = TestDb::with_model("pinned", ModelKind::Logistic).await;
    let rows = sparse_stream(3 * PER_VERSION, 4, 12, true, 17);
    let service = Service::start(&db.pool, ServingConfig::default()).await;
    // Three versions of ten examples each; a snapshot labelled "two" at version 2.
    for v in 1..=3 {
        insert_stream(
            &db.pool,
            model.model_id,
            &rows[(v - 1) * PER_VERSION..v * PER_VERSION],
        )
        .await;
        drain(&db.pool, PER_VERSION as i64).await;
        assert_eq!(current_version(&db.pool, model.model_id).await, v as i64);
        if v == 2 {
            let (status, snap) = service
                .post("/v1/models/pinned/snapshots", &json!({"label": "two"}))
                .await;
            assert_eq!(status, 201, "{snap}");
        }
    }
    let probe = vec![
        ("f1".to_string(), 0.75),
        ("f3".to_string(), -2.0),
        ("unseen".to_string(), 4.0),
    ];
    for v in 0..=3usize {
        let learner = learn_in_memory(&model, &rows[..v * PER_VERSION]);
        let want = learner.predict(&probe);
        let (status, answer) = service
            .post(
                "/v1/models/pinned/predict",
                &json!({"features": features_json(&probe), "version": v}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["version"], json!(v));
        assert_eq!(
            answer["prediction"].as_f64().unwrap().to_bits(),
            want.to_bits(),
            "version {v}"
        );
        // A batch at the version, each instance the same as alone.
        let (status, batch) = service
            .post(
                "/v1/models/pinned/predict",
                &json!({"instances": [{"features": features_json(&probe)}, {"features": {}}],
                        "version": v}),
            )
            .await;
        assert_eq!(status, 200, "{batch}");
        assert_eq!(batch["version"], json!(v));
        assert_eq!(
            batch["predictions"][0].as_f64().unwrap().to_bits(),
            want.to_bits()
        );
        assert_eq!(
            batch["predictions"][1].as_f64().unwrap().to_bits(),
            learner.predict(&[]).to_bits()
        );
        assert_eq!(batch["prediction_ids"].as_array().unwrap().len(), 2);
    }
    // By snapshot label: the snapshot's version.
    let (status, by_snapshot) = service
        .post(
            "/v1/models/pinned/predict",
            &json!({"features": features_json(&probe), "snapshot": "two"}),
        )
        .await;
    assert_eq!(status, 200, "{by_snapshot}");
    assert_eq!(by_snapshot["version"], json!(2));
    let at_two = learn_in_memory(&model, &rows[..2 * PER_VERSION]).predict(&probe);
    assert_eq!(
        by_snapshot["prediction"].as_f64().unwrap().to_bits(),
        at_two.to_bits()
    );
    // Without a pin: the newest.
    let (_, newest) = service
        .post(
            "/v1/models/pinned/predict",
            &json!({"features": features_json(&probe)}),
        )
        .await;
    assert_eq!(newest["version"], json!(3));

    // Clear errors, nothing answered from another version.
    let bad = [
        (
            json!({"features": {}, "version": 4}),
            404,
            "version_not_found",
            "version 4 does not exist",
        ),
        (
            json!({"features": {}, "snapshot": "nope"}),
            404,
            "not_found",
            "snapshot 'nope' not found",
        ),
        (
            json!({"features": {}, "version": 1, "snapshot": "two"}),
            400,
            "invalid_request",
            "either version or snapshot",
        ),
        (
            json!({"features": {}, "version": -1}),
            400,
            "invalid_request",
            "must be 0 or more",
        ),
        (
            json!({"features": {}, "version": "two"}),
            400,
            "invalid_request",
            "version",
        ),
    ];
    for (body, status, code, needle) in bad {
        let (got, answer) = service.post("/v1/models/pinned/predict", &body).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], json!(code), "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{body}: {message}");
    }
}

#[tokio::test]
async fn recent_versions_are_answered_from_memory() {
    let (db, model) = TestDb::with_model("pinned-cache", ModelKind::Linear).await;
    let rows = sparse_stream(2 * PER_VERSION, 3, 8, false, 5);
    insert_stream(&db.pool, model.model_id, &rows[..PER_VERSION]).await;
    drain(&db.pool, PER_VERSION as i64).await;
    let cache = Arc::new(ModelCache::new(db.pool.clone()));
    let v1 = cache.get("pinned-cache").await.unwrap();
    assert_eq!(v1.version, 1);
    insert_stream(&db.pool, model.model_id, &rows[PER_VERSION..]).await;
    drain(&db.pool, PER_VERSION as i64).await;
    cache.refresh(model.model_id).await.unwrap();
    // The version the cache served before the refresh stays in memory.
    assert_eq!(cache.recent_versions(model.model_id), vec![1]);
    let again = cache.get_version("pinned-cache", 1).await.unwrap();
    assert!(Arc::ptr_eq(&v1, &again), "version 1 from memory");
    let current = cache.get("pinned-cache").await.unwrap();
    assert_eq!(current.version, 2);
    assert!(Arc::ptr_eq(
        &current,
        &cache.get_version("pinned-cache", 2).await.unwrap()
    ));
    // Version 0 was never served: reconstructed from the database once, then kept.
    let v0 = cache.get_version("pinned-cache", 0).await.unwrap();
    assert_eq!(v0.version, 0);
    assert!(v0.learner.params.is_empty());
    assert_eq!(cache.recent_versions(model.model_id), vec![0, 1]);
    assert!(Arc::ptr_eq(
        &v0,
        &cache.get_version("pinned-cache", 0).await.unwrap()
    ));
    // The one from the database equals the one served from memory, parameter for parameter.
    let fresh = ModelCache::new(db.pool.clone());
    fresh.get("pinned-cache").await.unwrap();
    let rebuilt = fresh.get_version("pinned-cache", 1).await.unwrap();
    assert_eq!(rebuilt.learner.params.len(), v1.learner.params.len());
    for (name, state) in &v1.learner.params {
        assert_eq!(
            state_bits(&rebuilt.learner.params[name]),
            state_bits(state),
            "{name}"
        );
    }
}
