//! The fuzz suite (issue 13, item 6; DESIGN.md invariant 6): property-based tests that send
//! arbitrary input to every route of the OpenAPI document, and arbitrary rows straight into
//! `feedback_events`, then check that bad input never corrupts or blocks:
//!
//! - `every_route_answers_arbitrary_requests_without_a_5xx`: for each documented operation,
//!   requests built from a valid template with one part replaced by an arbitrary JSON value (any
//!   shape; unicode, NUL and very long strings; ±0, subnormals, 1e308, 1e400, NaN and Infinity
//!   spellings), removed or added, or a body that is not JSON at all; path parameters and query
//!   strings drawn the same way. Every answer is below 500 except the documented 503s, has a
//!   status the document lists for the operation and the error shape, and a refused request
//!   changes no table. Afterwards the queue drains, a good event on every model is learned, and
//!   every model (and the list) answers 200.
//! - `arbitrary_feedback_rows_are_applied_once_or_dead_lettered`: rows with arbitrary values in
//!   every column (many metadata shapes) inserted by plain SQL; after a drain every stored row was
//!   applied exactly once (to a version of this drain, counted once in the model's examples) or
//!   dead-lettered with a reason, nothing is left pending, every model stays readable, and a good
//!   event is learned afterwards.
//!
//! Sizes fit CI (about a minute of CPU for both); `OLPS_FUZZ_CASES=N` multiplies the number of
//! cases, and `OLPS_FUZZ_SEED=S` replays a run (the seed is printed when a property fails). Every
//! input that ever found a bug is kept below as an explicit regression test.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::client_errors::table_digests;
use olps::learner::ModelKind;

use crate::common::{create_model, decode, drain, spawn_app, TestApp};

// ---- Known bugs outside the HTTP side (issue 13 item 2, worked on in src/worker and
// src/learner). While it is open the generators leave out the input class that triggers it, so
// the suite tests everything else; set this to true once it is fixed, and the suite covers that
// class too (and must pass):
//
// - a linear label of huge magnitude (from about 1e77 on, see HUGE_LABEL): the drift detector's
//   state overflows, the stored learner state becomes unreadable and `GET /v1/models` answers
//   500 for every model.
//
// The other wedges of the issue (a feature value beyond f64 such as 1e400, a feature name of
// 6,400 characters) are dead-lettered with a reason since the validation merge: the generators
// include them, and the regressions below pin them.
const WORKER_SIDE_FIXES_LANDED: bool = true;

/// Linear labels of this magnitude or more are the "huge linear label" class (see above): the
/// squared loss squared again (the drift detector's variance) overflows f64 from about 1.3e77;
/// the fuzz suite found 1e80 already makes a model unreadable (see
/// `regression_linear_labels_of_1e80_keep_the_model_readable`).
const HUGE_LABEL: f64 = 1e75;

/// While WORKER_SIDE_FIXES_LANDED is false: finds the linear models whose stored learner state
/// became unreadable — the known drift-detector overflow, reached by huge losses (huge labels,
/// or settings that make SGD diverge, such as `learning_rate` 1e10 or `standardize: false` with
/// `learning_rate` 0.5) — and removes them by SQL, so that the known bug does not fail every
/// later check (it makes `GET /v1/models` answer 500 for all models). Returns their names; with
/// the fixes landed it removes nothing and the checks see every model.
async fn set_aside_known_unreadable(pool: &PgPool) -> Vec<String> {
    if WORKER_SIDE_FIXES_LANDED {
        return Vec::new();
    }
    let models: Vec<(Uuid, String, String)> =
        sqlx::query_as("SELECT model_id, name, kind FROM models")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut removed = Vec::new();
    for (id, name, kind) in models {
        let unreadable = matches!(
            olps::models::find(pool, &id.to_string()).await,
            Err(olps::models::ModelError::CorruptSettings { ref message, .. })
                if message.starts_with("learner_state")
        );
        if unreadable && kind == "linear" {
            for table in [
                "feedback_queue",
                "feedback_events",
                "prediction_log",
                "drift_events",
                "snapshot_parameters",
                "snapshots",
                "parameter_updates",
                "model_parameters",
                "model_versions",
                "models",
            ] {
                sqlx::query(&format!("DELETE FROM {table} WHERE model_id = $1"))
                    .bind(id)
                    .execute(pool)
                    .await
                    .unwrap();
            }
            removed.push(name);
        }
    }
    removed
}

