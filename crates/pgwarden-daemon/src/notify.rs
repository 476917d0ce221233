//! The systemd notification protocol (sd_notify), without libsystemd: under
//! `Type=notify` the daemon says READY=1 once every node has been polled,
//! pings WATCHDOG=1 from the poll loop, and says STOPPING=1 on shutdown.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op, so the
//! daemon runs the same with and without it. A notification that cannot be
//! sent is logged, never fatal: systemd restarting a healthy supervisor
//! because its socket hiccupped would be worse than a missed ping.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use std::sync::Mutex;

/// The environment variables systemd hands a `Type=notify` service. Child
/// processes (fencing commands, pg_ctl) must not inherit them: a child that
/// wrote to the socket could make systemd believe the daemon said something.
pub const ENV_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Where notifications go, if anywhere.
pub(crate) struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    /// Half of WatchdogSec: systemd's advice for the ping period.
    watchdog_every: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
    last_status: Mutex<String>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET").ok();
        let watchdog_usec = std::env::var("WATCHDOG_USEC").ok();
        let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::new(
            socket.as_deref(),
            watchdog_usec.as_deref(),
            watchdog_pid.as_deref(),
        )
    }

    fn new(socket: Option<&str>, watchdog_usec: Option<&str>, watchdog_pid: Option<&str>) -> Self {
        let target = socket.filter(|s| !s.is_empty()).and_then(|s| {
            match open(s) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(socket = s, error = %e, "cannot use NOTIFY_SOCKET; systemd will not hear from pgwarden");
                    None
                }
            }
        });
        // WATCHDOG_PID names the process systemd watches; if it is not us
        // (a wrapper started us), the pings are not ours to send.
        let ours = watchdog_pid.is_none_or(|p| p.parse::<u32>().ok() == Some(std::process::id()));
        let watchdog_every = watchdog_usec
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && ours && target.is_some())
            .map(|u| Duration::from_micros(u) / 2);
        Notifier {
            target,
            watchdog_every,
            last_ping: Mutex::new(None),
            last_status: Mutex::new(String::new()),
        }
    }

    /// How often the watchdog wants a ping, when systemd watches us.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// READY=1 with a one-line STATUS.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
        *self.last_status.lock().expect("status lock") = status.to_owned();
    }

    /// STATUS=, only when it changed (what `systemctl status` shows).
    pub fn status(&self, status: &str) {
        let mut last = self.last_status.lock().expect("status lock");
        if *last != status {
            self.send(&format!("STATUS={}", one_line(status)));
            *last = status.to_owned();
        }
    }

    /// WATCHDOG=1 if half the watchdog period passed since the last ping.
    /// Called from the view builder's loop: if that loop stalls, the pings
    /// stop and systemd restarts the daemon.
    pub fn watchdog(&self, now: Instant) {
        let Some(every) = self.watchdog_every else {
            return;
        };
        let mut last = self.last_ping.lock().expect("ping lock");
        if last.is_none_or(|t| now.saturating_duration_since(t) >= every / 2) {
            self.send("WATCHDOG=1");
            *last = Some(now);
        }
    }

    /// STOPPING=1: systemd then waits for us to exit instead of timing out.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target {
            if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
                tracing::warn!(error = %e, "cannot notify systemd");
            }
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// A socket for `NOTIFY_SOCKET`: a path, or `@name` in the abstract namespace.
fn open(spec: &str) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let addr = match spec.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(spec)?,
    };
    Ok((UnixDatagram::unbound()?, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (tempfile::TempDir, UnixDatagram, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        (dir, sock, path.to_str().unwrap().to_owned())
    }

    fn received(sock: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn without_notify_socket_nothing_is_sent_and_nothing_fails() {
        let n = Notifier::new(None, Some("1000000"), None);
        assert_eq!(n.watchdog_every(), None);
        n.ready("x");
        n.watchdog(Instant::now());
        n.stopping();
    }

    #[test]
    fn ready_status_watchdog_and_stopping_reach_the_socket() {
        let (_dir, sock, path) = listener();
        let n = Notifier::new(Some(&path), Some("2000000"), None);
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(1)));
        n.ready("healthy, primary pg-a");
        n.status("healthy, primary pg-a"); // unchanged: not sent again
        n.status("unhealthy: node_down");
        let t0 = Instant::now();
        n.watchdog(t0);
        n.watchdog(t0 + Duration::from_millis(100)); // too soon
        n.watchdog(t0 + Duration::from_millis(600));
        n.stopping();
        assert_eq!(
            received(&sock),
            [
                "READY=1\nSTATUS=healthy, primary pg-a",
                "STATUS=unhealthy: node_down",
                "WATCHDOG=1",
                "WATCHDOG=1",
                "STOPPING=1\nSTATUS=stopping",
            ]
        );
    }

    #[test]
    fn the_watchdog_of_another_pid_is_not_ours() {
        let (_dir, _sock, path) = listener();
        let n = Notifier::new(Some(&path), Some("2000000"), Some("1"));
        assert_eq!(n.watchdog_every(), None);
    }

    #[test]
    fn an_unusable_socket_is_a_warning_not_an_error() {
        let n = Notifier::new(Some("/nonexistent/dir/sock"), Some("2000000"), None);
        n.ready("x"); // send fails quietly (logged)
        let n = Notifier::new(Some("@"), None, None);
        n.stopping();
    }
}
