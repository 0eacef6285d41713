//! The streams the tests learn: the reference drift stream, generated ones, and feeding them
//! to the queue as feedback.

use serde_json::Value;
use sqlx::PgPool;

/// (features, label)
pub type Row = (Vec<(String, f64)>, f64);

/// The reference drift stream, a copy kept in the repository (tests/data/README.md).
pub const SEED_STREAM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/seed_stream.csv");

/// tests/data/seed_stream.csv: 2,000 rows of x0..x4 and y (sign flip at row 1000).
pub fn seed_stream() -> Vec<Row> {
    let text = std::fs::read_to_string(SEED_STREAM)
        .unwrap_or_else(|e| panic!("cannot read {SEED_STREAM}: {e}"));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    assert_eq!(header, ["x0", "x1", "x2", "x3", "x4", "y"]);
    let rows: Vec<_> = lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let values: Vec<f64> = line
                .split(',')
                .map(|v| v.trim().parse().expect("number"))
                .collect();
            let features = header[..5]
                .iter()
                .zip(&values[..5])
                .map(|(n, v)| (n.to_string(), *v))
                .collect();
            (features, values[5])
        })
        .collect();
    assert_eq!(rows.len(), 2000);
    rows
}

/// A deterministic sparse stream: `features` features per row from a pool of `pool` names.
pub fn sparse_stream(
    n: usize,
    features: usize,
    pool: usize,
    logistic: bool,
    seed: u64,
) -> Vec<Row> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let truth: Vec<f64> = (0..pool).map(|_| rng.gen_range(-1.0..1.0)).collect();
    (0..n)
        .map(|_| {
            let mut chosen = std::collections::BTreeMap::new();
            while chosen.len() < features {
                chosen.insert(rng.gen_range(0..pool), rng.gen_range(-2.0..2.0));
            }
            let score: f64 = chosen.iter().map(|(i, x)| truth[*i] * x).sum();
            let label = if logistic {
                if score > 0.0 {
                    1.0
                } else {
                    0.0
                }
            } else {
                score + rng.gen_range(-0.05..0.05)
            };
            let features = chosen
                .into_iter()
                .map(|(i, x)| (format!("f{i}"), x))
                .collect();
            (features, label)
        })
        .collect()
}

/// Inserts rows as explicit feedback with one statement per 5,000 rows, in order.
pub async fn insert_stream(pool: &PgPool, model: uuid::Uuid, rows: &[Row]) {
    for chunk in rows.chunks(5_000) {
        let events: Vec<olps::feedback::FeedbackEvent> = chunk
            .iter()
            .enumerate()
            .map(|(i, (features, label))| olps::feedback::FeedbackEvent {
                entity_id: format!("e{i}"),
                feedback_type: "explicit".into(),
                feedback_value: *label,
                confidence: 1.0,
                metadata: serde_json::json!({"features": features.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<String, Value>>()}),
                timestamp: None,
                prediction_id: None,
                id: None,
            })
            .collect();
        olps::feedback::insert(pool, model, &events).await.unwrap();
    }
}

pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}