fn cases(base: u32) -> u32 {
    let factor: u32 = std::env::var("OLPS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    base * factor.max(1)
}

/// A runner with a printed, replayable seed and no failure files (the regressions live in this
/// module as tests).
fn runner(name: &str, base_cases: u32) -> TestRunner {
    let seed: u64 = std::env::var("OLPS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{name}: seed {seed} (OLPS_FUZZ_SEED={seed} replays this run)");
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases: cases(base_cases),
        failure_persistence: None,
        max_shrink_iters: 200,
        max_shrink_time: 120_000,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---- Arbitrary JSON, kept as text so that it can hold what serde_json::Value cannot (1e400,
// NaN, lone surrogates, repeated keys) ------------------------------------------------------

/// A JSON-ish value; `Token` is written verbatim (numbers, and spellings that are not JSON).
#[derive(Debug, Clone)]
enum Raw {
    Null,
    Bool(bool),
    Token(String),
    Str(String),
    Arr(Vec<Raw>),
    Obj(Vec<(String, Raw)>),
}

impl Raw {
    fn from_value(v: &Value) -> Raw {
        match v {
            Value::Null => Raw::Null,
            Value::Bool(b) => Raw::Bool(*b),
            Value::Number(n) => Raw::Token(n.to_string()),
            Value::String(s) => Raw::Str(s.clone()),
            Value::Array(a) => Raw::Arr(a.iter().map(Raw::from_value).collect()),
            Value::Object(o) => Raw::Obj(
                o.iter()
                    .map(|(k, v)| (k.clone(), Raw::from_value(v)))
                    .collect(),
            ),
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Raw::Null => out.push_str("null"),
            Raw::Bool(b) => write!(out, "{b}").unwrap(),
            Raw::Token(t) => out.push_str(t),
            Raw::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
            Raw::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Raw::Obj(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    /// Nodes in pre-order (the root is 0).
    fn count(&self) -> usize {
        1 + match self {
            Raw::Arr(items) => items.iter().map(Raw::count).sum(),
            Raw::Obj(members) => members.iter().map(|(_, v)| v.count()).sum(),
            _ => 0,
        }
    }

    /// The node at pre-order index `target`, counting from `*at`.
    fn node_mut(&mut self, target: usize, at: &mut usize) -> Option<&mut Raw> {
        if *at == target {
            return Some(self);
        }
        *at += 1;
        match self {
            Raw::Arr(items) => items.iter_mut().find_map(|v| v.node_mut(target, at)),
            Raw::Obj(members) => members.iter_mut().find_map(|(_, v)| v.node_mut(target, at)),
            _ => None,
        }
    }

    /// Removes the member or element at pre-order index `target` (not the root).
    fn remove(&mut self, target: usize, at: &mut usize) -> bool {
        *at += 1;
        match self {
            Raw::Arr(items) => {
                for i in 0..items.len() {
                    if *at == target {
                        items.remove(i);
                        return true;
                    }
                    if items[i].remove(target, at) {
                        return true;
                    }
                }
                false
            }
            Raw::Obj(members) => {
                for i in 0..members.len() {
                    if *at == target {
                        members.remove(i);
                        return true;
                    }
                    if members[i].1.remove(target, at) {
                        return true;
                    }
                }
                false
            }
            _ => false,
        }
    }
}

/// Numbers and number-like spellings, valid JSON or not.
const NUMBER_TOKENS: &[&str] = &[
    "0",
    "-0",
    "-0.0",
    "0e0",
    "5e-324",
    "-5e-324",
    "2.2250738585072014e-308",
    "1e-300",
    "1e200",
    "-1e200",
    "1e308",
    "-1e308",
    "1.7976931348623157e308",
    "1.7976931348623159e308",
    "1e309",
    "1e400",
    "-1e400",
    "1e-400",
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "inf",
    "nan",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551616",
    "2147483647",
    "2147483648",
    "-2147483649",
    "0.5",
    "1",
    "-1",
    "2",
    "1.0",
    "01",
    "1.",
    ".5",
    "+1",
    "0x10",
    "\"\\ud800\"",
    "\"a\\udc00\"",
    "\"\\u0000\"",
];

/// Strings that have found or could find trouble.
const SPECIAL_STRINGS: &[&str] = &[
    "",
    " ",
    "\t",
    "\n \r",
    "\u{0}",
    "a\u{0}b",
    "__intercept__",
    "explicit",
    "implicit",
    "linear",
    "logistic",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "1",
    "-1",
    "true",
    "null",
    "fz-linear",
    "fz-logistic",
    "snap",
    "2026-01-01T00:00:00Z",
    "2026-01-01",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59-23:59",
    "-200000-01-01",
    "+262143-12-31",
    "2026-02-30",
    "00000000-0000-0000-0000-000000000000",
    "'; DROP TABLE models; --",
    "\u{FEFF}",
    "\u{202E}abc",
    "😀",
    "é",
    "%00",
    "../..",
    "\\",
    "\"",
    "a/b",
    "?x=1",
    "#",
];

fn number_token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(NUMBER_TOKENS).prop_map(String::from),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
        1 => any::<i64>().prop_map(|i| i.to_string()),
        1 => (any::<u32>(), -420i32..420).prop_map(|(m, e)| format!("{m}e{e}")),
    ]
}

fn fuzz_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(SPECIAL_STRINGS).prop_map(String::from),
        2 => ".{0,12}",
        1 => "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}]{1,4}",
        1 => (
            prop::sample::select(&["x", "é", "😀", "\u{0}", " "][..]),
            prop::sample::select(&[199usize, 200, 201, 256, 257, 1000, 1001, 6400, 70_000][..])
        )
            .prop_map(|(c, n)| c.repeat(n)),
        1 => "\\PC{0,20}".prop_map(|s| format!("{s}\u{0}{s}")),
    ]
}

/// Object keys: the document's property names (so that mutations reach deep), or anything.
fn key(names: &[String]) -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(names.to_vec()),
        1 => fuzz_string(),
    ]
    .boxed()
}

fn raw_value(names: &[String]) -> BoxedStrategy<Raw> {
    let leaf = prop_oneof![
        1 => Just(Raw::Null),
        1 => any::<bool>().prop_map(Raw::Bool),
        3 => number_token().prop_map(Raw::Token),
        3 => fuzz_string().prop_map(Raw::Str),
    ];
    let key = key(names);
    leaf.prop_recursive(3, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Raw::Arr),
            prop::collection::vec((key.clone(), inner), 0..6).prop_map(Raw::Obj),
        ]
    })
    .boxed()
}

// ---- Requests -------------------------------------------------------------------------------

/// One documented operation.
#[derive(Debug, Clone)]
struct Operation {
    method: String,
    path: String,
    query: Vec<String>,
    body: bool,
    statuses: BTreeSet<u16>,
}

fn operations(doc: &Value) -> Vec<Operation> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let query = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap().to_string())
                .collect();
            out.push(Operation {
                method: method.to_uppercase(),
                path: path.clone(),
                query,
                body: op.get("requestBody").is_some(),
                statuses: op["responses"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|s| s.parse().unwrap())
                    .collect(),
            });
        }
    }
    out
}

/// Every property name in the document's schemas, plus the shapes' own keys.
fn property_names(doc: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::Object(props)) = o.get("properties") {
                    out.extend(props.keys().cloned());
                }
                o.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut names = BTreeSet::new();
    walk(&doc["components"], &mut names);
    walk(&doc["paths"], &mut names);
    names.extend(["features", "metadata", "x", "y"].map(String::from));
    names.into_iter().collect()
}

