//! The `olps` binary run as a user would, and throwaway folders for embedded clusters.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The `olps` binary cargo built for these tests.
pub const OLPS: &str = env!("CARGO_BIN_EXE_olps");

/// Environment variables of this process that would change what the child does.
const SCRUBBED_ENV: &[&str] = &["DATABASE_URL", "OLPS_LISTEN", "OLPS_POOL_SIZE", "PGDATA"];

/// `olps ARGS` in `dir` with `DATABASE_URL` set to `url`, or removed when `url` is `None` (the
/// embedded default).
pub fn olps_command(dir: Option<&Path>, url: Option<&str>, args: &[&str]) -> Command {
    let mut command = Command::new(OLPS);
    command.args(args).stdin(Stdio::null());
    for name in SCRUBBED_ENV {
        command.env_remove(name);
    }
    if let Some(url) = url {
        command.env("DATABASE_URL", url);
    }
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command
}

/// Runs `olps ARGS` to completion, blocking (for tests that own their runtime; see `Cli`).
pub fn olps(dir: Option<&Path>, url: Option<&str>, args: &[&str]) -> Output {
    olps_command(dir, url, args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {OLPS}: {e}"))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn describe(args: &[&str], out: &Output) -> String {
    format!(
        "olps {}: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        args.join(" "),
        out.status,
        stdout(out),
        stderr(out)
    )
}

/// Requires that `olps ARGS` succeeded.
fn succeeded(args: &[&str], out: Output) -> Output {
    assert!(out.status.success(), "{}", describe(args, &out));
    out
}

/// Requires that `olps ARGS` failed (a non-zero exit, not a crash by signal).
fn failed(args: &[&str], out: Output) -> Output {
    assert!(
        matches!(out.status.code(), Some(code) if code != 0),
        "expected a non-zero exit; {}",
        describe(args, &out)
    );
    assert!(
        !stderr(&out).contains("panicked"),
        "olps panicked; {}",
        describe(args, &out)
    );
    out
}

/// Runs `olps ARGS` and requires success.
pub fn olps_ok(dir: Option<&Path>, url: Option<&str>, args: &[&str]) -> Output {
    succeeded(args, olps(dir, url, args))
}

/// Runs `olps ARGS` and requires failure (a non-zero exit, not a crash by signal).
pub fn olps_fails(dir: Option<&Path>, url: Option<&str>, args: &[&str]) -> Output {
    failed(args, olps(dir, url, args))
}

/// The `olps` command line against one database, run asynchronously: a blocking wait would
/// stall the test's runtime, and with it the release of pooled connections. A command line is
/// its words, split on white space.
pub struct Cli {
    url: String,
}

impl Cli {
    pub fn new(url: &str) -> Cli {
        Cli { url: url.into() }
    }

    pub async fn run<'a>(&self, line: &'a str) -> (Vec<&'a str>, Output) {
        let args: Vec<&str> = line.split_whitespace().collect();
        let mut command = tokio::process::Command::from(olps_command(None, Some(&self.url), &args));
        let out = command
            .env("OLPS_LOG", "warn")
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run {OLPS}: {e}"));
        (args, out)
    }

    /// Runs `olps LINE`, requires success and returns its stdout.
    pub async fn ok(&self, line: &str) -> String {
        let (args, out) = self.run(line).await;
        stdout(&succeeded(&args, out))
    }

    /// Runs `olps LINE`, requires failure and returns its stderr.
    pub async fn fails(&self, line: &str) -> String {
        let (args, out) = self.run(line).await;
        stderr(&failed(&args, out))
    }
}

/// `olps worker ARGS` (plus `--until-empty` when asked) started in the background against
/// `url`, logging warnings only and printing nothing: a worker a test may SIGKILL.
pub fn spawn_quiet_worker(url: &str, args: &[&str], until_empty: bool) -> std::process::Child {
    let mut command = olps_command(None, Some(url), &[&["worker"][..], args].concat());
    command
        .env("OLPS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if until_empty {
        command.arg("--until-empty");
    }
    command.spawn().expect("spawn olps worker")
}

/// A name no other test (or test process) uses: `PREFIX-PID-N-NANOS`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A fresh folder `root` under /tmp, with `base` = `root/.olps` for an embedded cluster; stops
/// the cluster under `base` and removes it all when dropped, also when an assertion fails.
pub struct TempCluster {
    pub root: PathBuf,
    pub base: PathBuf,
}

impl TempCluster {
    pub fn new(prefix: &str) -> TempCluster {
        // Show olps' progress messages about the cluster (creating, starting, stale files) in
        // failing tests' output. Only the embedded module's: the subscriber is process-wide,
        // and every test of the binary shares the process.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("olps::embedded=info"))
            .with_test_writer()
            .try_init();
        let root = PathBuf::from("/tmp").join(unique_name(prefix));
        fs::create_dir(&root).unwrap();
        // When the tests run as root, the server runs as `postgres`, which must pass through.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        let base = root.join(".olps");
        TempCluster { root, base }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if let Err(e) = olps::embedded::stop_cluster(&self.base) {
            eprintln!("cleanup: {e}");
            // Last resort, so no server outlives the test.
            if let Some(bin) = olps::embedded::find_pg_bin_dir() {
                let mut stop = if running_as_root() {
                    let mut c = Command::new("runuser");
                    c.args(["-u", "postgres", "--"]).arg(bin.join("pg_ctl"));
                    c
                } else {
                    Command::new(bin.join("pg_ctl"))
                };
                let _ = stop
                    .args(["stop", "-m", "immediate", "-D"])
                    .arg(self.base.join("data"))
                    .status();
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}
