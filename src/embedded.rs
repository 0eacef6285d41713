//! The embedded default database.
//!
//! When `DATABASE_URL` is unset, every olps command uses a private PostgreSQL cluster under
//! `.olps/` in the working directory. It is created (`initdb`) and started (`pg_ctl start`) on
//! demand from the PostgreSQL binaries installed on the machine and reused by later commands.
//!
//! Layout of the base folder (normally `.olps`):
//!
//! * `lock` — exclusive file lock held while checking, creating or starting the cluster, so two
//!   olps processes starting at once neither both run `initdb` nor both start a server;
//! * `data/` — the data directory. Its `postgresql.conf` ends with the settings olps chose: a free
//!   loopback port picked at creation, `listen_addresses = '127.0.0.1'` and the data directory as
//!   the Unix socket directory (so the cluster never touches `/var/run/postgresql`);
//! * `data.initdb/` — where `initdb` works; renamed to `data/` only once the cluster is complete,
//!   so an interrupted creation never leaves a half-made cluster behind;
//! * `postgres.log` — the server log;
//! * `password` — the superuser's password (mode 0600, owned by the user running olps): the
//!   cluster uses scram-sha-256 password authentication for every connection, over TCP and over
//!   its Unix socket, so no other local account can connect without reading this file. A cluster
//!   created by an older olps with `trust` authentication is given a password (and `pg_hba.conf`
//!   switched to scram-sha-256) the next time olps starts it.
//!
//! PostgreSQL refuses to run as root. When olps runs as root, `initdb`, `pg_ctl` and the server
//! run as the unprivileged `postgres` account instead (uid/gid set on the child processes, which
//! also drops root's supplementary groups); the data directory and log then belong to that
//! account, and every folder above the data directory must be searchable by it.
//!
//! Everything here is blocking; async callers should use `tokio::task::spawn_blocking`.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The folder, relative to the working directory, that holds the embedded cluster by default.
pub const DEFAULT_BASE_DIR: &str = ".olps";

const DATA_DIR: &str = "data";
const STAGING_DIR: &str = "data.initdb";
const LOCK_FILE: &str = "lock";
const LOG_FILE: &str = "postgres.log";
/// The superuser's password, mode 0600.
const PASSWORD_FILE: &str = "password";
/// The password handed to initdb (`--pwfile`), readable by the service account, removed after.
const INITDB_PASSWORD_FILE: &str = "initdb.pw";
/// The database superuser created by initdb (`-U`), used in the connection URL.
const SUPERUSER: &str = "postgres";
/// The operating-system account the server runs as when olps runs as root.
const SERVICE_ACCOUNT: &str = "postgres";
/// Debian/Ubuntu layout: /usr/lib/postgresql/<major>/bin.
const VERSIONED_BIN_ROOT: &str = "/usr/lib/postgresql";
/// How long `pg_ctl start|stop -w` may wait, in seconds.
const PG_CTL_TIMEOUT_SECS: &str = "120";
/// Unix socket paths are limited to 107 bytes; `/.s.PGSQL.65535` takes 15 of them.
const MAX_SOCKET_DIR_LEN: usize = 90;
/// Attempts at starting the server when its port turns out to be taken by another program.
const START_ATTEMPTS: usize = 3;