/// Valid bodies per operation (a test fails when a documented operation that takes a body has
/// none, so new routes get fuzzed too). `{name}` in a string becomes a fresh model name.
fn templates(method: &str, path: &str) -> Vec<Value> {
    let event = json!({"entity_id": "e1", "feedback_type": "explicit", "feedback_value": 1.0,
                       "confidence": 0.5, "features": {"x": 1.5, "y": -2.0},
                       "metadata": {"source": "fuzz", "tags": ["a", "b"]},
                       "timestamp": "2026-01-01T00:00:00Z"});
    match (method, path) {
        ("POST", "/v1/models") => vec![
            json!({"name": "{name}", "kind": "linear"}),
            json!({"name": "{name}", "kind": "logistic", "settings": {"optimizer": "adam",
                   "learning_rate": 0.05, "l2": 0.001, "clip_gradient": 5.0,
                   "drift": {"detector": "adwin"}, "guard": {"enabled": false}}}),
        ],
        ("POST", "/v1/models/{model}/feedback") => vec![
            event.clone(),
            json!({"entity_id": "e2", "feedback_type": "implicit", "feedback_value": 0}),
            json!({"events": [event.clone(),
                              {"id": Uuid::new_v4(), "entity_id": "e3", "feedback_type": "other",
                               "feedback_value": 0.25, "features": {"z": 3}}]}),
        ],
        ("POST", "/v1/models/{model}/predict") => vec![
            json!({"features": {"x": 1.0, "y": 2.0}}),
            json!({"features": {"x": 1.0}, "entity_id": "e1", "explain": true}),
            json!({"instances": [{"features": {"x": 1}}, {"features": {"y": 2}, "entity_id": "e2"}]}),
        ],
        ("POST", "/v1/models/{model}/snapshots") => vec![json!({"label": "{name}"}), json!({})],
        ("POST", "/v1/models/{model}/rollback") => {
            vec![json!({"to_version": 1}), json!({"snapshot": "snap"})]
        }
        ("PUT", "/v1/models/{model}/snapshot-policy") => {
            vec![json!({"every_versions": 10, "every_minutes": null, "keep": 3})]
        }
        ("PATCH", "/v1/models/{model}") => vec![
            json!({"settings": {"learning_rate": 0.05, "l2": 0.001,
                                "drift": {"detector": "page_hinkley"}, "guard": {"window": 50}},
                   "snapshot_policy": {"every_versions": 10, "keep": null}}),
            json!({"settings": {"optimizer": "adam"}}),
        ],
        ("POST", "/v1/models/{model}/resume") => vec![json!({})],
        ("POST", "/v1/models/{model}/challengers") => vec![
            json!({"challenger": "fz-linear"}),
            json!({"challenger": "fz-logistic"}),
        ],
        ("POST", "/v1/tokens") => vec![
            json!({"name": "{name}", "scopes": ["read"]}),
            json!({"name": "{name}", "scopes": ["predict", "feedback"], "expires_in": "1h"}),
        ],
        _ => vec![],
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// The template as it is.
    Keep,
    /// Replace the node at this pre-order index.
    Replace(usize, Raw),
    /// Remove the member or element at this pre-order index.
    Remove(usize),
    /// Add a member to the object at this pre-order index (or the nearest).
    Add(usize, String, Raw),
    /// Replace the whole body.
    Whole(Raw),
    /// Not JSON: these bytes (possibly invalid UTF-8, truncated or empty).
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
enum PathArg {
    /// An existing model or snapshot, by index into the fixture's keys.
    Known(usize),
    Fuzz(String),
    Uuid(u128),
}

#[derive(Debug, Clone)]
struct Request {
    op: usize,
    args: [PathArg; 2],
    query: Vec<(usize, String)>,
    template: usize,
    mutation: Mutation,
    json_content_type: bool,
}

fn request_strategy(ops: usize, names: &[String]) -> impl Strategy<Value = Request> {
    let path_arg = prop_oneof![
        6 => (0usize..8).prop_map(PathArg::Known),
        2 => fuzz_string().prop_map(PathArg::Fuzz),
        1 => any::<u128>().prop_map(PathArg::Uuid),
    ];
    let query_value = prop_oneof![fuzz_string(), number_token()];
    let query = prop_oneof![
        2 => Just(Vec::new()),
        3 => prop::collection::vec((any::<usize>(), query_value), 1..3),
    ];
    let mutation = prop_oneof![
        2 => Just(Mutation::Keep),
        8 => (any::<usize>(), raw_value(names)).prop_map(|(i, r)| Mutation::Replace(i, r)),
        2 => any::<usize>().prop_map(Mutation::Remove),
        2 => (any::<usize>(), key(names), raw_value(names)).prop_map(|(i, k, r)| Mutation::Add(i, k, r)),
        1 => raw_value(names).prop_map(Mutation::Whole),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Mutation::Bytes),
    ];
    (
        0..ops,
        [path_arg.clone(), path_arg],
        query,
        any::<usize>(),
        mutation,
        prop::bool::weighted(0.9),
    )
        .prop_map(
            |(op, args, query, template, mutation, json_content_type)| Request {
                op,
                args,
                query,
                template,
                mutation,
                json_content_type,
            },
        )
}

/// Percent-encodes a path segment or query component (everything but unreserved characters),
/// cut to 2,000 characters: URLs longer than a few KiB cannot even be sent (the client refuses
/// URIs over 64 KiB, and proxies cut at 8 KiB), so the very long strings go into bodies. A
/// segment of only "." or ".." cannot be sent at all: URL parsing removes it, encoded or not
/// (`/v1/models/./feedback` arrives as `/v1/models/feedback`), and names refuse both; such a
/// string is sent as "...", a name like any other.
fn encode(s: &str) -> String {
    let s: String = s.chars().take(2000).collect();
    let s = if s == "." || s == ".." {
        "...".to_string()
    } else {
        s
    };
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            write!(out, "%{b:02X}").unwrap();
        }
    }
    out
}

static FRESH: AtomicU64 = AtomicU64::new(0);

fn fresh_names(raw: &mut Raw) {
    match raw {
        Raw::Str(s) if s == "{name}" => {
            *s = format!("fz-{}", FRESH.fetch_add(1, Ordering::Relaxed));
        }
        Raw::Arr(items) => items.iter_mut().for_each(fresh_names),
        Raw::Obj(members) => members.iter_mut().for_each(|(_, v)| fresh_names(v)),
        _ => {}
    }
}

/// The body's bytes: the template with the mutation applied.
fn body_bytes(template: &Value, mutation: &Mutation) -> Vec<u8> {
    let mut raw = Raw::from_value(template);
    fresh_names(&mut raw);
    let n = raw.count();
    match mutation {
        Mutation::Keep => {}
        Mutation::Replace(i, r) => {
            if let Some(node) = raw.node_mut(i % n, &mut 0) {
                *node = r.clone();
            }
        }
        Mutation::Remove(i) => {
            if n > 1 {
                raw.remove(1 + i % (n - 1), &mut 0);
            }
        }
        Mutation::Add(i, k, r) => {
            let mut objects = Vec::new();
            for at in 0..n {
                if matches!(raw.node_mut(at, &mut 0), Some(Raw::Obj(_))) {
                    objects.push(at);
                }
            }
            if !objects.is_empty() {
                let at = objects[i % objects.len()];
                if let Some(Raw::Obj(members)) = raw.node_mut(at, &mut 0) {
                    members.push((k.clone(), r.clone()));
                }
            }
        }
        Mutation::Whole(r) => raw = r.clone(),
        Mutation::Bytes(b) => return b.clone(),
    }
    raw.render().into_bytes()
}

/// What the fuzzed service runs over: two learned models, a snapshot, a logged prediction.
struct Fixture {
    app: TestApp,
    doc: Value,
    ops: Vec<Operation>,
    /// Model keys (names and UUIDs) and snapshot keys for path parameters.
    models: Vec<String>,
    snapshots: Vec<String>,
    /// Answers by operation, status and error code (reported at the end).
    outcomes: std::sync::Mutex<BTreeMap<(String, u16, String), u64>>,
}

