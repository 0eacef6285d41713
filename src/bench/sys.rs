//! The machine a run is measured on, resident memory of processes (/proc), child processes, and
//! latency percentiles.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use sqlx::PgPool;

/// What the figures were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
    pub load_average: String,
    pub postgres_version: String,
    pub postgres_settings: String,
    pub git_commit: Option<String>,
}

impl Machine {
    pub async fn describe(pool: &PgPool) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".into());
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into())
        };
        let load = read("/proc/loadavg");
        let load_average = load
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let postgres_version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(pool)
            .await
            .unwrap_or_else(|_| "unknown".into());
        let settings: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, current_setting(name) FROM pg_settings
             WHERE name IN ('synchronous_commit', 'fsync', 'wal_sync_method', 'shared_buffers',
                            'max_wal_size', 'full_page_writes', 'wal_level', 'commit_delay',
                            'autovacuum')
             ORDER BY name",
        )
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        let postgres_settings = settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let git_commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty());
        Machine {
            cpu,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory,
            kernel: read("/proc/sys/kernel/osrelease"),
            load_average,
            postgres_version,
            postgres_settings,
            git_commit,
        }
    }
}

/// A field of /proc/<pid>/status in KiB (VmHWM: peak resident set; VmRSS: current).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// This process's peak resident memory, in KiB.
pub fn own_peak_kib() -> Option<u64> {
    proc_status_kib(std::process::id(), "VmHWM")
}

/// A child olps process whose peak resident memory (VmHWM) is sampled every 50 ms.
pub struct Child {
    pub child: tokio::process::Child,
    pub pid: u32,
    peak_kib: Arc<AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
    log: PathBuf,
}

impl Child {
    /// Starts `olps <args>` on `database_url`, its stderr going to a temporary log file.
    pub fn spawn(bin: &Path, args: &[String], database_url: &str) -> anyhow::Result<Child> {
        let log = std::env::temp_dir().join(format!(
            "olps-bench-child-{}-{}.log",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = tokio::process::Command::new(bin)
            .args(args)
            .env("DATABASE_URL", database_url)
            .env("OLPS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().context("child has no pid")?;
        let peak_kib = Arc::new(AtomicU64::new(0));
        let peak = peak_kib.clone();
        let sampler = tokio::spawn(async move {
            while let Some(kib) = proc_status_kib(pid, "VmHWM") {
                peak.fetch_max(kib, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Ok(Child {
            child,
            pid,
            peak_kib,
            sampler,
            log,
        })
    }

    /// The peak resident memory seen so far, in KiB.
    pub fn peak_kib(&self) -> u64 {
        self.peak_kib
            .load(Ordering::Relaxed)
            .max(proc_status_kib(self.pid, "VmHWM").unwrap_or(0))
    }

    /// Waits for the child to exit by itself; an error with its log's tail when it fails.
    pub async fn wait(mut self, timeout: Duration) -> anyhow::Result<u64> {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                self.child.kill().await.ok();
                anyhow::bail!(
                    "child olps did not finish within {:?}; its log: {}",
                    timeout,
                    self.log_tail()
                );
            }
        };
        let peak = self.peak_kib.load(Ordering::Relaxed);
        self.sampler.abort();
        if !status.success() {
            anyhow::bail!("child olps failed ({status}); its log: {}", self.log_tail());
        }
        let _ = std::fs::remove_file(&self.log);
        Ok(peak)
    }

    /// Stops the child (SIGKILL, by its pid) and returns its peak resident memory in KiB.
    pub async fn stop(mut self) -> u64 {
        let peak = self.peak_kib();
        self.sampler.abort();
        self.child.kill().await.ok();
        let _ = std::fs::remove_file(&self.log);
        peak
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The nearest-rank percentile `p` (0..=100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorts and returns (p50, p95, p99, max).
pub fn percentiles(values: &mut [f64]) -> (f64, f64, f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(values, 50.0),
        percentile(values, 95.0),
        percentile(values, 99.0),
        values.last().copied().unwrap_or(f64::NAN),
    )
}

/// A free port on 127.0.0.1 (bound and released; a child binds it right after).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
