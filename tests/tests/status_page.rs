//! The status page (`GET /`) in a real browser: headless Chromium (Debian's
//! `chromium` package) loads it from a daemon of a real cluster, and the
//! tests check the text a person sees: both nodes with their roles, the
//! timeline, the sync state, the health banner, the problems and the audit
//! log. Each test keeps a screenshot under `target/test-artifacts/`.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgwarden_testkit::{poll_until, StopMode};
use util::Env;

const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one Chromium run may take before it is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// Where screenshots are kept: `<workspace>/target/test-artifacts`.
fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium on `url` with `args`, in a fresh profile, killed
/// after [`CHROMIUM_TIMEOUT`]; returns its stdout.
fn chromium(url: &str, args: &[&str]) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} not found: these tests need headless Chromium (`apt-get install chromium`)"
    );
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let started = Instant::now();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
    let waited = poll_until(CHROMIUM_TIMEOUT, "chromium to exit", || {
        child.try_wait().unwrap()
    });
    let stderr = || std::fs::read_to_string(&err_path).unwrap_or_default();
    let status = match waited {
        Ok(s) => s,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{e}: chromium was killed\n--- chromium stderr ---\n{}",
                stderr()
            );
        }
    };
    assert!(
        status.success(),
        "chromium {args:?} {url} failed after {:?} ({status})\n--- stderr ---\n{}",
        started.elapsed(),
        stderr()
    );
    std::fs::read_to_string(&out_path).unwrap()
}

/// The DOM of `url` after Chromium rendered it.
fn dump_dom(url: &str) -> String {
    chromium(url, &["--dump-dom"])
}

/// A PNG screenshot of `url` at 1280x900, kept as `artifacts/<name>`.
fn screenshot(url: &str, name: &str) -> PathBuf {
    let path = artifacts_dir().join(name);
    let _ = std::fs::remove_file(&path);
    chromium(
        url,
        &[
            &format!("--screenshot={}", path.display()),
            "--window-size=1280,900",
            "--hide-scrollbars",
        ],
    );
    let png = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("chromium wrote no screenshot at {}: {e}", path.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    assert!(
        png.len() > 10 * 1024,
        "{} is only {} bytes: a blank page?",
        path.display(),
        png.len()
    );
    path
}

/// The outer HTML of the element with `id`, up to the first closing tag of
/// its kind (the page has no nested elements of the same kind in these).
fn element<'d>(dom: &'d str, id: &str) -> &'d str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} on the page:\n{dom}"));
    let open = dom[..at].rfind('<').unwrap();
    let tag: String = dom[open + 1..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let close = format!("</{tag}>");
    let end = dom[at..]
        .find(&close)
        .map(|e| at + e + close.len())
        .unwrap_or(dom.len());
    &dom[open..end]
}

/// The first element with `class` (one of its classes) inside `html`.
fn by_class<'d>(html: &'d str, class: &str) -> &'d str {
    let at = html
        .match_indices("class=\"")
        .find(|(i, _)| {
            let rest = &html[i + 7..];
            let classes = &rest[..rest.find('"').unwrap()];
            classes.split_whitespace().any(|c| c == class)
        })
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no .{class} in {html}"));
    let open = html[..at].rfind('<').unwrap();
    let tag: String = html[open + 1..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let close = format!("</{tag}>");
    let end = html[at..]
        .find(&close)
        .map(|e| at + e + close.len())
        .unwrap_or(html.len());
    &html[open..end]
}

/// What a person reads: tags removed, entities decoded, whitespace collapsed.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The text of cell `.class` in the row of `node`.
fn cell(dom: &str, node: &str, class: &str) -> String {
    text(by_class(element(dom, &format!("node-{node}")), class))
}

fn looks_like_lsn(s: &str) -> bool {
    s.split_once('/').is_some_and(|(hi, lo)| {
        !hi.is_empty()
            && !lo.is_empty()
            && hi.chars().chain(lo.chars()).all(|c| c.is_ascii_hexdigit())
    })
}

