//! The embedded default database, against the real PostgreSQL binaries of the machine.
//!
//! Every test makes its own throwaway cluster under /tmp and stops and removes it at the end,
//! also when an assertion fails (`TempCluster`'s Drop).

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use olps::embedded::{
    ensure_cluster, find_pg_bin_dir, no_database_help, stop_cluster, EmbeddedCluster, EmbeddedError,
};

use crate::common::{olps_ok, running_as_root, stderr, stdout, TempCluster};

/// `psql -Atc 'select 1'` over TCP with `password` (none: without one); psql's output.
fn psql(port: u16, password: Option<&str>) -> std::process::Output {
    let psql = ["/usr/bin/psql", "psql"]
        .into_iter()
        .find(|p| !p.starts_with('/') || Path::new(p).exists())
        .unwrap();
    Command::new(psql)
        .args(["-X", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-Atc", "select 1"])
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .env("PGPASSFILE", "/nonexistent")
        .envs(password.map(|p| ("PGPASSWORD", p)))
        .output()
        .expect("run psql")
}

/// `psql -Atc 'select 1'` over TCP with the cluster's password; the trimmed output.
fn psql_select_1(cluster: &EmbeddedCluster) -> String {
    let out = psql(cluster.port, Some(&cluster.password));
    assert!(
        out.status.success(),
        "psql failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn assert_serves(cluster: &EmbeddedCluster) {
    assert_eq!(
        cluster.url,
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres",
            cluster.password, cluster.port
        )
    );
    assert_ne!(
        cluster.port, 5432,
        "must not collide with the system server"
    );
    assert_eq!(psql_select_1(cluster), "1");
}

fn postmaster_pid(data_dir: &Path) -> u32 {
    fs::read_to_string(data_dir.join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn ensure(base: &Path) -> EmbeddedCluster {
    ensure_cluster(base).unwrap_or_else(|e| panic!("ensure_cluster: {e}"))
}

#[test]
fn finds_the_installed_binaries() {
    let bin = find_pg_bin_dir().expect("PostgreSQL binaries on this machine");
    assert!(bin.join("initdb").is_file(), "{}", bin.display());
    assert!(bin.join("pg_ctl").is_file(), "{}", bin.display());
    // Symlinks on PATH (/usr/local/bin/initdb) resolve to the real installation, next to the
    // `postgres` server binary.
    assert!(bin.join("postgres").is_file(), "{}", bin.display());
}

#[test]
fn creates_reuses_and_restarts_a_cluster() {
    let tmp = TempCluster::new("olps-embedded-lifecycle");

    // Fresh folder: initdb and start.
    let first = ensure(&tmp.base);
    assert!(first.created, "{first:?}");
    assert!(first.started, "{first:?}");
    assert_eq!(
        first.data_dir,
        fs::canonicalize(&tmp.base).unwrap().join("data")
    );
    assert!(first.log_file().is_file());
    assert_serves(&first);
    let conf = fs::read_to_string(first.data_dir.join("postgresql.conf")).unwrap();
    assert!(
        conf.contains(&format!("port = {}", first.port)),
        "port persisted"
    );
    assert!(conf.contains("listen_addresses = '127.0.0.1'"));
    if running_as_root() {
        let owner = fs::metadata(&first.data_dir).unwrap().uid();
        assert_ne!(owner, 0, "the data directory must not belong to root");
        let server_owner = fs::metadata(format!("/proc/{}", postmaster_pid(&first.data_dir)))
            .unwrap()
            .uid();
        assert_eq!(
            server_owner, owner,
            "the server runs as the data dir's owner"
        );
    }

    // Second call: reuse the running server.
    let second = ensure(&tmp.base);
    assert!(!second.created, "{second:?}");
    assert!(!second.started, "{second:?}");
    assert_eq!(second.port, first.port);
    assert_eq!(second.data_dir, first.data_dir);
    assert_serves(&second);

    // Stopped: start it again on the same port.
    stop_cluster(&tmp.base).unwrap();
    assert!(!first.data_dir.join("postmaster.pid").exists());
    stop_cluster(&tmp.base).expect("stopping a stopped cluster is fine");
    let third = ensure(&tmp.base);
    assert!(!third.created, "{third:?}");
    assert!(third.started, "{third:?}");
    assert_eq!(third.port, first.port);
    assert_serves(&third);
}

#[test]
fn concurrent_starts_create_once() {
    let tmp = TempCluster::new("olps-embedded-concurrent");
    let barrier = std::sync::Barrier::new(2);
    let results: Vec<Result<EmbeddedCluster, EmbeddedError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    ensure_cluster(&tmp.base)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let clusters: Vec<EmbeddedCluster> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("ensure_cluster: {e}")))
        .collect();
    assert_eq!(
        clusters.iter().filter(|c| c.created).count(),
        1,
        "exactly one creates: {clusters:?}"
    );
    assert_eq!(
        clusters.iter().filter(|c| c.started).count(),
        1,
        "exactly one starts: {clusters:?}"
    );
    assert_eq!(clusters[0].port, clusters[1].port);
    assert_serves(&clusters[0]);
}

#[test]
fn recovers_from_crashes_stale_pid_files_and_taken_ports() {
    let tmp = TempCluster::new("olps-embedded-recovery");
    let first = ensure(&tmp.base);
    let data_dir = first.data_dir.clone();

    // The postmaster dies (kill -9): the next call starts a new one.
    let pid = postmaster_pid(&data_dir);
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_link(format!("/proc/{pid}/cwd")).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after_crash = ensure(&tmp.base);
    assert!(
        after_crash.started && !after_crash.created,
        "{after_crash:?}"
    );
    assert_eq!(after_crash.port, first.port);
    assert_serves(&after_crash);

    // A reboot leaves postmaster.pid behind, and its PID now belongs to an unrelated live
    // process (here: this test). PostgreSQL alone would refuse to start.
    let pid_file = fs::read_to_string(data_dir.join("postmaster.pid")).unwrap();
    stop_cluster(&tmp.base).unwrap();
    let mut lines: Vec<String> = pid_file.lines().map(str::to_string).collect();
    lines[0] = std::process::id().to_string();
    fs::write(data_dir.join("postmaster.pid"), lines.join("\n") + "\n").unwrap();
    let after_reboot = ensure(&tmp.base);
    assert!(after_reboot.started, "{after_reboot:?}");
    assert_eq!(after_reboot.port, first.port);
    assert_serves(&after_reboot);

    // Another program took the port while the cluster was stopped: move to a free one, persist.
    stop_cluster(&tmp.base).unwrap();
    let squatter = TcpListener::bind(("127.0.0.1", first.port)).unwrap();
    let moved = ensure(&tmp.base);
    drop(squatter);
    assert!(moved.started, "{moved:?}");
    assert_ne!(moved.port, first.port);
    assert_serves(&moved);
    stop_cluster(&tmp.base).unwrap();
    let again = ensure(&tmp.base);
    assert_eq!(again.port, moved.port, "the new port is persisted");
    assert_serves(&again);
}

#[test]
fn long_paths_fall_back_to_tcp_only() {
    // Unix socket paths are limited to ~107 bytes; a deep working directory must still work.
    let mut tmp = TempCluster::new("olps-embedded-long");
    let mut deep = tmp.root.clone();
    for part in ["d".repeat(60), "e".repeat(60)] {
        deep.push(part);
        fs::create_dir(&deep).unwrap();
        fs::set_permissions(&deep, fs::Permissions::from_mode(0o755)).unwrap();
    }
    tmp.base = deep.join(".olps");
    let cluster = ensure(&tmp.base);
    assert!(cluster.created && cluster.started, "{cluster:?}");
    assert!(cluster.data_dir.as_os_str().len() > 100);
    let conf = fs::read_to_string(cluster.data_dir.join("postgresql.conf")).unwrap();
    assert!(conf.contains("unix_socket_directories = ''"), "TCP only");
    assert_serves(&cluster);
}

#[test]
fn untraversable_parent_is_named_in_the_error() {
    if !running_as_root() {
        eprintln!("skipped: only root runs the server as another account");
        return;
    }
    let tmp = TempCluster::new("olps-embedded-locked");
    let locked = tmp.root.join("locked");
    fs::create_dir(&locked).unwrap();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).unwrap();
    let base = locked.join("project").join(".olps");

    let err = ensure_cluster(&base).expect_err("postgres cannot enter a 0700 root folder");
    match &err {
        EmbeddedError::NotTraversable { dir, user } => {
            assert_eq!(dir, &fs::canonicalize(&locked).unwrap());
            assert_eq!(user, "postgres");
        }
        other => panic!("expected NotTraversable, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&format!("{}:", locked.display())),
        "the message names the folder: {message}"
    );
    assert!(message.contains("chmod o+x"), "says what to do: {message}");
    assert!(!base.join("data").exists(), "nothing is created on failure");
}

#[test]
fn help_says_how_to_get_a_database() {
    let help = no_database_help();
    assert!(help.contains("DATABASE_URL=postgres://"), "{help}");
    assert!(help.contains("docker compose up -d postgres"), "{help}");
    assert!(help.contains("apt-get install postgresql"), "{help}");
    let err = EmbeddedError::NoBinaries { searched: vec![] };
    assert_eq!(err.to_string(), help);
}

#[test]
fn the_cluster_refuses_connections_without_its_password() {
    let tmp = TempCluster::new("olps-embedded-password");
    let cluster = ensure(&tmp.base);
    assert_serves(&cluster);
    // The secret: 256 bits, in a file only its owner can read.
    assert_eq!(cluster.password.len(), 64);
    let file = tmp.base.join("password");
    assert_eq!(fs::read_to_string(&file).unwrap().trim(), cluster.password);
    let meta = fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Without it, or with a wrong one: refused, over TCP and over the Unix socket.
    let out = psql(cluster.port, None);
    assert!(!out.status.success(), "connected without a password");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("password") && !err.contains("does not exist"),
        "refused for another reason: {err}"
    );
    let out = psql(cluster.port, Some("not-the-password"));
    assert!(!out.status.success(), "connected with a wrong password");
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
    let hba = fs::read_to_string(cluster.data_dir.join("pg_hba.conf")).unwrap();
    let methods: Vec<&str> = hba
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    assert!(
        !methods.is_empty() && methods.iter().all(|m| *m == "scram-sha-256"),
        "{methods:?}"
    );
}

#[test]
fn a_cluster_made_without_a_password_gets_one() {
    // An older olps made clusters with `trust`: simulate one (pg_hba back to trust, no password
    // file), and let ensure_cluster close it.
    let tmp = TempCluster::new("olps-embedded-upgrade");
    let cluster = ensure(&tmp.base);
    let hba = cluster.data_dir.join("pg_hba.conf");
    let text = fs::read_to_string(&hba)
        .unwrap()
        .replace("scram-sha-256", "trust");
    fs::write(&hba, text).unwrap();
    fs::remove_file(tmp.base.join("password")).unwrap();
    stop_cluster(&tmp.base).unwrap();
    // Started again: it was open, and is closed now with a new password.
    let upgraded = ensure(&tmp.base);
    assert_ne!(upgraded.password, cluster.password);
    assert_serves(&upgraded);
    assert!(!psql(upgraded.port, None).status.success(), "still open");
    assert!(!psql(upgraded.port, Some(&cluster.password))
        .status
        .success());
    // And again: nothing more to do.
    let again = ensure(&tmp.base);
    assert_eq!(again.password, upgraded.password);
}

/// `olps db status` and `olps db stop` (issue 19, part 4), as a user runs them in the folder that
/// holds `.olps/`: no cluster, a running one (its PID and port, which psql reaches), a stopped
/// one (data kept; the next command starts it again), and a second stop that has nothing to do.
#[test]
fn db_status_and_stop_commands() {
    let tmp = TempCluster::new("olps-embedded-db-commands");
    let dir = Some(tmp.root.as_path());

    let out = stdout(&olps_ok(dir, None, &["db", "status"]));
    assert!(out.starts_with("no embedded cluster in"), "{out}");
    assert!(!tmp.base.exists(), "status creates nothing");

    // Any command without DATABASE_URL starts the cluster (here `migrate`).
    olps_ok(dir, None, &["migrate"]);
    let cluster = ensure(&tmp.base);
    assert!(!cluster.started, "migrate left it running");
    let pid = postmaster_pid(&cluster.data_dir);
    let out = stdout(&olps_ok(dir, None, &["db", "status"]));
    assert!(
        out.starts_with("running: embedded cluster in")
            && out.contains(&format!("(PID {pid}, 127.0.0.1:{})", cluster.port))
            && out.contains("olps db stop"),
        "{out}"
    );

    // DATABASE_URL set: the embedded cluster is still the one shown, with a note.
    let other = olps_ok(
        dir,
        Some("postgres://nobody@127.0.0.1:1/x"),
        &["db", "status"],
    );
    assert!(stdout(&other).starts_with("running:"), "{}", stdout(&other));
    assert!(
        stderr(&other).contains("DATABASE_URL is set"),
        "{}",
        stderr(&other)
    );

    let out = stdout(&olps_ok(dir, None, &["db", "stop"]));
    assert!(out.starts_with("stopped the embedded cluster"), "{out}");
    assert!(psql(cluster.port, Some(&cluster.password)).status.code() != Some(0));
    assert!(!cluster.data_dir.join("postmaster.pid").exists());
    // Gone, or a zombie its (container's) parent has not reaped yet: not running either way.
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = state.rsplit(") ").next().unwrap_or("").chars().next();
    assert!(
        matches!(state, None | Some('Z') | Some('X')),
        "the server process {pid} still runs (state {state:?})"
    );
    let out = stdout(&olps_ok(dir, None, &["db", "status"]));
    assert!(
        out.starts_with("stopped: embedded cluster in")
            && out.contains(&format!("port {}", cluster.port)),
        "{out}"
    );
    let out = stdout(&olps_ok(dir, None, &["db", "stop"]));
    assert!(out.contains("is not running; nothing to stop"), "{out}");

    // The data is kept: the next command starts the same cluster again.
    olps_ok(dir, None, &["model", "list"]);
    let again = ensure(&tmp.base);
    assert_eq!(again.port, cluster.port);
    assert_eq!(psql_select_1(&again), "1");
}
