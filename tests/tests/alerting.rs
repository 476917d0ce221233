//! The shipped alert rules end to end: a real Prometheus (Debian package
//! `prometheus`) scrapes both pgwarden daemons of a real two-node cluster
//! every second and evaluates deploy/prometheus/alerts.yml, unmodified; a real
//! Alertmanager (`prometheus-alertmanager`) delivers what fires to a webhook
//! receiver inside this test.
//!
//! What it proves: the rules load and evaluate without errors against what
//! the daemons really export; a healthy cluster has no active alert; stopping
//! the standby fires `PgwardenStandbyNotStreaming` (once, not once per
//! daemon, after its `for: 30s`) with `node` = the standby, `severity`, and a
//! rendered summary and runbook link, and Alertmanager delivers it; starting
//! the standby again resolves it in Prometheus and Alertmanager sends the
//! resolved notification.
//!
//! The Alertmanager config here is the test's own (one webhook receiver, no
//! inhibit rules): with the shipped alertmanager.yml, `PgwardenNodeDown` of
//! the same node inhibits this alert, by design.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgwarden_testkit::{free_port, poll_until, StopMode};
use serde_json::Value;
use util::{http, metric, tool, Env};

const ALERTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/alerts.yml"
);
const RUNBOOK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/runbook.md");
const ALERT: &str = "PgwardenStandbyNotStreaming";
/// Its `for:` in alerts.yml.
const ALERT_FOR: Duration = Duration::from_secs(30);

