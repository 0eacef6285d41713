//! The `olps` binary, run as a user would: the embedded default database, `model` commands
//! against DATABASE_URL, and `serve` with a graceful shutdown on SIGTERM.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;
use uuid::Uuid;

use crate::common::*;

/// The UUID `model create` prints as the last line of stdout.
fn created_model_id(args: &[&str], out: &Output) -> Uuid {
    let text = stdout(out);
    let last = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output; {}", describe(args, out)));
    Uuid::parse_str(last.trim()).unwrap_or_else(|e| {
        panic!(
            "last line {last:?} is not a UUID ({e}); {}",
            describe(args, out)
        )
    })
}

// ---------------------------------------------------------------------------------------------
// a. The embedded default database

/// The connection URL in "olps: using embedded PostgreSQL in DIR (URL)".
fn embedded_url(stderr: &str) -> Option<String> {
    let line = stderr
        .lines()
        .find(|l| l.contains("using embedded PostgreSQL"))?;
    let start = line.rfind('(')? + 1;
    let end = line.rfind(')')?;
    (start < end).then(|| line[start..end].to_string())
}

#[tokio::test]
async fn embedded_default_database_end_to_end() {
    let work = TempCluster::new("olps-cli-embedded");
    let dir = Some(work.root.as_path());

    if olps::embedded::find_pg_bin_dir().is_none() {
        // No PostgreSQL binaries on this machine: the error must say how to get a database.
        let out = olps_fails(dir, None, &["migrate"]);
        let err = stderr(&out);
        assert!(err.contains("DATABASE_URL"), "{err}");
        assert!(err.contains("docker compose"), "{err}");
        assert!(!work.base.join("data").exists());
        eprintln!("no PostgreSQL binaries: checked the error only");
        return;
    }

    // First migrate: creates .olps/ and a running private cluster, and says so.
    let args = ["migrate"];
    let out = olps_ok(dir, None, &args);
    let err = stderr(&out);
    let data_dir = work.base.join("data");
    assert!(
        err.contains("embedded PostgreSQL") && err.contains(&data_dir.display().to_string()),
        "migrate does not name the embedded cluster it used; {}",
        describe(&args, &out)
    );
    assert!(!err.contains("panicked"), "{}", describe(&args, &out));
    assert!(
        data_dir.join("PG_VERSION").is_file(),
        "{} is not a cluster; {}",
        data_dir.display(),
        describe(&args, &out)
    );
    assert!(
        data_dir.join("postmaster.pid").is_file(),
        "server not running"
    );
    if running_as_root() {
        let owner = fs::metadata(&data_dir).unwrap().uid();
        assert_ne!(owner, 0, "the data directory must not belong to root");
    }
    let shown = embedded_url(&err)
        .unwrap_or_else(|| panic!("no URL in the output; {}", describe(&args, &out)));
    // The output hides the password; it is in .olps/password (mode 0600).
    assert!(shown.contains(":***@"), "the password is shown: {shown}");
    let password = fs::read_to_string(work.base.join("password")).unwrap();
    let url = shown.replace(":***@", &format!(":{}@", password.trim()));
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let migrated: i64 = sqlx::query_scalar("SELECT count(*) FROM refinery_schema_history")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(migrated >= 1, "no migration recorded");
    conn.close().await.ok();

    // Second migrate: the same cluster, nothing to apply.
    let out = olps_ok(dir, None, &args);
    assert!(
        stdout(&out).contains("schema up to date"),
        "{}",
        describe(&args, &out)
    );
    assert_eq!(
        embedded_url(&stderr(&out)).as_deref(),
        Some(shown.as_str()),
        "the second migrate did not reuse the cluster; {}",
        describe(&args, &out)
    );

    // model create / list / show.
    let args = ["model", "create", "--name", "demo", "--kind", "logistic"];
    let out = olps_ok(dir, None, &args);
    let model_id = created_model_id(&args, &out);

    let args = ["model", "list"];
    let out = olps_ok(dir, None, &args);
    let listing = stdout(&out);
    let row = listing
        .lines()
        .find(|l| l.contains(&model_id.to_string()))
        .unwrap_or_else(|| panic!("{model_id} not listed; {}", describe(&args, &out)));
    assert!(row.contains("demo") && row.contains("logistic"), "{row}");

    let args = ["model", "show", "demo"];
    let out = olps_ok(dir, None, &args);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("not JSON ({e}); {}", describe(&args, &out)));
    assert_eq!(shown["model_id"], model_id.to_string(), "{shown}");
    assert_eq!(shown["name"], "demo", "{shown}");
    assert_eq!(shown["kind"], "logistic", "{shown}");

    // By UUID too.
    let id = model_id.to_string();
    let args = ["model", "show", id.as_str()];
    let out = olps_ok(dir, None, &args);
    let shown: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["name"], "demo", "{shown}");

    // A duplicate name fails and says which name.
    let args = ["model", "create", "--name", "demo", "--kind", "logistic"];
    let out = olps_fails(dir, None, &args);
    let err = stderr(&out);
    assert!(
        err.contains("'demo'") && err.contains("already exists"),
        "{}",
        describe(&args, &out)
    );
    let out = olps_ok(dir, None, &["model", "list", "--format", "json"]);
    let models: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(models.as_array().map(Vec::len), Some(1), "{models}");
}