async fn fixture() -> Fixture {
    let app = spawn_app().await;
    let linear = app.create_model("fz-linear", "linear").await;
    let logistic = app.create_model("fz-logistic", "logistic").await;
    for model in ["fz-linear", "fz-logistic"] {
        let events: Vec<Value> = (0..20)
            .map(|i| {
                json!({"entity_id": format!("e{i}"), "feedback_type": "explicit",
                       "feedback_value": (i % 2) as f64, "features": {"x": i as f64 / 10.0, "y": 1.0}})
            })
            .collect();
        let (status, body) = app
            .post(
                &format!("/v1/models/{model}/feedback"),
                &json!({ "events": events }),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    drain(app.pool(), 10).await;
    for model in ["fz-linear", "fz-logistic"] {
        let (status, body) = app
            .post(
                &format!("/v1/models/{model}/snapshots"),
                &json!({"label": "snap"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (_, doc) = app.get("/openapi.json").await;
    let ops = operations(&doc);
    for op in &ops {
        if op.body {
            assert!(
                !templates(&op.method, &op.path).is_empty(),
                "{} {} takes a body but the fuzz suite has no template for it: add one to \
                 templates()",
                op.method,
                op.path
            );
        }
    }
    Fixture {
        models: vec![
            "fz-linear".into(),
            "fz-logistic".into(),
            linear.to_string(),
            logistic.to_string(),
        ],
        snapshots: vec!["snap".into()],
        outcomes: Default::default(),
        app,
        doc,
        ops,
    }
}

/// The 503 codes the document lists (every one carries Retry-After).
const DOCUMENTED_503: &[&str] = &[
    "timeout",
    "statement_timeout",
    "database_busy",
    "database_conflict",
    "database_unavailable",
];

/// Sends one fuzzed request and checks what invariant 6 asks of its answer.
async fn check_request(fx: &Fixture, r: &Request) -> Result<(), TestCaseError> {
    let outcome = send_and_check(fx, r).await;
    if let Ok((op, status, code)) = &outcome {
        *fx.outcomes
            .lock()
            .unwrap()
            .entry((op.clone(), *status, code.clone()))
            .or_default() += 1;
    }
    outcome.map(|_| ())
}

async fn send_and_check(fx: &Fixture, r: &Request) -> Result<(String, u16, String), TestCaseError> {
    let op = &fx.ops[r.op];
    let mut path = op.path.clone();
    for (i, name) in ["{model}", "{snapshot}"].iter().enumerate() {
        let keys = if i == 0 { &fx.models } else { &fx.snapshots };
        let value = match &r.args[i] {
            PathArg::Known(k) => keys[k % keys.len()].clone(),
            PathArg::Fuzz(s) => s.clone(),
            PathArg::Uuid(u) => Uuid::from_u128(*u).to_string(),
        };
        path = path.replace(name, &encode(&value));
    }
    // A challenger is a model too: the next known one, or the same fuzzed key.
    let challenger = match &r.args[0] {
        PathArg::Known(k) => fx.models[(k + 1) % fx.models.len()].clone(),
        PathArg::Fuzz(s) => s.clone(),
        PathArg::Uuid(u) => Uuid::from_u128(*u).to_string(),
    };
    path = path.replace("{challenger}", &encode(&challenger));
    let mut names: Vec<String> = op.query.clone();
    names.push("unknown".into());
    let query: Vec<String> = r
        .query
        .iter()
        .map(|(n, v)| format!("{}={}", encode(&names[n % names.len()]), encode(v)))
        .collect();
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let templates = templates(&op.method, &op.path);
    let body = if op.body || !templates.is_empty() {
        Some(body_bytes(
            &templates[r.template % templates.len().max(1)],
            &r.mutation,
        ))
    } else {
        None
    };
    let writes = op.method != "GET";
    let pool = fx.app.pool();
    let before = if writes {
        Some(table_digests(pool).await)
    } else {
        None
    };
    let stored_before = crate::common::counts(pool).await.0;

    let method = reqwest::Method::from_bytes(op.method.as_bytes()).unwrap();
    let mut request = fx
        .app
        .client
        .request(method, format!("{}{path}", fx.app.base));
    if let Some(body) = &body {
        if r.json_content_type {
            request = request.header("content-type", "application/json");
        }
        request = request.body(body.clone());
    }
    let response = request
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("{} {path}: no answer: {e}", op.method)))?;
    let retry_after = response.headers().get("retry-after").cloned();
    let (status, answer) = decode(response).await;
    let shown_body = body
        .as_ref()
        .map(|b| String::from_utf8_lossy(&b[..b.len().min(2000)]).into_owned())
        .unwrap_or_default();
    let what = format!("{} {path} {shown_body} -> {status} {answer}", op.method);

    let code = answer["error"]["code"].as_str().unwrap_or_default();
    prop_assert!(
        status < 500 || (status == 503 && DOCUMENTED_503.contains(&code)),
        "a server error: {what}"
    );
    if status == 503 {
        prop_assert!(retry_after.is_some(), "a 503 without Retry-After: {what}");
    }
    if status >= 400 {
        prop_assert!(
            !code.is_empty() && answer["error"]["message"].is_string(),
            "an error without the error shape: {what}"
        );
    }
    let fallback = status == 404
        && answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no such route"));
    prop_assert!(
        fallback || op.statuses.contains(&status),
        "status {status} is not documented for {} {}: {what}",
        op.method,
        op.path
    );
    if let Some(before) = before {
        if status >= 400 {
            let after = table_digests(pool).await;
            prop_assert_eq!(
                &after,
                &before,
                "a refused request changed a table: {}",
                what
            );
        }
    }
    if op.path == "/v1/models/{model}/feedback" && status == 202 {
        let stored_after = crate::common::counts(pool).await.0;
        prop_assert_eq!(
            stored_after - stored_before,
            answer["new"].as_i64().unwrap(),
            "stored events vs the answer's `new`: {}",
            what
        );
    }
    Ok((
        format!("{} {}", op.method, op.path),
        status,
        code.to_string(),
    ))
}

/// Drains every model's queue, bounded: a model that cannot drain is a stuck model.
async fn drain_bounded(pool: &PgPool, seconds: u64, what: &str) -> Result<(), TestCaseError> {
    tokio::time::timeout(Duration::from_secs(seconds), drain(pool, 500))
        .await
        .map(|_| ())
        .map_err(|_| {
            TestCaseError::fail(format!(
                "the queue did not drain within {seconds} s (a stuck model): {what}"
            ))
        })
}

/// Afterwards: nothing pending, a good event on every model is learned, and every model (and
/// the list) answers 200.
async fn every_model_still_learns(app: &TestApp) -> Result<(), TestCaseError> {
    let pool = app.pool();
    let known = set_aside_known_unreadable(pool).await;
    if !known.is_empty() {
        eprintln!("known worker-side bug (WORKER_SIDE_FIXES_LANDED): set aside {known:?}");
    }
    // A model the guard quarantined keeps its queue: let it learn again.
    let quarantined: Vec<String> =
        sqlx::query_scalar("SELECT model_id::text FROM models WHERE status <> 'active'")
            .fetch_all(pool)
            .await
            .unwrap();
    for id in &quarantined {
        let (status, body) = app
            .post(&format!("/v1/models/{id}/resume"), &json!({}))
            .await;
        prop_assert_eq!(status, 200, "resume: {}", body);
    }
    drain_bounded(pool, 120, "after the fuzzing").await?;
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM feedback_queue WHERE status = 'pending'")
            .fetch_one(pool)
            .await
            .unwrap();
    prop_assert_eq!(pending, 0, "rows left pending after a drain");
    let dead_without_reason: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM feedback_queue WHERE status = 'dead' AND coalesce(dead_reason, '') = ''",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    prop_assert_eq!(dead_without_reason, 0, "dead letters without a reason");

    let (status, list) = app.get("/v1/models").await;
    prop_assert_eq!(status, 200, "GET /v1/models: {}", list);
    let models: Vec<(Uuid, String, String)> =
        sqlx::query_as("SELECT model_id, name, kind FROM models ORDER BY name")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut good = HashMap::new();
    for (id, name, kind) in &models {
        let event_id = Uuid::new_v4();
        let label = if kind == "logistic" { 1.0 } else { 0.5 };
        let (status, body) = app
            .post(
                &format!("/v1/models/{id}/feedback"),
                &json!({"id": event_id, "entity_id": "good", "feedback_type": "explicit",
                        "feedback_value": label, "features": {"good": 1.0}}),
            )
            .await;
        prop_assert_eq!(status, 202, "good feedback for {}: {}", name, body);
        good.insert(event_id, name.clone());
    }
    drain_bounded(pool, 120, "the good events").await?;
    for (event_id, name) in &good {
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT applied_version FROM feedback_events WHERE id = $1")
                .bind(event_id)
                .fetch_one(pool)
                .await
                .unwrap();
        let reason: Option<String> =
            sqlx::query_scalar("SELECT dead_reason FROM feedback_queue WHERE feedback_id = $1")
                .bind(event_id)
                .fetch_optional(pool)
                .await
                .unwrap()
                .flatten();
        prop_assert!(
            applied.is_some(),
            "model {name} did not learn a good event (dead letter: {reason:?})"
        );
    }
    for (id, name, _) in &models {
        let (status, body) = app.get(&format!("/v1/models/{id}")).await;
        prop_assert_eq!(status, 200, "GET model {}: {}", name, body);
        let (status, body) = app
            .post(
                &format!("/v1/models/{id}/predict"),
                &json!({"features": {"good": 1.0}}),
            )
            .await;
        prop_assert_eq!(status, 200, "predict with {}: {}", name, body);
        prop_assert!(body["prediction"].is_number(), "{}: {}", name, body);
    }
    let (status, list) = app.get("/v1/models").await;
    prop_assert_eq!(status, 200, "GET /v1/models: {}", list);
    Ok(())
}

/// Whether a request body sends a linear model a label in the "huge label" class (see
/// WORKER_SIDE_FIXES_LANDED).
fn has_huge_label(body: &[u8]) -> bool {
    fn walk(v: &Value) -> bool {
        match v {
            Value::Object(o) => o.iter().any(|(k, v)| {
                (k == "feedback_value" && v.as_f64().is_some_and(|f| f.abs() >= HUGE_LABEL))
                    || walk(v)
            }),
            Value::Array(a) => a.iter().any(walk),
            _ => false,
        }
    }
    serde_json::from_slice::<Value>(body).is_ok_and(|v| walk(&v))
}

#[test]
fn every_route_answers_arbitrary_requests_without_a_5xx() {
    let rt = runtime();
    let fx = rt.block_on(fixture());
    let names = property_names(&fx.doc);
    let mut runner = runner("http fuzz", 1500);
    let strategy = request_strategy(fx.ops.len(), &names);
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |r| {
        let op = &fx.ops[r.op];
        if !WORKER_SIDE_FIXES_LANDED && op.path.ends_with("/feedback") {
            // Known worker-side bug class (huge linear labels make the model unreadable):
            // not sent until it is fixed; see WORKER_SIDE_FIXES_LANDED.
            let templates = templates(&op.method, &op.path);
            let body = body_bytes(&templates[r.template % templates.len()], &r.mutation);
            if has_huge_label(&body) {
                return Ok(());
            }
        }
        rt.block_on(check_request(&fx, &r))
    });
    eprintln!("http fuzz: {:?} for the requests", started.elapsed());
    for ((op, status, code), n) in fx.outcomes.lock().unwrap().iter() {
        eprintln!("  {op:<45} {status} {code:<20} {n}");
    }
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(async {
        every_model_still_learns(&fx.app)
            .await
            .unwrap_or_else(|e| panic!("after the fuzzing: {e}"));
    });
    eprintln!("http fuzz: {:?} in all", started.elapsed());
}

// ---- Models with arbitrary settings --------------------------------------------------------

/// A settings object: the defaults the document shows, with a few fields (nested ones too)
/// replaced by extreme or arbitrary values.
fn settings_strategy(doc: &Value) -> BoxedStrategy<Raw> {
    let defaults = &doc["components"]["schemas"]["LearnerConfig"]["properties"];
    let mut paths: Vec<(String, Option<String>, Value)> = Vec::new();
    for (name, schema) in defaults.as_object().unwrap() {
        match &schema["default"] {
            Value::Object(inner) => {
                for (k, v) in inner {
                    paths.push((name.clone(), Some(k.clone()), v.clone()));
                }
            }
            v => paths.push((name.clone(), None, v.clone())),
        }
    }
    let value = prop_oneof![
        6 => prop::sample::select(&[
            "0", "-0", "5e-324", "1e-300", "1e-8", "0.5", "0.999999999", "1", "2", "100", "1e10",
            "1e150", "1e200", "1e308", "1.7976931348623157e308", "1e400", "-1", "9223372036854775807",
        ][..]).prop_map(|t| Raw::Token(t.to_string())),
        2 => prop::sample::select(&[
            "sgd", "adagrad", "rmsprop", "adam", "ftrl", "auto", "constant", "invscaling", "none",
            "page_hinkley", "adwin", "both", "boost", "reset",
        ][..]).prop_map(|t| Raw::Str(t.to_string())),
        1 => any::<bool>().prop_map(Raw::Bool),
        1 => number_token().prop_map(Raw::Token),
    ];
    let n = paths.len();
    prop::collection::vec((0..n, value), 1..3)
        .prop_map(move |changes| {
            let mut raw: Vec<(String, Raw)> = Vec::new();
            for (i, v) in changes {
                let (name, inner, _) = &paths[i];
                match inner {
                    None => raw.push((name.clone(), v)),
                    Some(k) => raw.push((name.clone(), Raw::Obj(vec![(k.clone(), v)]))),
                }
            }
            // A repeated top-level field: the last one wins, as in any JSON object.
            Raw::Obj(raw)
        })
        .boxed()
}

/// A model created with arbitrary settings is refused (400) or learns: events stream in, the
/// queue drains, the state stays readable, predictions answer, and a good event is learned.
#[test]
fn models_with_arbitrary_settings_are_refused_or_keep_learning() {
    let rt = runtime();
    let app = rt.block_on(spawn_app());
    let (_, doc) = rt.block_on(app.get("/openapi.json"));
    let mut runner = runner("settings fuzz", 150);
    let strategy = (settings_strategy(&doc), prop::bool::ANY);
    let tally = std::sync::Mutex::new(BTreeMap::<String, u64>::new());
    let result = runner.run(&strategy, |(settings, logistic)| {
        rt.block_on(async {
            let name = format!("set-{}", FRESH.fetch_add(1, Ordering::Relaxed));
            let kind = if logistic { "logistic" } else { "linear" };
            let body = format!(
                "{{\"name\": \"{name}\", \"kind\": \"{kind}\", \"settings\": {}}}",
                settings.render()
            );
            let (status, answer) = app.post_raw("/v1/models", body.clone().into_bytes()).await;
            *tally
                .lock()
                .unwrap()
                .entry(format!(
                    "{status} {}",
                    answer["error"]["code"].as_str().unwrap_or("")
                ))
                .or_default() += 1;
            prop_assert!(
                status == 201 || status == 400,
                "create {body}: {status} {answer}"
            );
            if status != 201 {
                return Ok(());
            }
            let events: Vec<Value> = (0..30)
                .map(|i| {
                    let label = if logistic {
                        (i % 2) as f64
                    } else {
                        (i % 7) as f64 * 3.0 - 5.0
                    };
                    json!({"entity_id": format!("e{i}"), "feedback_type": "explicit",
                           "feedback_value": label,
                           "features": {"x": i as f64 - 10.0, "y": (i * i) as f64, "z": 1.0}})
                })
                .collect();
            let (status, answer) = app
                .post(
                    &format!("/v1/models/{name}/feedback"),
                    &json!({ "events": events }),
                )
                .await;
            prop_assert_eq!(status, 202, "feedback: {}", answer);
            drain_bounded(app.pool(), 30, &body).await?;
            // Known worker-side bug class (see set_aside_known_unreadable): a linear model whose
            // learning diverges ends with an unreadable state. Counted, not failed, until fixed.
            if !set_aside_known_unreadable(app.pool()).await.is_empty() {
                *tally
                    .lock()
                    .unwrap()
                    .entry("known bug: unreadable".into())
                    .or_default() += 1;
                return Ok(());
            }
            let (status, answer) = app.get(&format!("/v1/models/{name}")).await;
            prop_assert_eq!(
                status,
                200,
                "the model after learning, {}: {}",
                body,
                answer
            );
            let (status, answer) = app
                .post(
                    &format!("/v1/models/{name}/predict"),
                    &json!({"features": {"x": 1}}),
                )
                .await;
            prop_assert_eq!(status, 200, "predict, {}: {}", body, answer);
            Ok(())
        })
    });
    eprintln!("settings fuzz: {:?}", tally.lock().unwrap());
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(async {
        every_model_still_learns(&app)
            .await
            .unwrap_or_else(|e| panic!("after the fuzzing: {e}"));
    });
}

// ---- Rows straight into feedback_events ------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum ModelSel {
    Linear,
    Logistic,
    Unknown,
}

#[derive(Debug, Clone)]
enum IdSel {
    /// The column default.
    Default,
    Fresh(u128),
    /// The id of an earlier row of the case (the insert is refused: same primary key).
    Repeat(usize),
}

#[derive(Debug, Clone)]
struct SqlRow {
    model: ModelSel,
    id: IdSel,
    entity_id: String,
    feedback_type: String,
    feedback_value: f64,
    /// None: the column default; Some(None): NULL.
    confidence: Option<Option<f64>>,
    /// As text, cast to timestamptz; None: the default.
    timestamp: Option<String>,
    /// As text, cast to jsonb; None: NULL.
    metadata: Option<String>,
    processed: Option<bool>,
    applied_version: Option<i64>,
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => prop::sample::select(&[
            0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-300,
            1e200, -1e200, 1e308, f64::MAX, f64::MIN, f64::NAN, f64::INFINITY, f64::NEG_INFINITY,
        ][..]),
        3 => -10.0..10.0f64,
        1 => any::<f64>(),
    ]
}

fn feature_name() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => prop::sample::select(&["x", "y", "z", "amount", "country=US"][..]).prop_map(String::from),
        1 => fuzz_string(),
        1 => (prop::sample::select(&[200usize, 201, 6400][..]), prop::sample::select(&["a", "é", "😀"][..]))
            .prop_map(|(n, c)| c.repeat(n)),
    ]
}

