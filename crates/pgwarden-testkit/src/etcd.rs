//! A real one-member etcd (Debian's `etcd-server`, /usr/bin/etcd) on free
//! loopback ports with its own data directory, for the tests of the etcd
//! operation lock. Dropping it kills the process and removes the data.
//!
//! [`Etcd::stop`] and [`Etcd::start_again`] take it away and bring it back
//! on the same ports and data; [`Etcd::call`] speaks its v3 JSON gateway,
//! so a test can read the lock key or revoke a lease as an operator would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;

use crate::error::{IoContext, KitError};
use crate::util::{free_port, poll_until};

/// Where the etcd server binary is: `PGWARDEN_ETCD`, else Debian's path.
pub fn etcd_bin() -> PathBuf {
    std::env::var_os("PGWARDEN_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// TLS for the member's client URL: its certificate and key (PEM), and
/// with `client_ca`, `--client-cert-auth` against that CA.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// A running etcd member.
pub struct Etcd {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// Plain http, for the readiness poll when the client URL is TLS.
    metrics_port: u16,
    tls: Option<EtcdTls>,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd and waits until it serves requests.
    pub fn start() -> Result<Etcd, KitError> {
        Etcd::start_with(None)
    }

    /// Starts etcd, its client URL over TLS when `tls` is given. Then
    /// [`Etcd::call`] and the helpers on it do not work (they speak plain
    /// http): use a TLS client.
    pub fn start_with(tls: Option<EtcdTls>) -> Result<Etcd, KitError> {
        let bin = etcd_bin();
        if !bin.exists() {
            return Err(KitError::Environment(format!(
                "no etcd at {}: `apt-get install etcd-server` (scripts/install-test-deps.sh does), or set PGWARDEN_ETCD",
                bin.display()
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-etcd-")
            .tempdir()
            .ctx(|| "creating etcd's temp dir".into())?;
        let mut etcd = Etcd {
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            tls,
            child: None,
        };
        etcd.start_again()?;
        Ok(etcd)
    }

    /// The client URL, for `lock.etcd.endpoints`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// (Re)starts the member on its ports and data dir; waits until it answers.
    pub fn start_again(&mut self) -> Result<(), KitError> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .ctx(|| "opening etcd's log".into())?;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let data = self.dir.path().join("data");
        let mut cmd = Command::new(etcd_bin());
        if let Some(tls) = &self.tls {
            cmd.arg(arg_path("--cert-file=", &tls.cert))
                .arg(arg_path("--key-file=", &tls.key));
            if let Some(ca) = &tls.client_ca {
                cmd.arg(arg_path("--trusted-ca-file=", ca))
                    .arg("--client-cert-auth");
            }
        }
        let child = cmd
            .arg("--name=pgwarden-test")
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                self.metrics_port
            ))
            .arg(arg_path("--data-dir=", &data))
            .arg(format!("--listen-client-urls={}", self.endpoint()))
            .arg(format!("--advertise-client-urls={}", self.endpoint()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=pgwarden-test={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().ctx(|| "etcd's log".into())?)
            .stderr(log)
            .spawn()
            .ctx(|| format!("starting {}", etcd_bin().display()))?;
        self.child = Some(child);
        poll_until(Duration::from_secs(30), "etcd to serve requests", || {
            if self.tls.is_some() {
                self.healthy().then_some(())
            } else {
                self.call("/v3/kv/range", &serde_json::json!({"key": "AA=="}))
                    .ok()
                    .map(|_| ())
            }
        })
        .map_err(|e| {
            KitError::Environment(format!("{e}\n--- etcd log ---\n{}", self.log_text()))
        })?;
        Ok(())
    }

    /// `GET /health` on the plain metrics URL says the member serves.
    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.metrics_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        raw.starts_with("HTTP/1.1 200") && raw.contains("\"health\":\"true\"")
    }

    /// Kills the member (SIGKILL: as if its host went away) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// POSTs `body` to the v3 JSON gateway; the answer's JSON, or why not.
    pub fn call(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, String> {
        let mut s =
            TcpStream::connect(("127.0.0.1", self.client_port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
        gateway_answer(&raw)
    }

    /// The value (JSON) of `key` with its create revision and lease, if any.
    pub fn get(&self, key: &str) -> Option<(serde_json::Value, i64, i64)> {
        let v = self
            .call(
                "/v3/kv/range",
                &serde_json::json!({"key": b64(key.as_bytes())}),
            )
            .ok()?;
        let kv = v["kvs"].get(0)?;
        let value = unb64(kv["value"].as_str()?)?;
        let num = |f: &str| kv[f].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        Some((
            serde_json::from_slice(&value).ok()?,
            num("create_revision"),
            num("lease"),
        ))
    }

    /// Revokes `lease`, as `etcdctl lease revoke` does.
    pub fn revoke(&self, lease: i64) -> Result<(), String> {
        self.call(
            "/v3/lease/revoke",
            &serde_json::json!({"ID": lease.to_string()}),
        )
        .map(|_| ())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn arg_path(flag: &str, p: &Path) -> String {
    format!("{flag}{}", p.display())
}

/// The JSON body of the v3 gateway's HTTP answer `raw`, or its status line
/// and body when it is not a 200.
pub(crate) fn gateway_answer(raw: &str) -> Result<serde_json::Value, String> {
    let (head, rest) = raw.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{}: {payload}", head.lines().next().unwrap_or("")));
    }
    serde_json::from_str(&payload).map_err(|e| format!("{e}: {payload}"))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}
