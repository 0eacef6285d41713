//! A small load generator for `POST /v1/models/{m}/predict` on this machine (loopback only,
//! bounded in requests and time). It reports throughput, client round-trip latency, and the
//! server's own time per request from the `Server-Timing: app;dur=<ms>` header the service adds.
//!
//! ```text
//! olps up --listen 127.0.0.1:8080 &            # service + worker (DATABASE_URL or embedded)
//! cargo run --release --example predict_load -- --setup --batch 1 --requests 50000
//! cargo run --release --example predict_load -- --batch 100 --requests 5000
//! ```
//! `--setup` creates the model (if missing), sends `--train` labelled events over HTTP and waits
//! until the worker has learned them all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
struct Args {
    /// Base URL of the service (loopback).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Model name.
    #[arg(long, default_value = "load")]
    model: String,
    /// Instances per request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Requests in all (after the warm-up).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Stop after this many seconds even if requests remain.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
    /// Features per instance.
    #[arg(long, default_value_t = 20)]
    features: usize,
    /// Distinct feature names.
    #[arg(long, default_value_t = 1_000)]
    feature_pool: usize,
    /// Give every instance an entity_id, so each prediction is also logged (delayed labels).
    #[arg(long)]
    entity: bool,
    /// Create the model and train it first.
    #[arg(long)]
    setup: bool,
    /// Labelled events sent by --setup.
    #[arg(long, default_value_t = 20_000)]
    train: usize,
}

fn instance(rng: &mut rand::rngs::StdRng, args: &Args) -> serde_json::Map<String, Value> {
    let mut features = serde_json::Map::new();
    while features.len() < args.features {
        let name = format!("f{}", rng.gen_range(0..args.feature_pool));
        features.insert(name, json!(rng.gen_range(-2.0..2.0)));
    }
    features
}

async fn setup(client: &reqwest::Client, args: &Args) {
    let created = client
        .post(format!("{}/v1/models", args.url))
        .json(&json!({"name": args.model, "kind": "logistic"}))
        .send()
        .await
        .expect("service reachable");
    println!("create model: {}", created.status());
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let truth: Vec<f64> = (0..args.feature_pool)
        .map(|_| rng.gen_range(-1.0..1.0))
        .collect();
    let before: i64 = client
        .get(format!("{}/v1/models/{}", args.url, args.model))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["examples_seen"]
        .as_i64()
        .unwrap();
    let mut sent = 0;
    while sent < args.train {
        let n = (args.train - sent).min(5_000);
        let events: Vec<Value> = (0..n)
            .map(|i| {
                let features = instance(&mut rng, args);
                let score: f64 = features
                    .iter()
                    .map(|(k, v)| truth[k[1..].parse::<usize>().unwrap()] * v.as_f64().unwrap())
                    .sum();
                json!({"entity_id": format!("t{}", sent + i), "feedback_type": "explicit",
                       "feedback_value": if score > 0.0 { 1.0 } else { 0.0 }, "features": features})
            })
            .collect();
        let r = client
            .post(format!("{}/v1/models/{}/feedback", args.url, args.model))
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
        sent += n;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let model: Value = client
            .get(format!("{}/v1/models/{}", args.url, args.model))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let seen = model["examples_seen"].as_i64().unwrap();
        if seen >= before + args.train as i64 {
            println!(
                "trained: version {}, {} examples",
                model["version"], model["examples_seen"]
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker did not learn in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    assert!(
        args.url.starts_with("http://127.")
            || args.url.starts_with("http://localhost")
            || args.url.starts_with("http://[::1]"),
        "load is sent to loopback addresses only"
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()
        .unwrap();
    if args.setup {
        setup(&client, &args).await;
    }
    // A fixed set of request bodies, reused round-robin.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let bodies: Arc<Vec<String>> = Arc::new(
        (0..64)
            .map(|b| {
                let one = |rng: &mut rand::rngs::StdRng, i: usize| {
                    let mut o = json!({"features": instance(rng, &args)});
                    if args.entity {
                        o["entity_id"] = json!(format!("load-{b}-{i}"));
                    }
                    o
                };
                if args.batch == 1 {
                    one(&mut rng, 0).to_string()
                } else {
                    let instances: Vec<Value> = (0..args.batch).map(|i| one(&mut rng, i)).collect();
                    json!({ "instances": instances }).to_string()
                }
            })
            .collect(),
    );
    let url = Arc::new(format!("{}/v1/models/{}/predict", args.url, args.model));
    // Warm-up: connections, the model cache.
    for body in bodies.iter().take(args.connections.max(4)) {
        let r = client
            .post(url.as_str())
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    }
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (client, url, bodies, next) =
            (client.clone(), url.clone(), bodies.clone(), next.clone());
        let total = args.requests;
        tasks.push(tokio::spawn(async move {
            let mut client_ms = Vec::new();
            let mut server_ms = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                let r = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(bodies[i % bodies.len()].clone())
                    .send()
                    .await
                    .unwrap();
                let server = r
                    .headers()
                    .get("server-timing")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("app;dur="))
                    .and_then(|v| v.parse::<f64>().ok());
                assert_eq!(r.status().as_u16(), 200);
                let _ = r.bytes().await.unwrap();
                client_ms.push(t.elapsed().as_secs_f64() * 1e3);
                if let Some(s) = server {
                    server_ms.push(s);
                }
            }
            (client_ms, server_ms)
        }));
    }
    let mut client_ms = Vec::new();
    let mut server_ms = Vec::new();
    for t in tasks {
        let (c, s) = t.await.unwrap();
        client_ms.extend(c);
        server_ms.extend(s);
    }
    let elapsed = started.elapsed().as_secs_f64();
    client_ms.sort_by(f64::total_cmp);
    server_ms.sort_by(f64::total_cmp);
    let n = client_ms.len();
    println!(
        "batch {} x {} features{}, {} connections: {n} requests in {elapsed:.2} s = {:.0} req/s, \
         {:.0} predictions/s",
        args.batch,
        args.features,
        if args.entity { " (logged)" } else { "" },
        args.connections,
        n as f64 / elapsed,
        (n * args.batch) as f64 / elapsed
    );
    println!(
        "  server time (Server-Timing) p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        percentile(&server_ms, 0.5),
        percentile(&server_ms, 0.99),
        server_ms.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  client round trip          p50 {:.3} ms, p99 {:.3} ms",
        percentile(&client_ms, 0.5),
        percentile(&client_ms, 0.99)
    );
}
