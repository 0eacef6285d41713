//! TLS to PostgreSQL: the sqlx pools and the migration connection (tokio-postgres) both honour
//! `sslmode` and `sslrootcert`, checked against the test server (ssl on, with its snakeoil
//! certificate: CN and SAN `localhost`) by asking the server whether each session is encrypted.

use olps::pgtls;
use sqlx::{Connection, PgConnection};

use crate::common::*;

/// The server's certificate file (`SHOW ssl_cert_file`), which verify-ca uses as its root.
async fn server_cert(db: &TestDb) -> String {
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        ssl, "on",
        "the test server must have ssl on for these tests"
    );
    let file: String = sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let path = if file.starts_with('/') {
        file
    } else {
        let dir: String = sqlx::query_scalar("SHOW data_directory")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        format!("{dir}/{file}")
    };
    assert!(
        std::path::Path::new(&path).is_file(),
        "the server's certificate {path} is not readable here"
    );
    path
}

fn with_params(url: &str, params: &[(&str, &str)]) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    for (k, v) in params {
        parsed.query_pairs_mut().append_pair(k, v);
    }
    parsed.to_string()
}

fn with_host(url: &str, host: &str) -> String {
    let mut parsed = url::Url::parse(url).unwrap();
    parsed.set_host(Some(host)).unwrap();
    parsed.to_string()
}

const ENCRYPTED: &str =
    "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)";

/// Whether a sqlx pool (olps::db::connect) over `url` is encrypted; Err if it cannot connect.
async fn pool_encrypted(url: &str) -> Result<bool, String> {
    let pool = olps::db::connect(url, 1).await.map_err(|e| e.to_string())?;
    let ssl: bool = sqlx::query_scalar(ENCRYPTED)
        .fetch_one(&pool)
        .await
        .map_err(|e| e.to_string())?;
    pool.close().await;
    Ok(ssl)
}