fn feature_value() -> BoxedStrategy<Raw> {
    prop_oneof![
        16 => (-100.0..100.0f64).prop_map(|f| Raw::Token(format!("{f:?}"))),
        4 => number_token().prop_map(Raw::Token),
        2 => float().prop_filter("finite", |f| f.is_finite()).prop_map(|f| Raw::Token(format!("{f:?}"))),
        1 => fuzz_string().prop_map(Raw::Str),
        1 => any::<bool>().prop_map(Raw::Bool),
        1 => Just(Raw::Null),
        1 => Just(Raw::Arr(vec![Raw::Token("1".into())])),
        1 => Just(Raw::Obj(vec![("a".into(), Raw::Token("1".into()))])),
    ]
    .boxed()
}

fn metadata(names: &[String]) -> BoxedStrategy<Option<String>> {
    let features = prop_oneof![
        16 => prop::collection::vec((feature_name(), feature_value()), 0..6).prop_map(Raw::Obj),
        1 => (1000usize..1003).prop_map(|n| Raw::Obj(
            (0..n).map(|i| (format!("f{i}"), Raw::Token("1".into()))).collect()
        )),
        2 => raw_value(names),
    ];
    prop_oneof![
        1 => Just(None),
        12 => (features, prop::collection::vec((key(names), raw_value(names)), 0..3))
            .prop_map(|(f, mut rest)| {
                rest.push(("features".into(), f));
                Some(Raw::Obj(rest).render())
            }),
        1 => prop::collection::vec((key(names), raw_value(names)), 0..3)
            .prop_map(|m| Some(Raw::Obj(m).render())),
        1 => raw_value(names).prop_map(|r| Some(r.render())),
    ]
    .boxed()
}