// ---------------------------------------------------------------------------------------------
// b. model create against DATABASE_URL

#[tokio::test]
async fn model_create_stores_flags_and_rejects_bad_ones() {
    let db = TestDb::new().await;
    let url = Some(db.url.as_str());

    let args = [
        "model",
        "create",
        "--name",
        "x",
        "--kind",
        "linear",
        "--optimizer",
        "adam",
        "--learning-rate",
        "0.05",
    ];
    let out = olps_ok(None, url, &args);
    assert!(
        stderr(&out).contains("using DATABASE_URL"),
        "{}",
        describe(&args, &out)
    );
    let model_id = created_model_id(&args, &out);
    let (name, kind, optimizer, learning_rate, version): (String, String, String, f64, i64) =
        sqlx::query_as(
            "SELECT name, kind, settings->>'optimizer', (settings->>'learning_rate')::float8, \
             version FROM models WHERE model_id = $1",
        )
        .bind(model_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(name, "x");
    assert_eq!(kind, "linear");
    assert_eq!(optimizer, "adam");
    assert_eq!(learning_rate, 0.05);
    assert_eq!(version, 0);

    // Each bad invocation: the words its error must contain.
    let bad: &[(&[&str], &[&str])] = &[
        (&["--kind", "tree"], &["--kind", "tree"]),
        (
            &["--kind", "linear", "--optimizer", "sgdx"],
            &["--optimizer", "sgdx"],
        ),
        (
            &["--kind", "linear", "--learning-rate=-1"],
            &["learning_rate", "> 0", "-1"],
        ),
        (
            &["--kind", "linear", "--learning-rate", "0"],
            &["learning_rate", "> 0"],
        ),
        (
            &["--kind", "linear", "--learning-rate", "NaN"],
            &["learning_rate", "finite"],
        ),
        // clap takes "-1" after a flag for another flag, so this one cannot reach the range
        // check; it must still fail and point at the argument.
        (&["--kind", "linear", "--learning-rate", "-1"], &["-1"]),
    ];
    for (i, (flags, words)) in bad.iter().enumerate() {
        let name = format!("bad{i}");
        let mut args = vec!["model", "create", "--name", name.as_str()];
        args.extend_from_slice(flags);
        let out = olps_fails(None, url, &args);
        let err = stderr(&out);
        for word in *words {
            assert!(
                err.contains(word),
                "the error does not mention {word:?}; {}",
                describe(&args, &out)
            );
        }
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM models WHERE name = $1")
            .bind(&name)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(stored, 0, "{}", describe(&args, &out));
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM models")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total, 1);
}

// ---------------------------------------------------------------------------------------------
// c. serve: health, then a graceful exit on SIGTERM

/// A spawned `olps serve`, killed when dropped if it still runs; its stderr goes to a file.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits for the process to exit, at most `patience`.
    async fn wait_for_exit(&mut self, patience: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_file(&self.log);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `olps serve` on a free loopback port and waits until /healthz answers 200.
async fn start_server(url: &str, client: &reqwest::Client) -> (Server, String) {
    // The port is free when chosen but may be taken before olps binds it: then try another.
    for _ in 0..3 {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("olps-cli-serve")));
        let child_stderr = fs::File::create(&log).unwrap();
        // Loopback: without tokens (tests/it/access.rs runs `olps serve` with them).
        let child = olps_command(None, Some(url), &["serve", "--listen", &addr, "--no-auth"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(child_stderr))
            .spawn()
            .expect("spawn olps serve");
        let mut server = Server { child, log };
        let health = format!("http://{addr}/healthz");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.try_wait() {
                let log = server.log();
                if log.contains("cannot listen") {
                    break; // port taken meanwhile: next attempt
                }
                panic!("olps serve exited early ({status}):\n{log}");
            }
            let response = client
                .get(&health)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(response) = response {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                if status == 200 {
                    let body: serde_json::Value = serde_json::from_str(&body)
                        .unwrap_or_else(|e| panic!("/healthz body {body:?} is not JSON: {e}"));
                    assert_eq!(body["status"], "ok", "{body}");
                    return (server, format!("http://{addr}"));
                }
            }
            assert!(
                Instant::now() < deadline,
                "/healthz did not answer 200 in time; log:\n{}",
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("could not find a free port for olps serve");
}

#[tokio::test]
async fn serve_answers_health_and_stops_gracefully_on_sigterm() {
    let db = TestDb::new().await;
    let client = reqwest::Client::new();
    let (mut server, base) = start_server(&db.url, &client).await;

    // It serves the API over the test database.
    let response = client
        .get(format!("{base}/v1/models"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("GET /v1/models");
    assert_eq!(response.status().as_u16(), 200, "GET /v1/models");

    let pid = server.child.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success(), "kill -TERM {pid} failed");

    let status = server
        .wait_for_exit(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| {
            panic!(
                "olps serve still runs 15 s after SIGTERM; log:\n{}",
                server.log()
            )
        });
    assert_eq!(
        status.code(),
        Some(0),
        "olps serve did not exit cleanly after SIGTERM ({status}); log:\n{}",
        server.log()
    );
    // Nothing listens there any more.
    assert!(
        client
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_err(),
        "still answering after exit"
    );
}