#[test]
fn the_status_page_shows_a_healthy_cluster_in_a_browser() {
    let env = Env::start();
    for i in 0..2 {
        env.wait_health(i, "a healthy cluster", env.within_polls(3), |c, h| {
            c == 200 && h["healthy"] == true
        });
    }
    let d = &env.daemons[0];
    let token = env.token();
    // An audited request (cheap: sync is already on).
    let r = d.put("/v1/sync", r#"{"mode": "sync"}"#, &token);
    assert_eq!(r.status, 200, "{}", r.body);

    // The raw answer: HTML, not cached, loading nothing from elsewhere.
    let raw = d.get("/");
    assert_eq!(raw.status, 200, "{}", raw.body);
    let headers = raw.headers.to_ascii_lowercase();
    assert!(
        headers.contains("content-type: text/html; charset=utf-8"),
        "{headers}"
    );
    assert!(
        headers.contains("content-security-policy: default-src 'none'"),
        "{headers}"
    );
    assert!(raw
        .body
        .contains("<meta http-equiv=\"refresh\" content=\"2\">"));
    assert_eq!(d.get("/?x=1").status, 200);
    let url = format!("{}/", d.url);
    assert_eq!(util::http("HEAD", &url, None, &[]).status, 200);
    assert_eq!(util::http("POST", &url, Some("{}"), &[]).status, 405);

    // In the browser, once the page shows the synchronous standby (a poll
    // right after the sync request may still be in flight).
    let dom = poll_until(env.within_polls(4), "the page to show pg-b as sync", || {
        let dom = dump_dom(&url);
        (cell(&dom, "pg-b", "sync") == "sync"
            && text(element(&dom, "banner")).starts_with("Healthy"))
        .then_some(dom)
    })
    .unwrap_or_else(|e| panic!("{e}\n--- page ---\n{}", d.get("/").body));

    let page = text(&dom);
    assert!(page.contains("Cluster demo"), "{page}");
    assert!(text(element(&dom, "local-node")) == "pg-a", "{page}");
    assert_eq!(text(element(&dom, "banner")), "Healthy · primary pg-a");

    assert!(cell(&dom, "pg-a", "name").contains("pg-a"));
    assert_eq!(cell(&dom, "pg-a", "role"), "primary");
    assert_eq!(cell(&dom, "pg-a", "state"), "up");
    assert_eq!(cell(&dom, "pg-a", "timeline"), "1");
    let current = cell(&dom, "pg-a", "lsn-current");
    assert!(looks_like_lsn(&current), "current LSN of pg-a: {current}");
    let slot = cell(&dom, "pg-a", "slot");
    assert!(
        slot.starts_with("replication active"),
        "slot on pg-a: {slot}"
    );
    assert!(cell(&dom, "pg-a", "sync").contains("standby names"));

    assert!(cell(&dom, "pg-b", "name").contains("pg-b"));
    assert_eq!(cell(&dom, "pg-b", "role"), "standby");
    assert_eq!(cell(&dom, "pg-b", "state"), "up receiver streaming");
    assert_eq!(cell(&dom, "pg-b", "timeline"), "1");
    for kind in ["lsn-receive", "lsn-replay"] {
        let lsn = cell(&dom, "pg-b", kind);
        assert!(looks_like_lsn(&lsn), "{kind} of pg-b: {lsn}");
    }
    let lag = cell(&dom, "pg-b", "lag-bytes");
    assert!(lag.ends_with('B'), "replay lag of pg-b in bytes: {lag}");
    assert_eq!(cell(&dom, "pg-b", "sync"), "sync");

    let problems = text(element(&dom, "problems"));
    assert!(
        !problems.contains("critical"),
        "a healthy cluster with a critical problem: {problems}"
    );
    assert_eq!(
        text(element(&dom, "operation")),
        "No operation has run yet."
    );

    let audit = element(&dom, "audit");
    let newest = text(by_class(audit, "audit-entry"));
    assert!(newest.contains("PUT /v1/sync"), "{newest}");
    assert!(newest.contains(r#"{"mode":"sync"}"#), "{newest}");
    assert!(
        newest.contains("token:") && newest.contains(" 200 "),
        "{newest}"
    );

    let creds = env.cluster.credentials();
    for secret in [
        token.as_str(),
        creds.monitor_password.as_str(),
        creds.replication_password.as_str(),
        creds.app_password.as_str(),
    ] {
        assert!(!dom.contains(secret), "a secret is on the status page");
    }

    let png = screenshot(&url, "status-page.png");
    eprintln!("screenshot: {}", png.display());
}

#[test]
fn the_status_page_shows_a_stopped_standby_as_down() {
    let env = Env::start();
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    env.cluster.stop_node(1, StopMode::Fast).unwrap();

    // The page itself (plain HTTP) until the daemon beside the primary calls
    // pg-b down; then what the browser shows.
    let d = &env.daemons[0];
    let threshold = env.layout.failure_threshold;
    poll_until(
        env.within_polls(threshold + 3),
        "the page to show pg-b down",
        || {
            let html = d.get("/").body;
            let row = text(element(&html, "node-pg-b"));
            let problems = text(element(&html, "problems"));
            (row.contains("down")
                && (problems.contains("node_down") || problems.contains("standby_not_streaming")))
            .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n--- page ---\n{}", d.get("/").body));

    let url = format!("{}/", d.url);
    let dom = dump_dom(&url);
    let banner = text(element(&dom, "banner"));
    assert!(banner.starts_with("Unhealthy"), "{banner}");
    assert_eq!(cell(&dom, "pg-a", "role"), "primary");
    assert_eq!(
        cell(&dom, "pg-b", "role"),
        "unknown",
        "a down node has no role"
    );
    let state = cell(&dom, "pg-b", "state");
    assert!(state.starts_with("down"), "{state}");
    assert!(state.contains("failed polls"), "why it is down: {state}");
    assert_eq!(cell(&dom, "pg-b", "timeline"), "—");
    let problems = text(element(&dom, "problems"));
    assert!(problems.contains("critical"), "{problems}");
    assert!(problems.contains("node_down [pg-b]"), "{problems}");
    assert!(!problems.contains("No problems"), "{problems}");

    let png = screenshot(&url, "status-page-standby-down.png");
    eprintln!("screenshot: {}", png.display());
}
