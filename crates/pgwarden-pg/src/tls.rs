//! TLS to PostgreSQL (rustls) with libpq's `sslmode` and `sslrootcert`
//! meanings, for every connection pgwarden makes to a node itself.
//!
//! As libpq: `prefer` and `require` check the certificate only when a root
//! file is given (then as `verify-ca`), `verify-ca` checks the chain,
//! `verify-full` the chain and that the certificate names the host. Unlike
//! libpq, `prefer` does not retry in plain text after a failed handshake: a
//! certificate that does not check out is an error, not a reason to drop
//! encryption. A setup problem (the root file unreadable) is kept and
//! reported by every connection attempt, so it shows as the node's reason.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pgwarden_core::config::SslMode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// How to connect to one node: its `sslmode` and `sslrootcert`, and the
/// rustls setup made from them. Cheap to clone.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    rootcert: Option<PathBuf>,
    /// Why TLS cannot be used, if it cannot (checked at load, kept for a
    /// file that went away since).
    setup: Result<Arc<rustls::ClientConfig>, String>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("rootcert", &self.rootcert)
            .field("problem", &self.setup.as_ref().err())
            .finish()
    }
}

impl PgTls {
    /// `sslmode` unset is libpq's default, `prefer`.
    pub fn new(mode: Option<SslMode>, rootcert: Option<&Path>) -> PgTls {
        let mode = mode.unwrap_or(SslMode::Prefer);
        let setup = if mode == SslMode::Disable {
            Err("sslmode is disable".to_owned())
        } else {
            client_config(mode, rootcert)
        };
        PgTls {
            mode,
            rootcert: rootcert.map(Path::to_owned),
            setup,
        }
    }

    /// A node's `sslmode` and `sslrootcert`.
    pub fn for_node(n: &pgwarden_core::config::NodeConfig) -> PgTls {
        PgTls::new(n.sslmode, n.sslrootcert.as_deref())
    }

    /// Plain text only (pgbouncer's admin console on this host).
    pub fn disabled() -> PgTls {
        PgTls::new(Some(SslMode::Disable), None)
    }

    /// What keeps TLS from working with this setup (a root file that cannot
    /// be read or holds no certificate), for the config check.
    pub fn problem(&self) -> Option<&str> {
        match (&self.setup, self.mode) {
            (_, SslMode::Disable) | (Ok(_), _) => None,
            (Err(e), _) => Some(e),
        }
    }

    pub(crate) fn ssl_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Pg;
        match self.mode {
            SslMode::Disable => Pg::Disable,
            SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }
}

fn client_config(
    mode: SslMode,
    rootcert: Option<&Path>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = match rootcert {
        None if mode.verifies() => {
            return Err(format!(
                "sslmode {} needs sslrootcert (the CA that signed the server's certificate)",
                mode.as_str()
            ))
        }
        None => None,
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = read_certs(path)?;
            for c in certs {
                roots.add(c).map_err(|e| {
                    format!(
                        "sslrootcert {} holds a certificate rustls cannot use: {e}",
                        path.display()
                    )
                })?;
            }
            let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            Some(v)
        }
    };
    let verifier = Verifier {
        webpki,
        check_name: mode == SslMode::VerifyFull,
        provider: provider.clone(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // PostgreSQL 17+ checks the ALPN name when a client sends one; older
    // servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

/// The PEM certificates of `path` (at least one).
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "sslrootcert {} is not PEM certificates: {e:?}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "sslrootcert {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// libpq's checks: none without a root file; else the chain, and the name
/// only for `verify-full`. Handshake signatures are always checked.
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the chain before the name: a name error means the
        // chain was good.
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    /// Never fails: tokio-postgres asks even for `disable`; a problem is
    /// reported when a handshake is actually started.
    fn make_tls_connect(&mut self, host: &str) -> io::Result<PgTlsConnect> {
        let setup = self.setup.clone().and_then(|config| {
            let name = ServerName::try_from(host.to_owned()).map_err(|e| {
                format!("`{host}` is not a host name or address TLS can check: {e}")
            })?;
            Ok((config, name))
        });
        Ok(PgTlsConnect {
            setup,
            host: host.to_owned(),
            rootcert: self.rootcert.clone(),
        })
    }
}

/// One handshake to one host.
pub struct PgTlsConnect {
    setup: Result<(Arc<rustls::ClientConfig>, ServerName<'static>), String>,
    host: String,
    rootcert: Option<PathBuf>,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let (config, name) = self.setup.map_err(io::Error::other)?;
            tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map(PgTlsStream)
                .map_err(|e| explain(e, &self.host, self.rootcert.as_deref()))
        })
    }
}

/// A handshake error in the words an operator acts on.
fn explain(e: io::Error, host: &str, rootcert: Option<&Path>) -> io::Error {
    let Some(rustls::Error::InvalidCertificate(ce)) =
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
    else {
        return e;
    };
    let root = rootcert
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let why = match ce {
        CertificateError::UnknownIssuer => format!(
            "it is not signed by a CA of sslrootcert {root}: give the CA that signed the server's certificate"
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("it does not name {host} (sslmode verify-full checks the name): give the server a certificate for {host}, or connect by a name it has")
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "it has expired".to_owned()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "it is not valid yet (check the clocks)".to_owned()
        }
        other => format!("{other:?}"),
    };
    io::Error::other(format!(
        "the server's TLS certificate was refused: {why} ({ce:?})"
    ))
}

/// The encrypted stream; no channel binding (SCRAM without `-PLUS`).
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
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

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_root_file_is_a_problem_named_by_its_path() {
        let t = PgTls::new(
            Some(SslMode::VerifyFull),
            Some(Path::new("/nonexistent/ca.crt")),
        );
        let p = t.problem().expect("a problem");
        assert!(
            p.contains("cannot read sslrootcert /nonexistent/ca.crt"),
            "{p}"
        );
    }

    #[test]
    fn a_root_file_without_certificates_is_a_problem() {
        let f = std::env::temp_dir().join(format!("pgwarden-pg-empty-{}.crt", std::process::id()));
        std::fs::write(&f, "not a certificate\n").unwrap();
        let t = PgTls::new(Some(SslMode::VerifyCa), Some(&f));
        let p = t.problem().expect("a problem").to_owned();
        std::fs::remove_file(&f).unwrap();
        assert!(p.contains("holds no PEM certificate"), "{p}");
    }

    #[test]
    fn modes_map_to_what_tokio_postgres_negotiates() {
        use tokio_postgres::config::SslMode as Pg;
        assert!(matches!(PgTls::disabled().ssl_mode(), Pg::Disable));
        assert!(matches!(PgTls::new(None, None).ssl_mode(), Pg::Prefer));
        assert!(PgTls::new(None, None).problem().is_none());
        assert!(matches!(
            PgTls::new(Some(SslMode::Require), None).ssl_mode(),
            Pg::Require
        ));
        // verify-* without a root file cannot work: said, not guessed.
        assert!(PgTls::new(Some(SslMode::VerifyFull), None)
            .problem()
            .unwrap()
            .contains("needs sslrootcert"));
    }
}
