//! The daemon under systemd's `Type=notify` protocol, with a real datagram
//! socket standing in for systemd: READY=1 only once both nodes have been
//! polled, WATCHDOG=1 pings while the loop runs, STATUS= lines that follow
//! the cluster's health, STOPPING=1 on SIGTERM and a clean exit.
//! deploy/systemd/pgwarden.service itself is checked by `systemd-analyze verify`.

mod util;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use pgwarden_testkit::{poll_until, StopMode};
use util::Env;

/// Every notification received so far, in order.
fn drain(sock: &UnixDatagram, into: &mut Vec<String>) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = sock.recv(&mut buf) {
        into.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

#[test]
fn the_daemon_speaks_sd_notify_ready_watchdog_status_stopping() {
    let mut env = Env::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_nonblocking(true).unwrap();
    let path = path.to_str().unwrap().to_owned();
    // A 2 s watchdog: a ping at least every second (half of it).
    env.restart_daemon(0, &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "2000000")]);

    let mut got = Vec::new();
    let messages = |got: &mut Vec<String>, what: &str, pred: &dyn Fn(&[String]) -> bool| {
        poll_until(Duration::from_secs(20), what, || {
            drain(&sock, got);
            pred(got).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\nreceived: {got:?}"));
    };

    // READY names the primary: it was sent after a poll, not at bind time.
    messages(&mut got, "READY=1", &|m| {
        m.iter().any(|s| s.starts_with("READY=1"))
    });
    let ready = got.iter().find(|s| s.starts_with("READY=1")).unwrap();
    assert_eq!(ready, "READY=1\nSTATUS=healthy, primary pg-a");
    assert_eq!(
        got.iter().filter(|s| s.starts_with("READY=1")).count(),
        1,
        "READY is said once: {got:?}"
    );
    messages(&mut got, "three watchdog pings", &|m| {
        m.iter().filter(|s| *s == "WATCHDOG=1").count() >= 3
    });

    // systemctl status follows the cluster: the standby goes away...
    env.cluster.stop_node(1, StopMode::Fast).unwrap();
    messages(&mut got, "a STATUS naming the standby's problem", &|m| {
        m.iter()
            .any(|s| s.starts_with("STATUS=unhealthy, primary pg-a:") && s.contains("(pg-b)"))
    });
    // ...and comes back.
    env.cluster.start_node(1).unwrap();
    let healthy_again = got.len();
    messages(&mut got, "STATUS healthy again", &|m| {
        m[healthy_again..]
            .iter()
            .any(|s| s == "STATUS=healthy, primary pg-a")
    });

    let status = env.daemons[0].terminate();
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    drain(&sock, &mut got);
    assert_eq!(
        got.last().map(String::as_str),
        Some("STOPPING=1\nSTATUS=stopping"),
        "the last word is STOPPING: {got:?}"
    );
}

/// The shipped unit parses and names only directives systemd knows.
#[test]
fn the_systemd_unit_verifies() {
    let analyze = util::tool("systemd-analyze", "systemd");
    let unit = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/pgwarden.service"
    );
    // verify wants ExecStart's binary to exist: point it at this build's.
    let text = std::fs::read_to_string(unit).unwrap();
    let text = text.replace("/usr/bin/pgwarden", util::pgwarden_bin().to_str().unwrap());
    assert!(text.contains("Type=notify") && text.contains("WatchdogSec="));
    // Everything verify says about the unit `dir/name`, and its exit status.
    let verify = |dir: &std::path::Path, name: &str, text: &str| {
        let copy = dir.join(name);
        std::fs::write(&copy, text).unwrap();
        let out = std::process::Command::new(&analyze)
            .arg("verify")
            .arg(&copy)
            .env("SYSTEMD_LOG_LEVEL", "warning")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let about: Vec<String> = stderr
            .lines()
            .filter(|l| l.contains(name))
            .map(str::to_owned)
            .collect();
        (out.status, about, stderr)
    };
    let dir = tempfile::tempdir().unwrap();

    // Without systemd as PID 1 verify still loads the unit itself and
    // reports each unknown key, bad value or missing binary in it, as a
    // line naming the file; the units it orders itself after need not
    // exist. So: a clean exit, and not one line about our file.
    let (status, about, stderr) = verify(dir.path(), "pgwarden.service", &text);
    assert!(
        status.success() && about.is_empty(),
        "systemd-analyze verify: {status:?}\n{stderr}"
    );

    // The positive control: the same unit with one unknown directive must
    // be reported, or the check above proves nothing here.
    let bogus = text.replacen("[Service]\n", "[Service]\nBogus=1\n", 1);
    assert_ne!(bogus, text);
    let (status, about, stderr) = verify(dir.path(), "bogus-pgwarden.service", &bogus);
    assert!(
        !status.success() || about.iter().any(|l| l.contains("Bogus")),
        "systemd-analyze verify did not report Bogus=1: {status:?}\n{stderr}"
    );
}

/// The sudoers example parses (visudo, from Debian's `sudo`).
#[test]
fn the_sudoers_example_parses() {
    let visudo = ["/usr/sbin/visudo", "/usr/bin/visudo"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| panic!("visudo not found: apt-get install sudo"));
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/pgwarden.sudoers"
    );
    let out = std::process::Command::new(visudo)
        .args(["-c", "-f", file])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "visudo -cf {file}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
