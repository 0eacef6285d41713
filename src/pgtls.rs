//! TLS to PostgreSQL, as libpq does it: `sslmode` (disable, prefer, require, verify-ca,
//! verify-full) and `sslrootcert` from the connection URL (else `PGSSLMODE` / `PGSSLROOTCERT`),
//! honoured by every connection olps makes — the sqlx pools ([`crate::db::connect`]) and the
//! tokio-postgres connection that runs the migrations ([`connect_tokio_postgres`]), both with the
//! system's OpenSSL (through native-tls), as libpq.
//!
//! | sslmode | encrypted | certificate checked | host name checked |
//! |---|---|---|---|
//! | disable | no | – | – |
//! | prefer | if the server offers it | no | no |
//! | require | yes | no; yes against `sslrootcert` when one is given (as libpq) | no |
//! | verify-ca | yes | against `sslrootcert`, else the system's roots | no |
//! | verify-full | yes | against `sslrootcert`, else the system's roots | yes |
//!
//! Without `sslmode` the default is libpq's `prefer`, except for a loopback host
//! (127.0.0.0/8, ::1, localhost) or a Unix socket, where it is `disable`: encrypting traffic that
//! never leaves the machine protects nothing and costs a handshake per connection.

use std::net::IpAddr;
use std::path::PathBuf;