#[test]
fn a_stopped_standby_fires_in_prometheus_and_alertmanager_then_resolves() {
    let prometheus_bin = tool("prometheus", "prometheus");
    let alertmanager_bin = tool("prometheus-alertmanager", "prometheus-alertmanager");

    let env = Env::start();
    for i in 0..2 {
        env.wait_health(i, "a healthy cluster", env.within_polls(3), |c, _| c == 200);
    }
    // Declared before the services: their logs outlive them.
    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start();
    let alertmanager = Service::start("alertmanager", dir.path(), |port| {
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(&config, alertmanager_config(&webhook.url)).unwrap();
        let mut cmd = Command::new(&alertmanager_bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("alertmanager-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Empty: no cluster (gossip) listener, which would bind 9094.
            .arg("--cluster.listen-address=");
        cmd
    });
    let daemons: Vec<String> = env
        .daemons
        .iter()
        .map(|d| d.url.trim_start_matches("http://").to_owned())
        .collect();
    let am_address = alertmanager.url.trim_start_matches("http://").to_owned();
    let prometheus = Service::start("prometheus", dir.path(), |port| {
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, prometheus_config(&daemons, &am_address)).unwrap();
        let mut cmd = Command::new(&prometheus_bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // Send firing alerts to Alertmanager at every evaluation.
            .arg("--rules.alert.resend-delay=1s");
        cmd
    });
    let prom = Prom(&prometheus.url);

    // ---- healthy: both daemons scraped, every rule evaluates, nothing active.
    let targets = poll_until(
        Duration::from_secs(30),
        "Prometheus to scrape both daemons",
        || {
            let t = prom.get("/api/v1/targets?state=active")?["activeTargets"].clone();
            let t = t.as_array()?.clone();
            (t.len() == 2 && t.iter().all(|t| t["health"] == "up")).then_some(t)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", prom.raw("/api/v1/targets")));
    let mut scraped: Vec<&str> = targets
        .iter()
        .map(|t| t["scrapeUrl"].as_str().unwrap())
        .collect();
    scraped.sort();
    let mut expected: Vec<String> = env
        .daemons
        .iter()
        .map(|d| format!("{}/metrics", d.url))
        .collect();
    expected.sort();
    assert_eq!(scraped, expected);

    // Three more evaluations of the rule group: all of them see both targets.
    let iterations = || {
        let m = http("GET", &format!("{}/metrics", prom.0), None, &[]).body;
        metric(&m, "prometheus_rule_group_iterations_total", &[])
    };
    let start = iterations().expect("prometheus_rule_group_iterations_total");
    poll_until(
        Duration::from_secs(20),
        "three evaluations of the rules",
        || (iterations()? >= start + 3.0).then_some(()),
    )
    .unwrap();
    let groups = prom.get("/api/v1/rules").expect("/api/v1/rules")["groups"].clone();
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0]["name"], "pgwarden");
    let rules = groups[0]["rules"].as_array().unwrap();
    assert!(rules.len() >= 20, "only {} rules loaded", rules.len());
    for r in rules {
        assert_eq!(
            r["health"], "ok",
            "rule {} does not evaluate: {}",
            r["name"], r["lastError"]
        );
    }
    let active = prom.alerts();
    assert!(
        active.is_empty(),
        "a healthy cluster must have no active (pending or firing) alert: {active:#?}"
    );
    // The series the alert is about, as Prometheus stores it: once per daemon.
    let connected = prom.query("pgwarden_replication_connected");
    assert_eq!(connected.len(), 2, "{connected:#?}");
    for s in &connected {
        assert_eq!(s["metric"]["cluster"], "demo", "{s}");
        assert_eq!(s["metric"]["node"], "pg-a", "{s}");
        assert_eq!(s["metric"]["standby"], "pg-b", "{s}");
        assert_eq!(s["value"][1], "1", "{s}");
    }
    assert!(
        webhook.notifications().is_empty(),
        "notifications before the fault: {:#?}",
        webhook.notifications()
    );

    // ---- the standby stops: the alert fires after its `for:`.
    env.cluster.stop_node(1, StopMode::Fast).unwrap();
    let stopped = Instant::now();
    let firing = poll_until(
        ALERT_FOR + Duration::from_secs(60),
        "PgwardenStandbyNotStreaming to fire in Prometheus",
        || {
            let alerts = prom.alerts();
            let mine: Vec<Value> = alerts
                .into_iter()
                .filter(|a| a["labels"]["alertname"] == ALERT)
                .collect();
            mine.iter().any(|a| a["state"] == "firing").then_some(mine)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nactive alerts: {:#?}", prom.alerts()));
    assert!(
        stopped.elapsed() >= ALERT_FOR,
        "fired {:?} after the stop, before its `for:` of {ALERT_FOR:?}",
        stopped.elapsed()
    );
    // One alert, not one per daemon: the rule aggregates `instance` away.
    assert_eq!(firing.len(), 1, "{firing:#?}");
    let alert = &firing[0];
    let labels = &alert["labels"];
    assert_eq!(labels["severity"], "critical", "{alert}");
    assert_eq!(labels["cluster"], "demo", "{alert}");
    assert_eq!(labels["node"], "pg-b", "the standby: {alert}");
    assert_eq!(labels["primary"], "pg-a", "{alert}");
    assert_eq!(labels["job"], "pgwarden", "{alert}");
    assert!(labels.get("instance").is_none(), "{alert}");
    check_annotations(&alert["annotations"]);

    let note = webhook.wait_for(Duration::from_secs(30), "firing");
    assert_eq!(note["receiver"], "test", "{note}");
    assert_eq!(note["groupLabels"]["alertname"], ALERT, "{note}");
    assert_eq!(note["groupLabels"]["cluster"], "demo", "{note}");
    let delivered = &note["alerts"][0];
    assert_eq!(delivered["status"], "firing", "{note}");
    assert_eq!(delivered["labels"]["node"], "pg-b", "{note}");
    assert_eq!(delivered["labels"]["severity"], "critical", "{note}");
    check_annotations(&delivered["annotations"]);

    // ---- the standby comes back: resolved in Prometheus and Alertmanager.
    env.cluster.start_node(1).unwrap();
    poll_until(
        Duration::from_secs(60),
        "PgwardenStandbyNotStreaming to resolve in Prometheus",
        || {
            let alerts = prom.alerts();
            (!alerts.iter().any(|a| a["labels"]["alertname"] == ALERT)).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nactive alerts: {:#?}", prom.alerts()));
    let note = webhook.wait_for(Duration::from_secs(30), "resolved");
    let delivered = &note["alerts"][0];
    assert_eq!(delivered["status"], "resolved", "{note}");
    assert_eq!(delivered["labels"]["node"], "pg-b", "{note}");
    assert_ne!(delivered["endsAt"], "0001-01-01T00:00:00Z", "{note}");
}

/// The annotations of the alert, as Prometheus rendered their templates.
fn check_annotations(annotations: &Value) {
    assert_eq!(
        annotations["summary"], "standby pg-b does not stream from the primary pg-a",
        "{annotations}"
    );
    assert!(
        annotations["description"]
            .as_str()
            .is_some_and(|d| d.contains("pg-b") && !d.contains("{{")),
        "{annotations}"
    );
    // The base is the external label prometheus_config() sets, so the link
    // opens this checkout's runbook, at the alert's section.
    let url = annotations["runbook_url"].as_str().unwrap_or_default();
    let (file, anchor) = url
        .strip_prefix(&docs_url())
        .and_then(|rest| rest.split_once('#'))
        .unwrap_or_else(|| panic!("runbook_url {url:?} is not under {}", docs_url()));
    assert_eq!(file, "runbook.md", "{url}");
    assert_eq!(anchor, "standby-not-streaming");
    let runbook = std::fs::read_to_string(RUNBOOK).expect("docs/runbook.md");
    assert!(
        runbook.lines().any(|l| l.starts_with('#')
            && l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .replace(' ', "-")
                == anchor),
        "docs/runbook.md has no heading for #{anchor}"
    );
}

fn alertmanager_config(webhook: &str) -> String {
    format!(
        "route:\n  receiver: test\n  group_by: [alertname, cluster]\n  group_wait: 1s\n  \
         group_interval: 1s\n  repeat_interval: 1h\n\
         receivers:\n  - name: test\n    webhook_configs:\n      - url: {webhook}\n        \
         send_resolved: true\n"
    )
}

/// The `pgwarden_docs_url` external label of the test's Prometheus: this
/// checkout's docs/ directory.
fn docs_url() -> String {
    let runbook = std::fs::canonicalize(RUNBOOK).expect("docs/runbook.md");
    format!("file://{}/", runbook.parent().unwrap().display())
}

/// Like deploy/prometheus/prometheus.yml, at a 1s scrape and evaluation
/// interval, loading the shipped rules themselves, with the runbook links'
/// external label set.
fn prometheus_config(daemons: &[String], alertmanager: &str) -> String {
    let rules = std::fs::canonicalize(ALERTS).expect("deploy/prometheus/alerts.yml");
    let targets: Vec<String> = daemons.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n  \
         external_labels:\n    pgwarden_docs_url: \"{docs}\"\n\
         rule_files:\n  - {rules}\n\
         alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"{alertmanager}\"]\n\
         scrape_configs:\n  - job_name: pgwarden\n    metrics_path: /metrics\n    \
         static_configs:\n      - targets: [{targets}]\n",
        rules = rules.display(),
        docs = docs_url(),
        targets = targets.join(", ")
    )
}

/// Prometheus or Alertmanager as a child process in its own process group,
/// killed on drop; its log is printed when the test fails.
struct Service {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    url: String,
}

impl Service {
    /// Starts `command(port)` on a free port and waits for `/-/ready`. A
    /// port taken between free_port() and the bind gets another try.
    fn start(name: &'static str, dir: &Path, command: impl Fn(u16) -> Command) -> Service {
        let log = dir.join(format!("{name}.log"));
        for _attempt in 0..3 {
            let port = free_port();
            let out = std::fs::File::create(&log).unwrap();
            let child = command(port)
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
            let mut service = Service {
                name,
                child: Some(child),
                log: log.clone(),
                url: format!("http://127.0.0.1:{port}"),
            };
            let ready = poll_until(
                Duration::from_secs(30),
                &format!("{name} to answer /-/ready"),
                || {
                    let child = service.child.as_mut().unwrap();
                    if let Some(status) = child.try_wait().unwrap() {
                        return Some(Err(status));
                    }
                    let r = http("GET", &format!("{}/-/ready", service.url), None, &[]);
                    (r.status == 200).then_some(Ok(()))
                },
            );
            match ready {
                Ok(Ok(())) => return service,
                Ok(Err(_)) if service.log_text().contains("address already in use") => {
                    service.child = None;
                    continue;
                }
                Ok(Err(status)) => panic!("{name} exited with {status} (its log follows)"),
                Err(e) => panic!("{e} (its log follows)"),
            }
        }
        panic!("{name}: three free ports were taken before it could bind them");
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) of the process group this test created.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- {} log ({}), last 100 lines ---\n{}",
                self.name,
                self.log.display(),
                lines[lines.len().saturating_sub(100)..].join("\n")
            );
        }
    }
}

/// Prometheus's HTTP API.
struct Prom<'a>(&'a str);

impl Prom<'_> {
    fn raw(&self, path: &str) -> String {
        http("GET", &format!("{}{path}", self.0), None, &[]).body
    }

    /// `data` of a successful API answer.
    fn get(&self, path: &str) -> Option<Value> {
        let v: Value = serde_json::from_str(&self.raw(path)).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// Active (pending and firing) alerts.
    fn alerts(&self) -> Vec<Value> {
        let data = self.get("/api/v1/alerts").expect("/api/v1/alerts");
        data["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// An instant query's vector.
    fn query(&self, promql: &str) -> Vec<Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let data = self
            .get(&format!("/api/v1/query?query={encoded}"))
            .unwrap_or_else(|| panic!("query {promql} failed"));
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

/// The webhook receiver Alertmanager posts to: every request body, parsed.
struct Webhook {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/alerts", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        // Lives until the test process exits.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(body) = read_post(stream) {
                    sink.lock().unwrap().push(body);
                }
            }
        });
        Webhook { url, received }
    }

    fn notifications(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    /// The first notification with `status` that carries the alert.
    fn wait_for(&self, timeout: Duration, status: &str) -> Value {
        poll_until(
            timeout,
            &format!("Alertmanager to deliver a {status} {ALERT} notification"),
            || {
                self.notifications().into_iter().find(|n| {
                    n["status"] == status
                        && n["alerts"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|a| a["labels"]["alertname"] == ALERT))
                })
            },
        )
        .unwrap_or_else(|e| panic!("{e}\nreceived: {:#?}", self.notifications()))
    }
}

/// Reads one HTTP request, answers 200, and returns its JSON body (or the
/// raw text under `unparsable`).
fn read_post(mut stream: TcpStream) -> Option<Value> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    if !request_line.starts_with("POST ") {
        return None;
    }
    Some(
        serde_json::from_slice(&body).unwrap_or_else(
            |_| serde_json::json!({ "unparsable": String::from_utf8_lossy(&body) }),
        ),
    )
}
