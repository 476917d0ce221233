//! The etcd member of a [`Testbed`] ([`crate::TestbedOptions::etcd`]): one etcd (Debian's
//! `etcd-server`) on host e, `192.0.2.6:2379`, its data in the testbed's directory. The
//! daemons reach it over the bridge, so a cut between a host and e (the testbed's
//! nftables helpers) takes etcd away from that host's daemon only.
//!
//! [`Testbed::stop_etcd`] and [`Testbed::start_etcd_again`] take it away and bring it
//! back on the same address and data; [`Testbed::etcd_get`] and [`Testbed::etcd_revoke`]
//! speak its v3 JSON gateway from the operator's host c. The member runs in host e's
//! namespace, so dropping the testbed (also on a panic) kills it with the namespace.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;

use crate::error::{IoContext, KitError};
use crate::testbed::{Host, Testbed};
use crate::util::{file_tail, poll_until, TAIL_LINES};

/// etcd's client port on host e.
pub const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
/// The key prefix the daemons' `lock.etcd.prefix` names.
pub const ETCD_PREFIX: &str = "/pgwarden-testbed";

impl Testbed {
    /// The client URL of the member, for `lock.etcd.endpoints`.
    pub fn etcd_endpoint(&self) -> String {
        format!("http://{}:{ETCD_CLIENT_PORT}", Host::E.addr())
    }

    /// The key of the operation lock (`<prefix>/<cluster>/lock`).
    pub fn etcd_lock_key(&self) -> String {
        format!("{ETCD_PREFIX}/testbed/lock")
    }

    /// The `lock:` section of every daemon's config, when the testbed has etcd.
    pub(crate) fn etcd_lock_yaml(&self) -> String {
        match self.options().etcd {
            None => String::new(),
            Some(ttl) => format!(
                "lock:\n  etcd:\n    endpoints: [{}]\n    prefix: {ETCD_PREFIX}\n    ttl: {}s\n",
                self.etcd_endpoint(),
                ttl.as_secs().max(1)
            ),
        }
    }

    pub fn etcd_log(&self) -> std::path::PathBuf {
        self.dir().join("logs").join("etcd.log")
    }

    /// Starts the member on host e (as root: it is no part of what pgwarden runs) and
    /// waits until host c gets answers from it.
    pub(crate) fn start_etcd(&self) -> Result<(), KitError> {
        let bin = crate::etcd::etcd_bin();
        if !bin.exists() {
            return Err(KitError::Environment(format!(
                "no etcd at {}: `apt-get install etcd-server` (scripts/install-test-deps.sh does), or set PGWARDEN_ETCD",
                bin.display()
            )));
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.etcd_log())
            .ctx(|| format!("opening {}", self.etcd_log().display()))?;
        let err = log.try_clone().ctx(|| "duplicating etcd's log fd".into())?;
        let addr = Host::E.addr();
        let client = self.etcd_endpoint();
        let peer = format!("http://{addr}:{ETCD_PEER_PORT}");
        let child = self
            .host_command(Host::E, &bin)
            .arg("--name=testbed")
            .arg(format!("--data-dir={}", self.dir().join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=testbed={peer}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .ctx(|| format!("starting {} on host e", bin.display()))?;
        *self.etcd.lock().unwrap() = Some(child);
        poll_until(
            Duration::from_secs(30),
            "etcd on host e to serve requests",
            || {
                self.etcd_call("/v3/kv/range", &serde_json::json!({"key": "AA=="}))
                    .ok()
            },
        )
        .map(|_| ())
        .map_err(|e| {
            KitError::Environment(format!(
                "{e}\n--- etcd log {} ---\n{}",
                self.etcd_log().display(),
                file_tail(&self.etcd_log(), TAIL_LINES)
            ))
        })
    }

    /// Kills the member (SIGKILL: as if host e went away) and waits for it. `ip netns
    /// exec` execs etcd in place, so the child is etcd itself.
    pub fn stop_etcd(&self) {
        if let Some(mut c) = self.etcd.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the member again on its address and data, if stopped.
    pub fn start_etcd_again(&self) -> Result<(), KitError> {
        if self.etcd.lock().unwrap().is_some() {
            return Ok(());
        }
        self.start_etcd()
    }

    /// POSTs `body` to etcd's v3 JSON gateway from host c; the answer's JSON, or why not.
    pub fn etcd_call(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let addr: SocketAddr = format!("{}:{ETCD_CLIENT_PORT}", Host::E.addr())
            .parse()
            .expect("an address");
        let body = body.to_string();
        let raw = self.in_host(Host::C, || -> Result<String, String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
            let mut raw = String::new();
            s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
            Ok(raw)
        })?;
        crate::etcd::gateway_answer(&raw)
    }

    /// The value (JSON) of `key` with its create revision (the fencing token) and
    /// lease, if the key exists.
    pub fn etcd_get(&self, key: &str) -> Option<(serde_json::Value, i64, i64)> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let v = self
            .etcd_call(
                "/v3/kv/range",
                &serde_json::json!({"key": b64.encode(key.as_bytes())}),
            )
            .ok()?;
        let kv = v["kvs"].get(0)?;
        let value = b64.decode(kv["value"].as_str()?).ok()?;
        let num = |f: &str| kv[f].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        Some((
            serde_json::from_slice(&value).ok()?,
            num("create_revision"),
            num("lease"),
        ))
    }

    /// Revokes `lease`, as `etcdctl lease revoke` would.
    pub fn etcd_revoke(&self, lease: i64) -> Result<(), String> {
        self.etcd_call(
            "/v3/lease/revoke",
            &serde_json::json!({"ID": lease.to_string()}),
        )
        .map(|_| ())
    }
}