use postgres_native_tls::{MakeTlsConnector, TlsStream};
use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(value: &str) -> Result<SslMode, TlsSetupError> {
        Ok(match value.trim().to_ascii_lowercase().as_str() {
            "disable" => SslMode::Disable,
            // libpq's `allow` tries without TLS first; olps treats it like `prefer`.
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(TlsSetupError(format!(
                    "sslmode '{other}' is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                )))
            }
        })
    }

    fn sqlx(self) -> PgSslMode {
        match self {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

/// A connection URL's TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsSetupError(pub String);

/// The TLS settings of one connection URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslSettings {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Reads `sslmode` and `sslrootcert` from a `postgres://` URL (else from `PGSSLMODE` /
/// `PGSSLROOTCERT`), and returns the URL without them (tokio-postgres knows neither the verify
/// modes nor `sslrootcert`).
pub fn split_url(url: &str) -> Result<(String, SslSettings), TlsSetupError> {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // A key=value connection string: passed through as it is.
        return Ok((
            url.to_string(),
            SslSettings {
                mode: SslMode::Prefer,
                root_cert: None,
            },
        ));
    };
    let mut mode = None;
    let mut root_cert = None;
    let mut host_param = None;
    let mut kept: Vec<(String, String)> = Vec::new();
    for (name, value) in parsed.query_pairs() {
        match name.as_ref() {
            "sslmode" => mode = Some(SslMode::parse(&value)?),
            "sslrootcert" => root_cert = Some(PathBuf::from(value.as_ref())),
            _ => {
                if name == "host" {
                    host_param = Some(value.to_string());
                }
                kept.push((name.into_owned(), value.into_owned()));
            }
        }
    }
    let mode = match mode {
        Some(mode) => mode,
        None => match std::env::var("PGSSLMODE") {
            Ok(v) if !v.trim().is_empty() => SslMode::parse(&v)?,
            _ => {
                let host = host_param
                    .clone()
                    .or_else(|| parsed.host_str().map(str::to_string))
                    .unwrap_or_default();
                if host.is_empty() || host.starts_with('/') || is_loopback_host(&host) {
                    SslMode::Disable
                } else {
                    SslMode::Prefer
                }
            }
        },
    };
    let root_cert = root_cert.or_else(|| {
        std::env::var_os("PGSSLROOTCERT")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.to_string(), SslSettings { mode, root_cert }))
}

impl SslSettings {
    /// libpq: with a root certificate at hand, `require` checks the certificate like
    /// `verify-ca`.
    pub fn effective_mode(&self) -> SslMode {
        match (self.mode, &self.root_cert) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (mode, _) => mode,
        }
    }

    /// Applies these settings to sqlx's options (which parsed the same URL).
    pub fn apply(&self, options: PgConnectOptions) -> PgConnectOptions {
        let options = options.ssl_mode(self.effective_mode().sqlx());
        match &self.root_cert {
            Some(path) => options.ssl_root_cert(path),
            None => options,
        }
    }

    /// The TLS connector for this mode (for tokio-postgres). With `sslrootcert` only its
    /// certificates are trusted (as libpq); without, the system's.
    pub fn connector(&self) -> Result<native_tls::TlsConnector, TlsSetupError> {
        let mut builder = native_tls::TlsConnector::builder();
        match self.effective_mode() {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => {
                builder
                    .danger_accept_invalid_certs(true)
                    .danger_accept_invalid_hostnames(true);
            }
            SslMode::VerifyCa => {
                builder.danger_accept_invalid_hostnames(true);
            }
            SslMode::VerifyFull => {}
        }
        if let Some(path) = &self.root_cert {
            let text = std::fs::read_to_string(path).map_err(|e| {
                TlsSetupError(format!("cannot read sslrootcert {}: {e}", path.display()))
            })?;
            let mut found = 0;
            for pem in pem_certificates(&text) {
                let cert = native_tls::Certificate::from_pem(pem.as_bytes())
                    .map_err(|e| TlsSetupError(format!("sslrootcert {}: {e}", path.display())))?;
                builder.add_root_certificate(cert);
                found += 1;
            }
            if found == 0 {
                return Err(TlsSetupError(format!(
                    "sslrootcert {} holds no PEM certificate",
                    path.display()
                )));
            }
            builder.disable_built_in_roots(true);
        }
        builder
            .build()
            .map_err(|e| TlsSetupError(format!("TLS setup: {e}")))
    }
}

/// The PEM blocks of the certificates in a file (a bundle may hold many).
fn pem_certificates(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

/// sqlx's options for `url`, with its TLS settings applied as described above.
pub fn sqlx_options(url: &str) -> Result<PgConnectOptions, TlsSetupError> {
    let (_, ssl) = split_url(url)?;
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e: sqlx::Error| TlsSetupError(e.to_string()))?;
    Ok(ssl.apply(options))
}

/// A tokio-postgres connection honouring the URL's `sslmode` and `sslrootcert`.
pub async fn connect_tokio_postgres(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, TlsStream<tokio_postgres::Socket>>,
    ),
    ConnectError,
> {
    let (stripped, ssl) = split_url(url).map_err(ConnectError::Setup)?;
    let mut config: tokio_postgres::Config = stripped.parse().map_err(ConnectError::Postgres)?;
    config.ssl_mode(match ssl.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    let tls = MakeTlsConnector::new(ssl.connector().map_err(ConnectError::Setup)?);
    config.connect(tls).await.map_err(ConnectError::Postgres)
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Setup(TlsSetupError),
    #[error("{0}")]
    Postgres(#[source] tokio_postgres::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_ssl_parameters_off_the_url() {
        let (url, ssl) = split_url(
            "postgres://u:p@db.example.com:5432/x?sslmode=verify-ca&sslrootcert=/r.pem&application_name=a",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u:p@db.example.com:5432/x?application_name=a"
        );
        assert_eq!(ssl.mode, SslMode::VerifyCa);
        assert_eq!(ssl.root_cert, Some(PathBuf::from("/r.pem")));
        let (url, ssl) = split_url("postgres://u@10.1.2.3/x?sslmode=require").unwrap();
        assert_eq!(url, "postgres://u@10.1.2.3/x");
        assert_eq!(ssl.mode, SslMode::Require);
        assert!(split_url("postgres://u@h/x?sslmode=sometimes").is_err());
    }

    #[test]
    fn finds_every_certificate_of_a_bundle() {
        let one = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----";
        let text = format!("# a bundle\n{one}\njunk\n{one}\n");
        assert_eq!(pem_certificates(&text).len(), 2);
        assert!(pem_certificates("nothing").is_empty());
    }

    #[test]
    fn require_with_a_root_certificate_verifies_it() {
        let ssl = SslSettings {
            mode: SslMode::Require,
            root_cert: Some(PathBuf::from("/r.pem")),
        };
        assert_eq!(ssl.effective_mode(), SslMode::VerifyCa);
    }
}