/// Whether the migration connection over `url` is encrypted; Err if it cannot connect.
async fn migration_connection_encrypted(url: &str) -> Result<bool, String> {
    let (client, connection) = pgtls::connect_tokio_postgres(url)
        .await
        .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
    let driver = tokio::spawn(connection);
    let ssl: bool = client
        .query_one(ENCRYPTED, &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    drop(client);
    let _ = driver.await;
    Ok(ssl)
}

async fn both(url: &str) -> (Result<bool, String>, Result<bool, String>) {
    (
        pool_encrypted(url).await,
        migration_connection_encrypted(url).await,
    )
}

#[tokio::test]
async fn sslmode_is_honoured_by_the_pool_and_the_migration_connection() {
    let db = TestDb::new().await;
    let cert = server_cert(&db).await;

    // require: encrypted, whatever the certificate.
    let url = with_params(&db.url, &[("sslmode", "require")]);
    assert_eq!(both(&url).await, (Ok(true), Ok(true)), "{url}");
    // disable: never.
    let url = with_params(&db.url, &[("sslmode", "disable")]);
    assert_eq!(both(&url).await, (Ok(false), Ok(false)), "{url}");
    // prefer: encrypted when the server offers it (it does).
    let url = with_params(&db.url, &[("sslmode", "prefer")]);
    assert_eq!(both(&url).await, (Ok(true), Ok(true)), "{url}");
    // No sslmode on a loopback host: plain (documented in pgtls).
    assert_eq!(both(&db.url).await, (Ok(false), Ok(false)));

    // verify-ca with the server's own certificate as the root: encrypted and checked; the host
    // name (127.0.0.1, not in the certificate) is not checked.
    let url = with_params(&db.url, &[("sslmode", "verify-ca"), ("sslrootcert", &cert)]);
    assert_eq!(both(&url).await, (Ok(true), Ok(true)), "{url}");
    // (Refusals by an untrusted root: `verification_refuses_…` below, on a private server, since
    // this machine's own trust store holds the shared server's snakeoil certificate.)

    // verify-full: the host name must match the certificate (localhost), not 127.0.0.1.
    let url = with_params(
        &db.url,
        &[("sslmode", "verify-full"), ("sslrootcert", &cert)],
    );
    let (pool, migration) = both(&url).await;
    assert!(
        pool.is_err(),
        "verify-full accepted a certificate for another name"
    );
    assert!(
        migration.is_err(),
        "verify-full accepted a certificate for another name"
    );
    let url = with_host(&url, "localhost");
    assert_eq!(both(&url).await, (Ok(true), Ok(true)), "{url}");

    // A mistyped mode is an error that names it.
    let url = with_params(&db.url, &[("sslmode", "sometimes")]);
    let (pool, migration) = both(&url).await;
    assert!(pool.unwrap_err().contains("sometimes"));
    assert!(migration.unwrap_err().contains("sometimes"));
}

#[tokio::test]
async fn olps_commands_migrate_and_run_over_verified_tls() {
    let db = TestDb::empty().await;
    let cert = server_cert(&db).await;
    let url = with_params(&db.url, &[("sslmode", "verify-ca"), ("sslrootcert", &cert)]);
    let report = olps::schema::migrate(&url).await.expect("migrate over TLS");
    assert!(report.applied.iter().any(|m| m.starts_with("V1__")));
    // The command line, as a user would run it: migrate, create a model, list it.
    let cli = Cli::new(&url);
    let out = cli.ok("migrate").await;
    assert!(out.contains("schema up to date"), "{out}");
    cli.ok("model create --name tls-model --kind linear").await;
    let out = cli.ok("model list").await;
    assert!(out.contains("tls-model"), "{out}");
    // A wrong root fails with a message, and nothing is created.
    let bad = with_params(
        &db.url,
        &[
            ("sslmode", "verify-ca"),
            ("sslrootcert", "/no/such/root.pem"),
        ],
    );
    let err = Cli::new(&bad).fails("model list").await;
    assert!(err.contains("root.pem"), "{err}");
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM models")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

/// Runs openssl; panics with its output on failure.
fn openssl(args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is needed to make a test certificate");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn verification_refuses_a_server_whose_certificate_no_root_vouches_for() {
    if olps::embedded::find_pg_bin_dir().is_none() {
        eprintln!("no PostgreSQL binaries: skipped");
        return;
    }
    // A private server with a certificate of its own, which no trust store holds.
    let tmp = TempCluster::new("olps-tls-private");
    let cluster = olps::embedded::ensure_cluster(&tmp.base).unwrap();
    let key = cluster.data_dir.join("server.key");
    let cert = cluster.data_dir.join("server.crt");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let owner = std::fs::metadata(&cluster.data_dir).unwrap();
    for file in [&key, &cert] {
        std::os::unix::fs::chown(file, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let root = tmp.root.join("root.crt");
    std::fs::copy(&cert, &root).unwrap();
    let root = root.to_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = PgConnection::connect(&cluster.url).await.unwrap();
        for sql in [
            "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
            "ALTER SYSTEM SET ssl_key_file = 'server.key'",
            "ALTER SYSTEM SET ssl = on",
            "SELECT pg_reload_conf()",
        ] {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        conn.close().await.ok();
        // The postmaster rereads its configuration asynchronously: wait until a new session
        // sees SSL on (a fixed pause was too short on a loaded machine).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let mut conn = PgConnection::connect(&cluster.url).await.unwrap();
            let ssl: String = sqlx::query_scalar("SHOW ssl")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            conn.close().await.ok();
            if ssl == "on" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ssl still off 30 s after pg_reload_conf()"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }

        // Its own certificate as the root: both connections verify it.
        let url = with_params(
            &cluster.url,
            &[("sslmode", "verify-ca"), ("sslrootcert", &root)],
        );
        assert_eq!(both(&url).await, (Ok(true), Ok(true)), "{url}");
        let url = with_host(
            &with_params(
                &cluster.url,
                &[("sslmode", "verify-full"), ("sslrootcert", &root)],
            ),
            "localhost",
        );
        assert_eq!(both(&url).await, (Ok(true), Ok(true)), "{url}");
        // Another root (the shared server's certificate): both refuse.
        let snakeoil = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
        for mode in ["verify-ca", "verify-full", "require"] {
            let url = with_params(
                &cluster.url,
                &[("sslmode", mode), ("sslrootcert", snakeoil)],
            );
            let (pool, migration) = both(&url).await;
            assert!(
                pool.is_err(),
                "{mode}: the pool accepted an unknown issuer: {pool:?}"
            );
            assert!(
                migration.is_err(),
                "{mode}: the migration connection accepted an unknown issuer: {migration:?}"
            );
        }
        // Without a root, require encrypts without checking.
        let url = with_params(&cluster.url, &[("sslmode", "require")]);
        assert_eq!(both(&url).await, (Ok(true), Ok(true)), "{url}");
    });
}