fn sql_row(names: &[String]) -> impl Strategy<Value = SqlRow> {
    let model = prop_oneof![
        6 => Just(ModelSel::Linear),
        6 => Just(ModelSel::Logistic),
        1 => Just(ModelSel::Unknown),
    ];
    let id = prop_oneof![
        4 => Just(IdSel::Default),
        2 => any::<u128>().prop_map(IdSel::Fresh),
        1 => any::<usize>().prop_map(IdSel::Repeat),
    ];
    // Mostly valid columns, so that most rows reach the learner with one or two extreme parts.
    let entity = prop_oneof![
        8 => prop::sample::select(&["e1", "e2", "logged"][..]).prop_map(String::from),
        1 => fuzz_string(),
    ];
    let kind = prop_oneof![
        8 => prop::sample::select(&["explicit", "implicit", "click"][..]).prop_map(String::from),
        1 => fuzz_string(),
    ];
    let label = prop_oneof![
        4 => prop::sample::select(&[0.0, 1.0, 0.5, -0.0, 5e-324][..]),
        2 => 0.0..=1.0f64,
        3 => float(),
        1 => prop::sample::select(&[1e80, -1e80, 1e200, f64::MAX][..]),
    ];
    let confidence = prop_oneof![
        6 => Just(None),
        1 => Just(Some(None)),
        2 => (0.0..=1.0f64).prop_map(|f| Some(Some(f))),
        2 => float().prop_map(|f| Some(Some(f))),
    ];
    let timestamp = prop_oneof![
        4 => Just(None),
        1 => prop::sample::select(&[
            "infinity", "-infinity", "4713-01-01 BC", "294276-12-31 23:59:59+00",
            "1970-01-01", "2026-01-01T00:00:00Z",
        ][..]).prop_map(|s| Some(s.to_string())),
    ];
    (
        model,
        id,
        entity,
        kind,
        label,
        confidence,
        timestamp,
        metadata(names),
        prop::option::weighted(0.05, any::<bool>()),
        prop::option::weighted(0.05, any::<i64>()),
    )
        .prop_map(
            |(
                model,
                id,
                entity_id,
                feedback_type,
                feedback_value,
                confidence,
                timestamp,
                metadata,
                processed,
                applied_version,
            )| SqlRow {
                model,
                id,
                entity_id,
                feedback_type,
                feedback_value,
                confidence,
                timestamp,
                metadata,
                processed,
                applied_version,
            },
        )
}

/// Whether a row belongs to the input class of a known worker-side bug (see
/// WORKER_SIDE_FIXES_LANDED).
fn known_worker_bug(row: &SqlRow) -> bool {
    matches!(row.model, ModelSel::Linear)
        && row.feedback_value.is_finite()
        && row.feedback_value.abs() >= HUGE_LABEL
}

struct SqlFixture {
    app: TestApp,
    /// Rows refused by PostgreSQL, stored, applied, dead-lettered (reported at the end).
    tally: [AtomicU64; 4],
    /// SQLSTATEs of the refused rows.
    refusals: std::sync::Mutex<BTreeMap<String, u64>>,
}

async fn sql_fixture() -> SqlFixture {
    SqlFixture {
        app: spawn_app().await,
        tally: Default::default(),
        refusals: Default::default(),
    }
}

