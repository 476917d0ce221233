//! Optional TLS on the HTTP listener (rustls), and the trust the daemon and
//! the CLI put in other daemons' certificates.
//!
//! With `tls:` in the config the daemon serves HTTPS only, with the
//! certificate chain and key of `cert_file` / `key_file`; calls to the other
//! daemon (the lock, stopping its node, a forwarded rejoin) then trust only
//! `ca_file` (default: `cert_file` itself, for one self-signed certificate
//! shared by both daemons). No system roots: a peer is trusted because the
//! operator said so, not because a public CA signed something.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pgwarden_core::config::TlsConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to finish its TLS handshake. Handshakes run
/// in their own tasks, so a slow one delays nobody else.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side, ready to accept.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

/// Reads the certificate chain, the key and the CA file; an error names the
/// key of `tls` at fault (`cert_file`, `key_file`, `ca_file`) and says what
/// to fix.
pub fn server_config(tls: &TlsConfig) -> Result<ServerTls, (&'static str, String)> {
    let certs = read_certs(&tls.cert_file, "tls.cert_file").map_err(|e| ("cert_file", e))?;
    if let Some(ca) = &tls.ca_file {
        read_certs(ca, "tls.ca_file").map_err(|e| ("ca_file", e))?;
    }
    let key_pem = std::fs::read(&tls.key_file).map_err(|e| {
        (
            "key_file",
            format!("cannot read tls.key_file {}: {e}", tls.key_file.display()),
        )
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        ("key_file", format!(
            "tls.key_file {} holds no usable PEM private key ({e:?}): give a PKCS#8, PKCS#1 or SEC1 key",
            tls.key_file.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cert_file", format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            (
                "key_file",
                format!(
                    "tls.cert_file {} and tls.key_file {} do not make a usable pair: {e}",
                    tls.cert_file.display(),
                    tls.key_file.display()
                ),
            )
        })?;
    Ok(ServerTls {
        config: Arc::new(config),
    })
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{what} {}: not PEM certificates ({e:?})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The PEM file whose certificates an HTTPS client trusts for `tls`.
pub fn trust_file(tls: &TlsConfig) -> &Path {
    tls.ca_file.as_deref().unwrap_or(&tls.cert_file)
}

/// `builder` trusting exactly the certificates of `pem_file` (no system
/// roots). Used by the daemon for its peer and by the CLI (`--ca-file`).
pub fn trusting(
    builder: reqwest::ClientBuilder,
    pem_file: &Path,
) -> Result<reqwest::ClientBuilder, String> {
    let pem = std::fs::read(pem_file)
        .map_err(|e| format!("cannot read the CA file {}: {e}", pem_file.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{}: not PEM certificates: {e}", pem_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", pem_file.display()));
    }
    let mut builder = builder.use_rustls_tls().tls_built_in_root_certs(false);
    for c in certs {
        builder = builder.add_root_certificate(c);
    }
    Ok(builder)
}

/// A TCP listener that hands axum only connections whose TLS handshake
/// finished. Accepting and handshaking are separate tasks, so a client that
/// never finishes its handshake holds only its own task, for at most
/// [`HANDSHAKE_TIMEOUT`].
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, tls: ServerTls) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(tls.config);
        let accept_task = tokio::spawn(async move {
            loop {
                let (stream, remote) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, remote)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task never ends by itself; if it is gone, there
            // is nothing more to accept.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