/// A running embedded cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedCluster {
    /// The cluster's data directory (`<base>/data`, absolute).
    pub data_dir: PathBuf,
    /// The loopback TCP port the server listens on.
    pub port: u16,
    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`.
    pub url: String,
    /// The superuser's password (also in `<base>/password`, mode 0600).
    pub password: String,
    /// `initdb` ran during this call.
    pub created: bool,
    /// The server was started by this call (it was not running before).
    pub started: bool,
}

impl EmbeddedCluster {
    /// The server log, `<base>/postgres.log`.
    pub fn log_file(&self) -> PathBuf {
        match self.data_dir.parent() {
            Some(base) => base.join(LOG_FILE),
            None => PathBuf::from(LOG_FILE),
        }
    }
}

/// Why the embedded cluster could not be provided. Every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No `initdb`/`pg_ctl` on PATH nor under /usr/lib/postgresql/*/bin.
    #[error("{}", no_database_help())]
    NoBinaries {
        /// Where we looked.
        searched: Vec<PathBuf>,
    },

    #[error(
        "olps runs as root and PostgreSQL refuses to run as root, but there is no '{user}' \
         account to run the embedded cluster as: create it (`useradd --system --user-group \
         --no-create-home {user}`), run olps as an ordinary user, or set \
         DATABASE_URL=postgres://... to use an existing server"
    )]
    NoServiceAccount { user: String },

    #[error(
        "the embedded PostgreSQL server runs as user '{user}' (olps runs as root and PostgreSQL \
         refuses to run as root), but '{user}' cannot enter the folder {}: allow it with \
         `chmod o+x {}`, run olps from a folder that '{user}' can reach, or set \
         DATABASE_URL=postgres://... to use another server",
        dir.display(),
        dir.display()
    )]
    NotTraversable { dir: PathBuf, user: String },

    #[error(
        "the embedded PostgreSQL data directory {} belongs to uid {found_uid}, but its server \
         has to run as {expected} (uid {expected_uid}): run olps as that user, hand the folder \
         over (`chown -R {expected_uid} {}`), or delete {} to start afresh",
        dir.display(),
        dir.display(),
        dir.display()
    )]
    WrongOwner {
        dir: PathBuf,
        found_uid: u32,
        expected: String,
        expected_uid: u32,
    },

    #[error(
        "{} exists but is not a PostgreSQL data directory (it has no PG_VERSION file): move it \
         away or delete it so olps can create the embedded cluster there, or set \
         DATABASE_URL=postgres://... to use another server",
        dir.display()
    )]
    NotACluster { dir: PathBuf },

    #[error(
        "could not {action} {}: {source}; check that folder's permissions and free disk space, \
         or set DATABASE_URL=postgres://... to use another server",
        path.display()
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "could not run {}: {source}; check the PostgreSQL installation (e.g. `apt-get install \
         postgresql`), or set DATABASE_URL=postgres://... to use another server",
        program.display()
    )]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "initdb could not create the embedded PostgreSQL cluster in {}:\n{output}\nfix the \
         cause above and rerun olps (the partial cluster was removed), or set \
         DATABASE_URL=postgres://... to use another server",
        data_dir.display()
    )]
    InitdbFailed { data_dir: PathBuf, output: String },

    #[error(
        "could not start the embedded PostgreSQL cluster in {}:\n{detail}\nsee the server log \
         {} for details; fix the cause and rerun olps, or set DATABASE_URL=postgres://... to \
         use another server",
        data_dir.display(),
        log.display()
    )]
    StartFailed {
        data_dir: PathBuf,
        log: PathBuf,
        detail: String,
    },

    #[error(
        "the embedded PostgreSQL server of {} is running but does not accept connections on \
         127.0.0.1:{port}; see the server log {}, stop the server (`pg_ctl stop -D {}`) and \
         rerun olps, or set DATABASE_URL=postgres://... to use another server",
        data_dir.display(),
        log.display(),
        data_dir.display()
    )]
    NotResponding {
        data_dir: PathBuf,
        port: u16,
        log: PathBuf,
    },

    #[error(
        "processes of an earlier server (PIDs {pids:?}) still use the embedded PostgreSQL data \
         directory {} although its postmaster is gone: stop them (`kill <PID>`) and rerun olps",
        data_dir.display()
    )]
    LeftoverProcesses { data_dir: PathBuf, pids: Vec<u32> },

    #[error(
        "could not stop the embedded PostgreSQL cluster in {}:\n{detail}\nsee the server log {}; \
         stop it by hand with `pg_ctl stop -D {} -m immediate`",
        data_dir.display(),
        log.display(),
        data_dir.display()
    )]
    StopFailed {
        data_dir: PathBuf,
        log: PathBuf,
        detail: String,
    },
}

/// The message users see when there is no `DATABASE_URL` and no PostgreSQL binaries.
pub fn no_database_help() -> String {
    "no database: DATABASE_URL is not set, and no PostgreSQL binaries (initdb, pg_ctl) were \
     found on PATH or under /usr/lib/postgresql/*/bin to run the embedded default database in \
     .olps/. Do one of these:\n\
     \x20 - point olps at an existing server: export DATABASE_URL=postgres://USER:PASSWORD@HOST:5432/DATABASE\n\
     \x20 - start one with Docker from the olps repository (it has docker-compose.yml): \
     `docker compose up -d postgres`, then set DATABASE_URL to the URL given in \
     docker-compose.yml\n\
     \x20 - install PostgreSQL (e.g. `apt-get install postgresql`, `dnf install \
     postgresql-server`, `brew install postgresql`) and rerun: olps then creates and starts a \
     private cluster under .olps/ by itself"
        .to_string()
}

/// Finds the folder holding `initdb` and `pg_ctl`: on PATH, then the newest
/// `/usr/lib/postgresql/*/bin`. `None` when absent.
///
/// A PATH entry that only holds symlinks (like `/usr/local/bin/initdb ->
/// /usr/lib/postgresql/15/bin/initdb`) resolves to the folder the binaries really live in, so
/// `initdb`, `pg_ctl` and `postgres` always come from one installation.
pub fn find_pg_bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.as_os_str().is_empty() || !has_pg_tools(&dir) {
                continue;
            }
            if let Ok(real) = fs::canonicalize(dir.join("initdb")) {
                if let Some(real_dir) = real.parent() {
                    if has_pg_tools(real_dir) {
                        return Some(real_dir.to_path_buf());
                    }
                }
            }
            return Some(std::path::absolute(&dir).unwrap_or(dir));
        }
    }
    newest_versioned_bin_dir(Path::new(VERSIONED_BIN_ROOT))
}

/// Creates (the first time) and starts (if not running) the cluster under `base` (normally
/// `.olps` in the working directory). Blocking: initdb takes a few seconds.
pub fn ensure_cluster(base: &Path) -> Result<EmbeddedCluster, EmbeddedError> {
    // Fail before touching the folder when there is nothing to run.
    let bin = bin_dir_for(&base.join(DATA_DIR)).ok_or_else(no_binaries)?;
    let run_as = service_account()?;
    let base = prepare_base(base, run_as.as_ref())?;
    let _lock = lock_base(&base)?;

    let data_dir = base.join(DATA_DIR);
    let log = base.join(LOG_FILE);
    // Another process may have created the cluster while we waited for the lock.
    let bin = bin_dir_for(&data_dir).unwrap_or(bin);
    prepare_log(&log, run_as.as_ref())?;
    let ctx = Ctx {
        bin,
        run_as,
        base: base.clone(),
        data_dir: data_dir.clone(),
        log,
    };

    let created = if fs::symlink_metadata(&data_dir).is_err() {
        ctx.create_cluster()?;
        true
    } else {
        ctx.check_existing()?;
        false
    };

    let (port, started) = match ctx.server_state()? {
        ServerState::Running { port } => {
            let port = match port {
                Some(port) => port,
                None => ctx.configured_port()?.0,
            };
            ctx.wait_for_connections(port, Duration::from_secs(30))?;
            (port, false)
        }
        ServerState::Stopped => (ctx.start()?, true),
    };

    let password = match read_password(&base)? {
        Some(password) => password,
        // Created by an older olps, open to every local account: close it.
        None => ctx.require_password(port)?,
    };
    Ok(EmbeddedCluster {
        data_dir,
        port,
        url: format!("postgres://{SUPERUSER}:{password}@127.0.0.1:{port}/postgres"),
        password,
        created,
        started,
    })
}

/// What `olps db status` shows of the cluster under a base folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The data directory (`<base>/data`; absolute when the base exists).
    pub data_dir: PathBuf,
    /// A cluster was created there.
    pub exists: bool,
    /// Its server runs.
    pub running: bool,
    /// The server's PID, when it runs.
    pub pid: Option<u32>,
    /// The port it listens on (when it runs), or will listen on (when stopped).
    pub port: Option<u16>,
    /// The server log.
    pub log: PathBuf,
}

/// Whether there is a cluster under `base` and whether its server runs. Changes nothing, except
/// that a stale `postmaster.pid` left by a crash is removed (as starting would).
pub fn cluster_status(base: &Path) -> Result<ClusterStatus, EmbeddedError> {
    let absent = |base: &Path| ClusterStatus {
        data_dir: base.join(DATA_DIR),
        exists: false,
        running: false,
        pid: None,
        port: None,
        log: base.join(LOG_FILE),
    };
    let Some((ctx, _lock)) = Ctx::existing(base)? else {
        return Ok(absent(
            &fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf()),
        ));
    };
    let (running, port) = match ctx.server_state()? {
        ServerState::Running { port } => (true, port),
        ServerState::Stopped => (false, ctx.configured_port().ok().map(|(port, _)| port)),
    };
    let pid = running
        .then(|| fs::read_to_string(ctx.data_dir.join("postmaster.pid")).ok())
        .flatten()
        .and_then(|text| text.lines().next().and_then(|l| l.trim().parse().ok()));
    Ok(ClusterStatus {
        data_dir: ctx.data_dir.clone(),
        exists: true,
        running,
        pid,
        port,
        log: ctx.log.clone(),
    })
}

/// Stops the cluster under `base` (`pg_ctl stop -m fast`), if it runs: true when it stopped a
/// running server. Nothing to do when there is no cluster there.
pub fn stop_cluster(base: &Path) -> Result<bool, EmbeddedError> {
    let Some((ctx, _lock)) = Ctx::existing(base)? else {
        return Ok(false);
    };
    match ctx.server_state()? {
        ServerState::Stopped => Ok(false),
        ServerState::Running { .. } => {
            tracing::info!(
                "stopping embedded PostgreSQL cluster in {}",
                ctx.data_dir.display()
            );
            let out = ctx
                .pg_command("pg_ctl")
                .args([
                    "stop",
                    "-w",
                    "-s",
                    "-m",
                    "fast",
                    "-t",
                    PG_CTL_TIMEOUT_SECS,
                    "-D",
                ])
                .arg(&ctx.data_dir)
                .output()
                .map_err(|source| ctx.spawn_error("pg_ctl", source))?;
            if out.status.success() {
                Ok(true)
            } else {
                Err(EmbeddedError::StopFailed {
                    data_dir: ctx.data_dir.clone(),
                    log: ctx.log.clone(),
                    detail: output_text(&out),
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Binaries

fn no_binaries() -> EmbeddedError {
    let mut searched: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    searched.push(Path::new(VERSIONED_BIN_ROOT).join("*").join("bin"));
    EmbeddedError::NoBinaries { searched }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn has_pg_tools(dir: &Path) -> bool {
    is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"))
}

/// Parses "15", "9.6", "16beta1" → comparable numbers.
fn version_key(name: &str) -> Option<Vec<u64>> {
    let key: Vec<u64> = name
        .split('.')
        .map(|part| {
            let digits: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse::<u64>()
        })
        .collect::<Result<_, _>>()
        .ok()?;
    (!key.is_empty()).then_some(key)
}

fn newest_versioned_bin_dir(root: &Path) -> Option<PathBuf> {
    fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let key = version_key(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            has_pg_tools(&bin).then_some((key, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// For an existing cluster, prefer the binaries of its own major version (several may be
/// installed side by side); otherwise the ones `find_pg_bin_dir` finds.
fn bin_dir_for(data_dir: &Path) -> Option<PathBuf> {
    if let Ok(version) = fs::read_to_string(data_dir.join("PG_VERSION")) {
        let version = version.trim();
        if !version.is_empty() && !version.contains('/') {
            let bin = Path::new(VERSIONED_BIN_ROOT).join(version).join("bin");
            if has_pg_tools(&bin) {
                return Some(bin);
            }
        }
    }
    find_pg_bin_dir()
}

// ---------------------------------------------------------------------------------------------
// The account the server runs as

#[derive(Debug, Clone)]
struct ServiceAccount {
    name: String,
    uid: u32,
    gid: u32,
}

mod sys {
    unsafe extern "C" {
        /// POSIX `geteuid`; it cannot fail.
        pub safe fn geteuid() -> u32;
    }
}

/// `None` when olps runs as an ordinary user (the server then runs as that user too);
/// the `postgres` account when olps runs as root.
fn service_account() -> Result<Option<ServiceAccount>, EmbeddedError> {
    if sys::geteuid() != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            if name != SERVICE_ACCOUNT {
                return None;
            }
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some(ServiceAccount {
                name: name.to_string(),
                uid,
                gid,
            })
        })
        .filter(|account| account.uid != 0)
        .map(Some)
        .ok_or_else(|| EmbeddedError::NoServiceAccount {
            user: SERVICE_ACCOUNT.to_string(),
        })
}

/// Search permission on a folder for `account` (whose supplementary groups are dropped).
fn can_traverse(meta: &fs::Metadata, account: &ServiceAccount) -> bool {
    let mode = meta.mode();
    if meta.uid() == account.uid {
        mode & 0o100 != 0
    } else if meta.gid() == account.gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EmbeddedError {
    let path = path.to_path_buf();
    move |source| EmbeddedError::Io {
        action,
        path,
        source,
    }
}

/// Creates `base`, makes it absolute and checks that the service account can reach it.
fn prepare_base(base: &Path, run_as: Option<&ServiceAccount>) -> Result<PathBuf, EmbeddedError> {
    fs::create_dir_all(base).map_err(io_error("create the folder", base))?;
    let base = fs::canonicalize(base).map_err(io_error("resolve the folder", base))?;
    let Some(account) = run_as else {
        return Ok(base);
    };
    // The base folder is ours: let the service account through it if it cannot pass yet.
    let meta = fs::metadata(&base).map_err(io_error("inspect the folder", &base))?;
    if !can_traverse(&meta, account) {
        let mode = meta.permissions().mode() | 0o011;
        fs::set_permissions(&base, fs::Permissions::from_mode(mode))
            .map_err(io_error("change the permissions of", &base))?;
    }
    // Every folder above it has to be searchable too; report the outermost that is not.
    let mut ancestors: Vec<&Path> = base.ancestors().collect();
    ancestors.reverse();
    for dir in ancestors {
        let meta = fs::metadata(dir).map_err(io_error("inspect the folder", dir))?;
        if !can_traverse(&meta, account) {
            return Err(EmbeddedError::NotTraversable {
                dir: dir.to_path_buf(),
                user: account.name.clone(),
            });
        }
    }
    Ok(base)
}

fn chown_to(path: &Path, run_as: Option<&ServiceAccount>) -> Result<(), EmbeddedError> {
    if let Some(account) = run_as {
        std::os::unix::fs::chown(path, Some(account.uid), Some(account.gid))
            .map_err(io_error("change the owner of", path))?;
    }
    Ok(())
}

fn prepare_log(log: &Path, run_as: Option<&ServiceAccount>) -> Result<(), EmbeddedError> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_error("create the server log", log))?;
    if let Some(account) = run_as {
        let meta = fs::metadata(log).map_err(io_error("inspect the server log", log))?;
        if meta.uid() != account.uid {
            chown_to(log, run_as)?;
        }
    }
    Ok(())
}

/// Holds `<base>/lock` exclusively until dropped (`flock`, so it also excludes other threads of
/// this process that open the file themselves).
fn lock_base(base: &Path) -> Result<fs::File, EmbeddedError> {
    let path = base.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("open the lock file", &path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            tracing::info!(
                "waiting for another olps process to finish setting up the embedded PostgreSQL \
                 cluster (lock {})",
                path.display()
            );
            file.lock().map_err(io_error("lock", &path))?;
        }
        Err(fs::TryLockError::Error(e)) => return Err(io_error("lock", &path)(e)),
    }
    Ok(file)
}

// ---------------------------------------------------------------------------------------------
// The cluster

struct Ctx {
    bin: PathBuf,
    run_as: Option<ServiceAccount>,
    base: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
}

enum ServerState {
    /// A postmaster serves this data directory; its port from postmaster.pid when known.
    Running {
        port: Option<u16>,
    },
    Stopped,
}

fn output_text(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    if !stderr.is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stderr);
    }
    if text.is_empty() {
        let _ = write!(text, "(no output; {})", out.status);
    }
    text
}

/// 256 random bits as 64 hex digits (safe in a URL and in a SQL literal).
fn generate_password() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `contents` to a new file only its owner can read (0600 from the start).
fn write_private(path: &Path, contents: &str) -> Result<(), EmbeddedError> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("create", path))?;
    io::Write::write_all(&mut file, contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", path))
}

/// The password in `<base>/password`; `None` when there is none (a cluster of an older olps).
fn read_password(base: &Path) -> Result<Option<String>, EmbeddedError> {
    let path = base.join(PASSWORD_FILE);
    match fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", &path)(e)),
    }
}

fn free_port() -> Result<u16, EmbeddedError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| EmbeddedError::Io {
            action: "find a free TCP port on",
            path: PathBuf::from("127.0.0.1"),
            source,
        })?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|source| EmbeddedError::Io {
            action: "find a free TCP port on",
            path: PathBuf::from("127.0.0.1"),
            source,
        })
}

/// The port of a `port = N` line (`#` comments, optional `=` and quotes allowed).
fn parse_port_line(line: &str) -> Option<u16> {
    let line = line.split('#').next()?.trim();
    let rest = line.strip_prefix("port")?;
    if rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        return None; // e.g. port_something
    }
    let value = rest.trim_start().strip_prefix('=').unwrap_or(rest).trim();
    value.trim_matches('\'').trim().parse().ok()
}

fn quote_conf(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

impl Ctx {
    /// The cluster already under `base`, checked to be one olps runs, with the lock on `base`
    /// held while the guard lives; `None` when there is none.
    fn existing(base: &Path) -> Result<Option<(Ctx, fs::File)>, EmbeddedError> {
        let Ok(base) = fs::canonicalize(base) else {
            return Ok(None);
        };
        let data_dir = base.join(DATA_DIR);
        if !data_dir.join("PG_VERSION").is_file() {
            return Ok(None);
        }
        let run_as = service_account()?;
        let lock = lock_base(&base)?;
        let bin = bin_dir_for(&data_dir).ok_or_else(no_binaries)?;
        let ctx = Ctx {
            bin,
            run_as,
            log: base.join(LOG_FILE),
            base,
            data_dir,
        };
        // Never act on a cluster that is not ours to run (server_state relies on that).
        ctx.check_existing()?;
        Ok(Some((ctx, lock)))
    }

    fn pg_command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        // The base folder is searchable by the service account (checked in prepare_base), and
        // the child changes into it after dropping privileges.
        command
            .current_dir(&self.base)
            .stdin(Stdio::null())
            .env_remove("PGDATA");
        if let Some(account) = &self.run_as {
            command.uid(account.uid).gid(account.gid);
        }
        command
    }

    fn spawn_error(&self, program: &str, source: io::Error) -> EmbeddedError {
        EmbeddedError::Spawn {
            program: self.bin.join(program),
            source,
        }
    }

    fn conf_path(&self) -> PathBuf {
        self.data_dir.join("postgresql.conf")
    }

    /// Runs initdb in a staging folder, writes olps' settings and renames it into place.
    fn create_cluster(&self) -> Result<(), EmbeddedError> {
        let staging = self.base.join(STAGING_DIR);
        if fs::symlink_metadata(&staging).is_ok() {
            tracing::warn!(
                "removing {} left by an interrupted cluster creation",
                staging.display()
            );
            fs::remove_dir_all(&staging).map_err(io_error("remove", &staging))?;
        }
        fs::create_dir(&staging).map_err(io_error("create the folder", &staging))?;
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o700))
            .map_err(io_error("change the permissions of", &staging))?;
        chown_to(&staging, self.run_as.as_ref())?;

        tracing::info!(
            "creating embedded PostgreSQL cluster in {} (initdb from {}; this takes a few seconds)",
            self.data_dir.display(),
            self.bin.display()
        );
        // Password authentication from the start: initdb reads the password from a file only the
        // server's account can read, removed right after.
        let password = generate_password();
        let pwfile = self.base.join(INITDB_PASSWORD_FILE);
        write_private(&pwfile, &password)?;
        chown_to(&pwfile, self.run_as.as_ref())?;
        let out = self
            .pg_command("initdb")
            .arg("-D")
            .arg(&staging)
            .args([
                "-A",
                "scram-sha-256",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(|source| {
                let _ = fs::remove_dir_all(&staging);
                let _ = fs::remove_file(&pwfile);
                self.spawn_error("initdb", source)
            });
        let _ = fs::remove_file(&pwfile);
        let out = out?;
        if !out.status.success() {
            let _ = fs::remove_dir_all(&staging);
            return Err(EmbeddedError::InitdbFailed {
                data_dir: self.data_dir.clone(),
                output: output_text(&out),
            });
        }

        let port = free_port()?;
        let socket_dir = match self.data_dir.to_str() {
            Some(dir) if dir.len() <= MAX_SOCKET_DIR_LEN => dir.to_string(),
            // Too long for a Unix socket path (or not UTF-8): TCP only.
            _ => String::new(),
        };
        let settings = format!(
            "\n# --- written by olps for its embedded cluster (the port was free when it was \
             created) ---\nport = {port}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = {}\n",
            quote_conf(&socket_dir)
        );
        let conf = staging.join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io_error("open", &conf))?;
        io::Write::write_all(&mut file, settings.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error("write", &conf))?;
        drop(file);

        write_private(&self.base.join(PASSWORD_FILE), &password)?;
        fs::rename(&staging, &self.data_dir).map_err(io_error("rename", &staging))?;
        Ok(())
    }

    /// Gives the superuser of a running `trust` cluster (made by an older olps) a password and
    /// switches `pg_hba.conf` to scram-sha-256; returns the password.
    fn require_password(&self, port: u16) -> Result<String, EmbeddedError> {
        tracing::warn!(
            "the embedded PostgreSQL cluster in {} accepts connections without a password \
             (created by an older olps): setting a password (kept in {}) and requiring it",
            self.data_dir.display(),
            self.base.join(PASSWORD_FILE).display()
        );
        let password = generate_password();
        let psql = self.bin.join("psql");
        let mut child = self
            .pg_command("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(["-U", SUPERUSER, "-d", "postgres", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error("psql", source))?;
        // On stdin, not the command line (which other accounts can read in /proc).
        if let Some(mut stdin) = child.stdin.take() {
            let sql = format!(
                "SET password_encryption = 'scram-sha-256';\nALTER ROLE {SUPERUSER} PASSWORD '{password}';\n"
            );
            io::Write::write_all(&mut stdin, sql.as_bytes())
                .map_err(io_error("write to", &psql))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|source| self.spawn_error("psql", source))?;
        if !out.status.success() {
            return Err(EmbeddedError::StartFailed {
                data_dir: self.data_dir.clone(),
                log: self.log.clone(),
                detail: format!(
                    "could not set the superuser's password: {}",
                    output_text(&out)
                ),
            });
        }
        let hba = self.data_dir.join("pg_hba.conf");
        let text = fs::read_to_string(&hba).map_err(io_error("read", &hba))?;
        let mut rewritten = String::with_capacity(text.len());
        for line in text.lines() {
            let code = line.split('#').next().unwrap_or("");
            let fields: Vec<&str> = code.split_whitespace().collect();
            if fields.last() == Some(&"trust") {
                let at = line.rfind("trust").expect("trust is in the line");
                rewritten.push_str(&line[..at]);
                rewritten.push_str("scram-sha-256");
                rewritten.push_str(&line[at + "trust".len()..]);
            } else {
                rewritten.push_str(line);
            }
            rewritten.push('\n');
        }
        // The password file first: if the reload below fails, the next start retries nothing
        // but the reload, with the password the server already has.
        write_private(&self.base.join(PASSWORD_FILE), &password)?;
        fs::write(&hba, rewritten).map_err(io_error("write", &hba))?;
        let out = self
            .pg_command("pg_ctl")
            .args(["reload", "-s", "-D"])
            .arg(&self.data_dir)
            .output()
            .map_err(|source| self.spawn_error("pg_ctl", source))?;
        if !out.status.success() {
            return Err(EmbeddedError::StartFailed {
                data_dir: self.data_dir.clone(),
                log: self.log.clone(),
                detail: format!("pg_ctl reload: {}", output_text(&out)),
            });
        }
        Ok(password)
    }

    /// An existing data directory must be a cluster, owned by the account that runs it.
    fn check_existing(&self) -> Result<(), EmbeddedError> {
        if !self.data_dir.join("PG_VERSION").is_file() {
            return Err(EmbeddedError::NotACluster {
                dir: self.data_dir.clone(),
            });
        }
        let meta = fs::metadata(&self.data_dir).map_err(io_error("inspect", &self.data_dir))?;
        let (expected, expected_uid) = match &self.run_as {
            Some(account) => (format!("user '{}'", account.name), account.uid),
            None => ("the user running olps".to_string(), sys::geteuid()),
        };
        if meta.uid() != expected_uid {
            return Err(EmbeddedError::WrongOwner {
                dir: self.data_dir.clone(),
                found_uid: meta.uid(),
                expected,
                expected_uid,
            });
        }
        Ok(())
    }

    /// The port set in the configuration, and whether it comes from postgresql.conf (which olps
    /// may rewrite) rather than postgresql.auto.conf (ALTER SYSTEM, which wins).
    fn configured_port(&self) -> Result<(u16, bool), EmbeddedError> {
        let auto = self.data_dir.join("postgresql.auto.conf");
        if let Ok(text) = fs::read_to_string(&auto) {
            if let Some(port) = text.lines().filter_map(parse_port_line).next_back() {
                return Ok((port, false));
            }
        }
        let conf = self.conf_path();
        let text = fs::read_to_string(&conf).map_err(io_error("read", &conf))?;
        match text.lines().filter_map(parse_port_line).next_back() {
            Some(port) => Ok((port, true)),
            None => {
                // No port chosen (settings lost or edited away): choose one now.
                let port = free_port()?;
                self.set_port(port)?;
                Ok((port, true))
            }
        }
    }

    /// Replaces the port in postgresql.conf (or appends it).
    fn set_port(&self, port: u16) -> Result<(), EmbeddedError> {
        let conf = self.conf_path();
        let text = fs::read_to_string(&conf).map_err(io_error("read", &conf))?;
        let mut replaced = false;
        let mut out = String::with_capacity(text.len() + 16);
        for line in text.lines() {
            if parse_port_line(line).is_some() {
                if !replaced {
                    let _ = writeln!(out, "port = {port}");
                    replaced = true;
                }
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        if !replaced {
            let _ = writeln!(out, "port = {port}");
        }
        // Writing in place keeps the file's owner.
        fs::write(&conf, out).map_err(io_error("write", &conf))
    }

    /// Whether a postmaster serves this data directory. Cleans up a stale postmaster.pid whose
    /// PID now belongs to an unrelated live process (after a reboot), which PostgreSQL itself
    /// would refuse to start over; a PID that no longer exists is left to PostgreSQL, which
    /// handles that case (and checks the old shared memory) itself.
    fn server_state(&self) -> Result<ServerState, EmbeddedError> {
        let pid_file = self.data_dir.join("postmaster.pid");
        let text = match fs::read_to_string(&pid_file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ServerState::Stopped),
            Err(e) => return Err(io_error("read", &pid_file)(e)),
        };
        let mut lines = text.lines();
        let pid: Option<u32> = lines.next().and_then(|l| l.trim().parse().ok());
        let port: Option<u16> = lines.nth(2).and_then(|l| l.trim().parse().ok());

        if !Path::new("/proc/self/cwd").exists() {
            return self.pg_ctl_status(port);
        }
        if let Some(pid) = pid {
            if process_cwd(pid).as_deref() == Some(self.data_dir.as_path()) {
                return Ok(ServerState::Running { port });
            }
        }
        // The postmaster is gone. Its children exit soon after it; wait for them.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let pids = processes_in(&self.data_dir);
            if pids.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(EmbeddedError::LeftoverProcesses {
                    data_dir: self.data_dir.clone(),
                    pids,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let pid_in_use = pid.is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if pid_in_use {
            tracing::warn!(
                "removing stale {} (PID {} is not this cluster's server)",
                pid_file.display(),
                pid.map_or_else(|| "?".to_string(), |p| p.to_string())
            );
            fs::remove_file(&pid_file).map_err(io_error("remove", &pid_file))?;
            // The socket lock files carry the same PID.
            if let Ok(entries) = fs::read_dir(&self.data_dir) {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    if name.to_string_lossy().starts_with(".s.PGSQL.") {
                        let _ = fs::remove_file(entry.path());
                    }
                }
            }
        }
        Ok(ServerState::Stopped)
    }

    /// Fallback without /proc: ask pg_ctl.
    fn pg_ctl_status(&self, port: Option<u16>) -> Result<ServerState, EmbeddedError> {
        let out = self
            .pg_command("pg_ctl")
            .args(["status", "-D"])
            .arg(&self.data_dir)
            .output()
            .map_err(|source| self.spawn_error("pg_ctl", source))?;
        match out.status.code() {
            Some(0) => Ok(ServerState::Running { port }),
            Some(3) => Ok(ServerState::Stopped),
            _ => Err(EmbeddedError::StartFailed {
                data_dir: self.data_dir.clone(),
                log: self.log.clone(),
                detail: format!("pg_ctl status: {}", output_text(&out)),
            }),
        }
    }

    /// Starts the server and returns its port. If the configured port has been taken by another
    /// program meanwhile, picks a new free one and tries again.
    fn start(&self) -> Result<u16, EmbeddedError> {
        let (mut port, rewritable) = self.configured_port()?;
        let mut attempt = 1;
        loop {
            let log_offset = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
            tracing::info!(
                "starting embedded PostgreSQL cluster in {} on 127.0.0.1:{port} (log {})",
                self.data_dir.display(),
                self.log.display()
            );
            let out = self
                .pg_command("pg_ctl")
                .args(["start", "-w", "-s", "-t", PG_CTL_TIMEOUT_SECS, "-D"])
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log)
                .output()
                .map_err(|source| self.spawn_error("pg_ctl", source))?;
            if out.status.success() {
                let port = match self.server_state()? {
                    ServerState::Running { port: Some(live) } => live,
                    _ => port,
                };
                self.wait_for_connections(port, Duration::from_secs(30))?;
                return Ok(port);
            }
            let log_tail = read_from(&self.log, log_offset);
            let port_taken = log_tail.contains("Address already in use")
                || log_tail.contains("could not create any TCP/IP sockets");
            if port_taken && rewritable && attempt < START_ATTEMPTS {
                let new_port = free_port()?;
                tracing::warn!(
                    "port {port} of the embedded PostgreSQL cluster is taken by another \
                     program; moving the cluster to port {new_port}"
                );
                self.set_port(new_port)?;
                port = new_port;
                attempt += 1;
                continue;
            }
            let mut detail = output_text(&out);
            let tail = last_lines(&log_tail, 15);
            if !tail.is_empty() {
                let _ = write!(detail, "\nlast lines of the server log:\n{tail}");
            }
            return Err(EmbeddedError::StartFailed {
                data_dir: self.data_dir.clone(),
                log: self.log.clone(),
                detail,
            });
        }
    }

    fn wait_for_connections(&self, port: u16, patience: Duration) -> Result<(), EmbeddedError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + patience;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(EmbeddedError::NotResponding {
                    data_dir: self.data_dir.clone(),
                    port,
                    log: self.log.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The working directory of a process; `None` if it is gone, a zombie, or not ours to inspect.
fn process_cwd(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// Processes whose working directory is `dir` (a postmaster and its children live in their data
/// directory).
fn processes_in(dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| process_cwd(pid).as_deref() == Some(dir))
        .collect()
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut file) = fs::File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_end(&mut text);
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_port_lines() {
        assert_eq!(parse_port_line("port = 5433"), Some(5433));
        assert_eq!(parse_port_line("port=5433 # comment"), Some(5433));
        assert_eq!(parse_port_line("port '5433'"), Some(5433));
        assert_eq!(parse_port_line("#port = 5432"), None);
        assert_eq!(parse_port_line("portal = 5"), None);
        assert_eq!(parse_port_line("listen_addresses = 'x'"), None);
    }

    #[test]
    fn orders_versions() {
        assert!(version_key("16").unwrap() > version_key("9.6").unwrap());
        assert!(version_key("15").unwrap() > version_key("9.6").unwrap());
        assert_eq!(version_key("main"), None);
    }

    #[test]
    fn quotes_conf_values() {
        assert_eq!(quote_conf("/a/b"), "'/a/b'");
        assert_eq!(quote_conf("/a'b"), "'/a''b'");
    }
}