/// A linear and a logistic model of their own for one case (so that cases stay independent,
/// and a failing one can be shrunk and replayed alone), each with a logged prediction for the entity "logged": rows
/// without features learn from it.
async fn case_models(pool: &PgPool) -> (Uuid, Uuid) {
    let n = FRESH.fetch_add(1, Ordering::Relaxed);
    let mut ids = Vec::new();
    for kind in [ModelKind::Linear, ModelKind::Logistic] {
        let model = create_model(
            pool,
            &format!("rows-{n}-{kind:?}"),
            kind,
            Default::default(),
        )
        .await;
        sqlx::query(
            "INSERT INTO prediction_log (model_id, entity_id, features, prediction, model_version)
             VALUES ($1, 'logged', '{\"x\": 1.5, \"y\": -1}', 0.5, 0)",
        )
        .bind(model.model_id)
        .execute(pool)
        .await
        .unwrap();
        ids.push(model.model_id);
    }
    (ids[0], ids[1])
}

async fn insert_row(
    pool: &PgPool,
    (linear, logistic): (Uuid, Uuid),
    row: &SqlRow,
    earlier: &[(Uuid, Uuid)],
) -> Result<(Uuid, Uuid), sqlx::Error> {
    let model = match row.model {
        ModelSel::Linear => linear,
        ModelSel::Logistic => logistic,
        ModelSel::Unknown => Uuid::from_u128(0xdead_beef),
    };
    let id = match &row.id {
        IdSel::Default => None,
        IdSel::Fresh(u) => Some(Uuid::from_u128(*u)),
        IdSel::Repeat(i) if !earlier.is_empty() => Some(earlier[i % earlier.len()].1),
        IdSel::Repeat(_) => None,
    };
    // Every column; an omitted one takes its default.
    sqlx::query_as(
        "INSERT INTO feedback_events (model_id, id, entity_id, feedback_type, feedback_value,
                                      confidence, timestamp, metadata, processed, applied_version)
         VALUES ($1, coalesce($2, gen_random_uuid()), $3, $4, $5,
                 CASE WHEN $6 THEN $7 ELSE 1.0 END,
                 coalesce($8::timestamptz, now()), $9::jsonb, coalesce($10, false), $11)
         RETURNING model_id, id",
    )
    .bind(model)
    .bind(id)
    .bind(&row.entity_id)
    .bind(&row.feedback_type)
    .bind(row.feedback_value)
    .bind(row.confidence.is_some())
    .bind(row.confidence.flatten())
    .bind(&row.timestamp)
    .bind(&row.metadata)
    .bind(row.processed)
    .bind(row.applied_version)
    .fetch_one(pool)
    .await
}

/// One case: batches of rows for a fresh pair of models, each batch inserted and drained in
/// turn (so later batches meet the state the earlier ones left).
async fn check_case(fx: &SqlFixture, batches: &[Vec<SqlRow>]) -> Result<(), TestCaseError> {
    let models = case_models(fx.app.pool()).await;
    for rows in batches {
        check_rows(fx, models, rows).await?;
    }
    Ok(())
}

