//! TLS to PostgreSQL, as libpq does it: `sslmode` (disable, prefer, require, verify-ca,
//! verify-full) and `sslrootcert` from the connection URL (else `PGSSLMODE` / `PGSSLROOTCERT`),
//! honoured by every connection olps makes — the sqlx pools ([`crate::db::connect`]) and the
//! tokio-postgres connection that runs the migrations ([`connect_tokio_postgres`]), both with
//! rustls.
//!
//! | sslmode | encrypted | certificate checked | host name checked |
//! |---|---|---|---|
//! | disable | no | – | – |
//! | prefer | if the server offers it | no | no |
//! | require | yes | no; yes against `sslrootcert` when one is given (as libpq) | no |
//! | verify-ca | yes | against `sslrootcert`, else the Mozilla roots | no |
//! | verify-full | yes | against `sslrootcert`, else the Mozilla roots | yes |
//!
//! Without `sslmode` the default is libpq's `prefer`, except for a loopback host
//! (127.0.0.0/8, ::1, localhost) or a Unix socket, where it is `disable`: encrypting traffic that
//! never leaves the machine protects nothing and costs a handshake per connection.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

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

    /// The rustls configuration for this mode (for tokio-postgres).
    pub fn client_config(&self) -> Result<ClientConfig, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError(e.to_string()))?;
        let mode = self.effective_mode();
        if matches!(mode, SslMode::Disable | SslMode::Prefer | SslMode::Require) {
            return Ok(builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
                .with_no_client_auth());
        }
        let mut roots = RootCertStore::empty();
        match &self.root_cert {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        TlsSetupError(format!("cannot read sslrootcert {}: {e}", path.display()))
                    })?;
                if certs.is_empty() {
                    return Err(TlsSetupError(format!(
                        "sslrootcert {} holds no PEM certificate",
                        path.display()
                    )));
                }
                for cert in certs {
                    roots.add(cert).map_err(|e| {
                        TlsSetupError(format!("sslrootcert {}: {e}", path.display()))
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsSetupError(e.to_string()))?;
        Ok(if mode == SslMode::VerifyCa {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(IgnoreHostName { verifier }))
                .with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        })
    }
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
        tokio_postgres::Connection<tokio_postgres::Socket, RustlsStream<tokio_postgres::Socket>>,
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
    let tls = MakeRustls {
        config: Arc::new(ssl.client_config().map_err(ConnectError::Setup)?),
    };
    config.connect(tls).await.map_err(ConnectError::Postgres)
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Setup(TlsSetupError),
    #[error("{0}")]
    Postgres(#[source] tokio_postgres::Error),
}

// ---- rustls verifiers ------------------------------------------------------------------------

/// `prefer` and `require`: encrypted, any certificate (as libpq without a root certificate).
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct IgnoreHostName {
    verifier: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.supported_verify_schemes()
    }
}

// ---- tokio-postgres over tokio-rustls --------------------------------------------------------

/// Makes rustls connectors for tokio-postgres.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let server_name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            server_name,
        })
    }
}

pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(self.config)
                .connect(self.server_name, stream)
                .await
                .map(RustlsStream)
        })
    }
}

/// A TLS session to PostgreSQL (no channel binding: SCRAM runs without it, as with
/// `channel_binding=prefer` against a server that does not offer it).
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
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
    fn require_with_a_root_certificate_verifies_it() {
        let ssl = SslSettings {
            mode: SslMode::Require,
            root_cert: Some(PathBuf::from("/r.pem")),
        };
        assert_eq!(ssl.effective_mode(), SslMode::VerifyCa);
    }
}
