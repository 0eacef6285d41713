//! Settings that change after creation (issue 19, part 3): `PATCH /v1/models/{m}` and
//! `olps model update`. A change applies from the next batch on, bit for bit as the learner in
//! memory switching settings at the same example; it is recorded with that version; fields that
//! cannot change are refused by name and change nothing; a rollback restores the parameters and
//! leaves the settings as they are.

use std::collections::BTreeMap;

use olps::learner::{Learner, ModelKind};
use olps::settings::{self, SettingsPatch};
use olps::timeline::rollback::RollbackTarget;
use serde_json::{json, Value};

use crate::common::*;

async fn update(pool: &sqlx::PgPool, model_id: uuid::Uuid, body: Value) -> settings::Updated {
    let patch = SettingsPatch::from_json(&body).unwrap();
    let mut tx = pool.begin().await.unwrap();
    let updated = settings::update(&mut tx, model_id, &patch, "test")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    updated
}

#[tokio::test]
async fn a_change_applies_from_the_next_batch_bit_for_bit() {
    let (db, model) = TestDb::with_model("update-next-batch", ModelKind::Linear).await;
    let rows = seed_stream();
    let (first, rest) = rows[..900].split_at(400);
    insert_stream(&db.pool, model.model_id, first).await;
    drain(&db.pool, 100).await;
    assert_eq!(current_version(&db.pool, model.model_id).await, 4);

    let updated = update(
        &db.pool,
        model.model_id,
        json!({"settings": {"learning_rate": 0.05, "l2": 0.001,
                            "drift": {"adaptation": "none"}}}),
    )
    .await;
    let change = updated.change.expect("a change is recorded");
    assert_eq!(change.model_version, 5, "takes effect at the next version");
    assert_eq!(
        change.changed_fields,
        ["drift.adaptation", "l2", "learning_rate"]
    );
    assert_eq!(change.changed_by.as_deref(), Some("test"));
    assert_eq!(change.old_settings["learning_rate"], json!(0.02));
    assert_eq!(updated.model.settings.learning_rate, 0.05);
    assert_eq!(
        updated.model.version, 4,
        "a settings change makes no version"
    );
    // Everything else is as it was.
    let mut expected = model.settings.clone();
    expected.learning_rate = 0.05;
    expected.l2 = 0.001;
    expected.drift.adaptation = olps::learner::drift::Adaptation::None;
    assert_eq!(updated.model.settings, expected);

    insert_stream(&db.pool, model.model_id, rest).await;
    drain(&db.pool, 100).await;

    // The learner in memory, switching settings after the same example.
    let mut learner = Learner::new(model.kind, model.settings.clone());
    for (features, label) in first {
        learner.learn(&olps::learner::Example::new(features.clone(), *label, 1.0).unwrap());
    }
    learner.config = expected.clone();
    for (features, label) in rest {
        learner.learn(&olps::learner::Example::new(features.clone(), *label, 1.0).unwrap());
    }
    assert_params_equal(&db.pool, model.model_id, &learner).await;
    assert_linear_history(&db.pool, model.model_id).await;

    // The same values again: nothing changes, nothing is recorded.
    let again = update(
        &db.pool,
        model.model_id,
        json!({"settings": {"learning_rate": 0.05}}),
    )
    .await;
    assert!(again.change.is_none());
    assert_eq!(
        settings::history(&db.pool, model.model_id)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_rollback_restores_parameters_and_keeps_the_settings() {
    let (db, model) = TestDb::with_model("update-rollback", ModelKind::Linear).await;
    let rows = seed_stream();
    insert_stream(&db.pool, model.model_id, &rows[..300]).await;
    let mut recorded: BTreeMap<i64, State> = BTreeMap::new();
    step_all(&db.pool, model.model_id, 100, &mut recorded).await;
    assert_eq!(recorded.len(), 3);

    let updated = update(
        &db.pool,
        model.model_id,
        json!({"settings": {"learning_rate": 0.01, "guard": {"window": 50}},
               "snapshot_policy": {"every_versions": 2, "keep": 3}}),
    )
    .await;
    let change = updated.change.unwrap();
    assert_eq!(change.model_version, 4);
    assert_eq!(
        change.changed_fields,
        [
            "guard.window",
            "learning_rate",
            "snapshot_policy.every_versions",
            "snapshot_policy.keep"
        ]
    );
    assert_eq!(updated.snapshot_policy.every_versions, Some(2));
    assert_eq!(change.old_snapshot_policy["every_versions"], Value::Null);

    // Learn a little under the new settings, then roll back to before the change.
    insert_stream(&db.pool, model.model_id, &rows[300..400]).await;
    drain(&db.pool, 100).await;
    let outcome = committed::rollback(&db.pool, model.model_id, &RollbackTarget::Version(1))
        .await
        .unwrap();
    assert_eq!(outcome.version, 5);

    // The parameters are those of version 1, bit for bit ...
    let now = olps::params::load_all(&db.pool, model.model_id)
        .await
        .unwrap();
    let at_1 = &recorded[&1];
    assert_eq!(now.len(), at_1.len());
    for (name, state) in at_1 {
        assert_eq!(state_bits(&now[name]), state_bits(state), "{name}");
    }
    // ... and the settings are still the changed ones: a rollback does not undo a change.
    let after = olps::models::find(&db.pool, &model.model_id.to_string())
        .await
        .unwrap();
    assert_eq!(after.settings, updated.model.settings);
    let policy = olps::timeline::snapshots::policy(&db.pool, model.model_id)
        .await
        .unwrap();
    assert_eq!(policy, updated.snapshot_policy);
    assert_eq!(
        settings::history(&db.pool, model.model_id).await.unwrap(),
        vec![change]
    );
    assert_linear_history(&db.pool, model.model_id).await;
}

#[tokio::test]
async fn the_patch_route_changes_refuses_by_name_and_shows_the_history() {
    let app = spawn_app().await;
    let id = app.create_model("update-http", "logistic").await;
    let path = format!("/v1/models/{id}");
    let patch = |body: Value| {
        let request = app.client.patch(format!("{}{path}", app.base)).json(&body);
        async move { decode(request.send().await.unwrap()).await }
    };
    let (_, before) = app.get(&path).await;

    // Refused, each naming the field, and nothing stored.
    for (body, names) in [
        (
            json!({"settings": {"optimizer": "adam"}}),
            "settings.optimizer",
        ),
        (
            json!({"settings": {"standardize": false}}),
            "settings.standardize",
        ),
        (
            json!({"settings": {"learning_rate": -1}}),
            "settings.learning_rate",
        ),
        (
            json!({"settings": {"drift": {"detector": "magic"}}}),
            "settings.drift.detector",
        ),
        (
            json!({"settings": {"guard": {"window": 1}}}),
            "settings.guard.window",
        ),
        (
            json!({"snapshot_policy": {"keep": 0}}),
            "snapshot_policy.keep",
        ),
        (json!({"kind": "linear"}), "kind"),
        (json!({}), "nothing to change"),
    ] {
        let (status, answer) = patch(body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_request");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(names), "{body}: {message}");
    }
    let (_, unchanged) = app.get(&path).await;
    assert_eq!(unchanged, before);
    assert_eq!(before["settings_changes"], json!([]));

    let (status, answer) = patch(json!({"settings": {"learning_rate": 0.5}})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"]["settings"]["learning_rate"], json!(0.5));
    assert_eq!(answer["change"]["model_version"], json!(1));
    assert!(answer["change"]["changed_by"]
        .as_str()
        .unwrap()
        .starts_with("token:"));

    let (status, shown) = app.get(&path).await;
    assert_eq!(status, 200);
    assert_eq!(shown["settings"]["learning_rate"], json!(0.5));
    assert_eq!(shown["settings_changes"].as_array().unwrap().len(), 1);
    assert_eq!(
        shown["settings_changes"][0]["changed_fields"],
        json!(["learning_rate"])
    );
    assert_eq!(shown["snapshot_policy"]["every_versions"], Value::Null);

    let (status, _) = app
        .client
        .patch(format!("{}/v1/models/no-such-model", app.base))
        .json(&json!({"settings": {"l2": 0.1}}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn olps_model_update_and_settings_history() {
    let db = TestDb::new().await;
    let cli = Cli::new(&db.url);
    let name = unique_name("update-cli");
    cli.ok(&format!("model create --name {name} --kind linear"))
        .await;
    let out = cli
        .ok(&format!(
            "model update {name} --learning-rate 0.1 --l1 0.01 --snapshot-policy {{\"keep\":4}}"
        ))
        .await;
    assert!(
        out.contains("changed l1, learning_rate, snapshot_policy.keep")
            && out.contains("from version 1 on"),
        "{out}"
    );
    let err = cli
        .fails(&format!(
            "model update {name} --settings {{\"center_target\":false}}"
        ))
        .await;
    assert!(
        err.contains("settings.center_target cannot change"),
        "{err}"
    );
    let err = cli.fails(&format!("model update {name}")).await;
    assert!(err.contains("nothing to change"), "{err}");
    let history = cli
        .ok(&format!("model settings-history {name} --format json"))
        .await;
    let history: Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 1);
    assert_eq!(history[0]["new_settings"]["l1"], json!(0.01));
    assert_eq!(history[0]["new_snapshot_policy"]["keep"], json!(4));
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'model.update'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(audited, 1);
}