/// Inserts the rows, drains, and checks that every stored row was applied once or set aside with
/// a reason, and that the models stay readable.
async fn check_rows(
    fx: &SqlFixture,
    models: (Uuid, Uuid),
    rows: &[SqlRow],
) -> Result<(), TestCaseError> {
    let pool = fx.app.pool();
    let state = |id: Uuid| async move {
        let (version, seen): (i64, i64) =
            sqlx::query_as("SELECT version, examples_seen FROM models WHERE model_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        (version, seen)
    };
    let before: BTreeMap<Uuid, (i64, i64)> = BTreeMap::from([
        (models.0, state(models.0).await),
        (models.1, state(models.1).await),
    ]);
    let mut stored: Vec<(Uuid, Uuid)> = Vec::new();
    for row in rows {
        // The worker's columns are refused at insert (V120): a client's `processed = true` on
        // a row later dead-lettered once let retention delete it as learned.
        let sets_worker_column = row.processed == Some(true) || row.applied_version.is_some();
        match insert_row(pool, models, row, &stored).await {
            Ok(key) => {
                prop_assert!(
                    !sets_worker_column,
                    "a row setting a column the worker owns was stored: {row:?}"
                );
                stored.push(key);
                fx.tally[1].fetch_add(1, Ordering::Relaxed);
            }
            // PostgreSQL refused the row itself (NUL, a repeated id, JSON it cannot store, an
            // entity_id too long for its index): nothing was stored, nothing is to be learned.
            Err(sqlx::Error::Database(e)) => {
                fx.tally[0].fetch_add(1, Ordering::Relaxed);
                let code = e.code().unwrap_or_default();
                // Without the event's id, so that the tally groups by reason.
                let reason = e.message().split(" (event ").next().unwrap_or_default();
                *fx.refusals
                    .lock()
                    .unwrap()
                    .entry(format!("{code} {reason}"))
                    .or_default() += 1;
                if code == "23514" {
                    prop_assert!(
                        sets_worker_column && e.message().contains("is set by the worker"),
                        "unexpected check violation ({e}) of {row:?}"
                    );
                } else {
                    prop_assert!(
                        code.starts_with("22") || code == "23505" || code == "54000",
                        "unexpected refusal ({code}: {e}) of {row:?}"
                    );
                }
            }
            Err(e) => return Err(TestCaseError::fail(format!("insert {row:?}: {e}"))),
        }
    }
    drain_bounded(pool, 15, &format!("{rows:?}")).await?;

    let mut applied_per_model: BTreeMap<Uuid, i64> = BTreeMap::new();
    for (model, id) in &stored {
        let queue: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT status, dead_reason FROM feedback_queue WHERE model_id = $1 AND feedback_id = $2",
        )
        .bind(model)
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap();
        let (processed, applied): (bool, Option<i64>) = sqlx::query_as(
            "SELECT processed, applied_version FROM feedback_events WHERE model_id = $1 AND id = $2",
        )
        .bind(model)
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
        match queue {
            Some((status, reason)) => {
                prop_assert_eq!(&status, "dead", "row {} left {} after a drain", id, status);
                fx.tally[3].fetch_add(1, Ordering::Relaxed);
                prop_assert!(
                    reason.as_deref().is_some_and(|r| !r.trim().is_empty()),
                    "row {id} dead-lettered without a reason"
                );
            }
            None => {
                let (v0, _) = before.get(model).copied().unwrap_or((0, 0));
                let (v1, _) = state(*model).await;
                prop_assert!(processed, "row {} left the queue unprocessed", id);
                prop_assert!(
                    applied.is_some_and(|v| v > v0 && v <= v1),
                    "row {id} applied by version {applied:?}, not one of this drain ({v0}, {v1}]"
                );
                *applied_per_model.entry(*model).or_default() += 1;
                fx.tally[2].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    // Applied once: the versions of this drain learned exactly the rows marked applied.
    for (model, (v0, seen0)) in &before {
        let (v1, seen1) = state(*model).await;
        let examples: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(examples), 0)::bigint FROM model_versions
             WHERE model_id = $1 AND model_version > $2 AND kind = 'gradient'",
        )
        .bind(model)
        .bind(v0)
        .fetch_one(pool)
        .await
        .unwrap();
        let applied = applied_per_model.get(model).copied().unwrap_or(0);
        prop_assert_eq!(
            examples,
            applied,
            "examples of versions {}..={} vs rows applied",
            v0 + 1,
            v1
        );
        prop_assert_eq!(seen1 - seen0, applied, "examples_seen vs rows applied");
    }
    if let Err(e) = olps::models::list(pool).await {
        return Err(TestCaseError::fail(format!(
            "a model's stored state became unreadable ({e}) after {rows:?}"
        )));
    }
    Ok(())
}

#[test]
fn arbitrary_feedback_rows_are_applied_once_or_dead_lettered() {
    let rt = runtime();
    let fx = rt.block_on(sql_fixture());
    let names: Vec<String> = ["features", "x", "y", "metadata", "source"]
        .map(String::from)
        .to_vec();
    let mut runner = runner("sql rows fuzz", 150);
    let strategy = prop::collection::vec(prop::collection::vec(sql_row(&names), 1..8), 1..4);
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |batches| {
        let batches: Vec<Vec<SqlRow>> = if WORKER_SIDE_FIXES_LANDED {
            batches
        } else {
            // Known worker-side bug classes: not inserted until they are fixed.
            batches
                .into_iter()
                .map(|rows| rows.into_iter().filter(|r| !known_worker_bug(r)).collect())
                .collect()
        };
        rt.block_on(check_case(&fx, &batches))
    });
    let [refused, stored, applied, dead] = fx.tally.each_ref().map(|t| t.load(Ordering::Relaxed));
    eprintln!(
        "sql rows fuzz: {:?} for the cases; rows refused by PostgreSQL {refused}, stored \
         {stored}: applied {applied}, dead-lettered {dead}",
        started.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!("refused by PostgreSQL: {:#?}", fx.refusals.lock().unwrap());
    rt.block_on(async {
        let reasons: Vec<(String, i64)> = sqlx::query_as(
            "SELECT left(dead_reason, 70), count(*) FROM feedback_queue WHERE status = 'dead'
             GROUP BY 1 ORDER BY 2 DESC",
        )
        .fetch_all(fx.app.pool())
        .await
        .unwrap();
        eprintln!("dead-lettered: {reasons:#?}");
        every_model_still_learns(&fx.app)
            .await
            .unwrap_or_else(|e| panic!("after the fuzzing: {e}"));
    });
}

// ---- Regressions: every input that found a bug ----------------------------------------------

/// Runs the rows property on these batches alone.
async fn rows_regression(batches: Vec<Vec<SqlRow>>) {
    let fx = sql_fixture().await;
    check_case(&fx, &batches)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    every_model_still_learns(&fx.app)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

fn row(model: ModelSel, label: f64, metadata: &str) -> SqlRow {
    SqlRow {
        model,
        id: IdSel::Default,
        entity_id: "e1".into(),
        feedback_type: "explicit".into(),
        feedback_value: label,
        confidence: None,
        timestamp: None,
        metadata: Some(metadata.into()),
        processed: None,
        applied_version: None,
    }
}

/// Found by the rows fuzz: linear labels far below the 1e200 of the issue (1e80, every other row)
/// already make the drift detector's state non-finite; the stored learner state is then
/// unreadable (`learner_state: invalid type: null, expected f64`) and `GET /v1/models` fails.
/// A worker/learner bug (issue 13 item 2, fixed on the worker side); until it lands the fuzz
/// generators leave this class out (WORKER_SIDE_FIXES_LANDED).
#[tokio::test]
async fn regression_linear_labels_of_1e80_keep_the_model_readable() {
    let rows = (0..6)
        .map(|i| {
            let label = if i % 2 == 0 { 1e80 } else { 1.0 };
            row(ModelSel::Linear, label, "{\"features\": {\"a\": 1}}")
        })
        .collect();
    rows_regression(vec![rows]).await;
}

/// The plain-SQL rows of the issue that used to stop a model for good: a feature value beyond
/// f64 (`1e400`, which jsonb stores) anywhere in the metadata, and a feature name of 6,400
/// characters. Each is dead-lettered with a reason, and the good rows around it are learned.
#[tokio::test]
async fn rows_beyond_f64_and_over_long_names_are_dead_lettered_and_the_rest_applied() {
    let good = |label| row(ModelSel::Logistic, label, "{\"features\": {\"x\": 1}}");
    let long_name = format!("{{\"features\": {{\"{}\": 1}}}}", "n".repeat(6400));
    let rows = vec![
        good(1.0),
        row(ModelSel::Logistic, 1.0, "{\"features\": {\"a\": 1e400}}"),
        good(0.0),
        row(
            ModelSel::Linear,
            1.0,
            "{\"features\": {\"a\": 1}, \"other\": -1e400}",
        ),
        row(ModelSel::Linear, 1.0, &long_name),
        good(1.0),
    ];
    let fx = sql_fixture().await;
    check_case(&fx, &[rows])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let [refused, stored, applied, dead] = fx.tally.each_ref().map(|t| t.load(Ordering::Relaxed));
    assert_eq!((refused, stored), (0, 6));
    assert_eq!(dead, 2, "the 1e400 feature and the long name");
    assert_eq!(applied, 4, "the good rows, and 1e400 outside the features");
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT dead_reason FROM feedback_queue WHERE status = 'dead'")
            .fetch_all(fx.app.pool())
            .await
            .unwrap();
    assert!(
        reasons.iter().any(|r| r.contains("metadata.features.a")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("200")), "{reasons:?}");
    every_model_still_learns(&fx.app)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Found by the settings fuzz: settings the API accepts (`l2` 1e5 or 1e10, `learning_rate` 1e10,
/// `standardize: false` with `learning_rate` 0.5) make a linear model's SGD diverge on 30
/// ordinary events; the drift detector's state then overflows, the stored learner state is
/// unreadable, and the model's routes and `GET /v1/models` answer 500. A worker/learner bug
/// (issue 13 item 2: losses and detector state must stay finite, or such settings be refused);
/// until it lands, the fuzz suite sets such models aside (set_aside_known_unreadable).
#[tokio::test]
async fn regression_diverging_linear_settings_keep_the_model_readable() {
    let app = spawn_app().await;
    for (n, settings) in [
        json!({"l2": 1e5}),
        json!({"learning_rate": 1e10}),
        json!({"standardize": false, "learning_rate": 0.5}),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("diverging-{n}");
        let (status, body) = app
            .post(
                "/v1/models",
                &json!({"name": name, "kind": "linear", "settings": settings}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let events: Vec<Value> = (0..30)
            .map(|i| {
                json!({"entity_id": format!("e{i}"), "feedback_type": "explicit",
                       "feedback_value": (i % 7) as f64 * 3.0 - 5.0,
                       "features": {"x": i as f64 - 10.0, "y": (i * i) as f64, "z": 1.0}})
            })
            .collect();
        let (status, body) = app
            .post(
                &format!("/v1/models/{name}/feedback"),
                &json!({ "events": events }),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        drain_bounded(app.pool(), 30, &name).await.unwrap();
        let (status, body) = app.get(&format!("/v1/models/{name}")).await;
        assert_eq!(status, 200, "{settings}: {body}");
    }
    let (status, body) = app.get("/v1/models").await;
    assert_eq!(status, 200, "{body}");
}
