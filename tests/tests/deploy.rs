//! The monitoring files under deploy/: Prometheus alert rules and their
//! promtool unit tests, the example Prometheus and Alertmanager configs, and
//! the Grafana dashboard. Checked with the real tools (`promtool` from the
//! Debian package `prometheus`, `amtool` from `prometheus-alertmanager`), and
//! cross-checked against the metrics the daemon exports
//! (crates/pgwarden-daemon/src/metrics.rs) and the problem codes of
//! crates/pgwarden-core/src/problem.rs.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use util::tool;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const ALERTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/alerts.yml"
);
const ALERTS_TEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/alerts_test.yml"
);
const PROMETHEUS_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/prometheus.yml"
);
const ALERTMANAGER_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/prometheus/alertmanager.yml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/grafana/dashboard.json"
);
const METRICS_RS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crates/pgwarden-daemon/src/metrics.rs"
);
const PROBLEM_RS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crates/pgwarden-core/src/problem.rs"
);
const RUNBOOK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/runbook.md");
/// Where the package installs docs/*.md (crates/pgwarden/Cargo.toml), the
/// runbook links' base unless Prometheus sets `pgwarden_docs_url`.
const INSTALLED_DOCS: &str = "/usr/share/doc/pgwarden/";
const RUNBOOK_URL: &str = "{{ with $externalLabels.pgwarden_docs_url }}{{ . }}{{ else }}file:///usr/share/doc/pgwarden/{{ end }}runbook.md#";
const PACKAGE_MANIFEST: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/pgwarden/Cargo.toml");

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn promtool() -> PathBuf {
    tool("promtool", "prometheus")
}

fn amtool() -> PathBuf {
    tool("amtool", "prometheus-alertmanager")
}

/// Runs the command in the repository root; panics with its output unless
/// it exits with 0.
fn run_ok(program: &Path, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .current_dir(ROOT)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        out.status.success(),
        "`{} {}` failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        program.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// ------------------------------------------------------------ the real tools

#[test]
fn promtool_accepts_the_alert_rules() {
    run_ok(&promtool(), &["check", "rules", ALERTS]);
}

#[test]
fn promtool_unit_tests_of_the_alert_rules_pass() {
    run_ok(&promtool(), &["test", "rules", ALERTS_TEST]);
}

#[test]
fn promtool_accepts_the_example_prometheus_config() {
    // Also loads and checks the rule files it names (alerts.yml).
    let out = run_ok(&promtool(), &["check", "config", PROMETHEUS_CONFIG]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 rule files found"),
        "prometheus.yml should load alerts.yml:\n{text}"
    );
}

#[test]
fn amtool_accepts_the_example_alertmanager_config() {
    run_ok(&amtool(), &["check-config", ALERTMANAGER_CONFIG]);
}

#[test]
fn alertmanager_pages_for_critical_and_chats_for_warnings() {
    let config = format!("--config.file={ALERTMANAGER_CONFIG}");
    for (labels, receiver) in [
        (["alertname=PgwardenNodeDown", "severity=critical"], "pager"),
        (
            ["alertname=PgwardenSlotInactive", "severity=warning"],
            "team-chat",
        ),
    ] {
        let verify = format!("--verify.receivers={receiver}");
        let mut args = vec!["config", "routes", "test", config.as_str(), verify.as_str()];
        args.extend(labels);
        run_ok(&amtool(), &args);
    }
}

/// Every query of the dashboard parses: promtool checks them as recording
/// rules, with Grafana's variables replaced by plausible values.
#[test]
fn promtool_parses_every_dashboard_query() {
    let dashboard = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in dashboard_exprs(&dashboard).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "6h")
            .replace("$cluster", "inmanta");
        assert!(
            !expr.contains('$'),
            "panel {title:?}: unknown Grafana variable in {expr}"
        );
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: '{}'\n",
            expr.replace('\'', "''")
        ));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("dashboard_rules.yml");
    std::fs::write(&file, rules).expect("write the rules file");
    run_ok(
        &promtool(),
        &["check", "rules", file.to_str().expect("utf-8 temp path")],
    );
}

// --------------------------------------------------- cross-checks by scanning

/// The metric names the daemon exports, read from metrics.rs: every
/// `opts("name", ...)` and `HistogramOpts::new("name", ...)`, prefixed with
/// the registry's namespace `pgwarden_`; a histogram also exports `_bucket`,
/// `_count` and `_sum`.
fn exported_metrics() -> BTreeSet<String> {
    let src = read(METRICS_RS);
    let mut names = BTreeSet::new();
    for (marker, histogram) in [("opts(", false), ("HistogramOpts::new(", true)] {
        let mut rest = src.as_str();
        while let Some(at) = rest.find(marker) {
            rest = &rest[at + marker.len()..];
            let arg = rest.trim_start();
            // `fn opts(name: &str, ...)` and `Opts::new(name, ...)`: no literal.
            let Some(arg) = arg.strip_prefix('"') else {
                continue;
            };
            let name = &arg[..arg.find('"').expect("closing quote of a metric name")];
            let full = format!("pgwarden_{name}");
            if histogram {
                for suffix in ["_bucket", "_count", "_sum"] {
                    names.insert(format!("{full}{suffix}"));
                }
            }
            names.insert(full);
        }
    }
    for expected in [
        "pgwarden_node_up",
        "pgwarden_problem",
        "pgwarden_build_info",
        "pgwarden_poll_duration_seconds_bucket",
    ] {
        assert!(
            names.contains(expected),
            "the scan of {METRICS_RS} did not find {expected} (found {names:?}); \
             if metrics.rs changed shape, update exported_metrics() in this test"
        );
    }
    names
}

/// Every `pgwarden_...` name in `text` (letters, digits and `_`, not preceded
/// by a name character).
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("pgwarden_") {
        if text[..at].chars().next_back().is_some_and(is_name) {
            continue;
        }
        let end = text[at..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| at + n);
        found.insert(text[at..end].to_owned());
    }
    // The external label that moves the runbook links (deploy/README.md).
    found.remove("pgwarden_docs_url");
    found
}

fn assert_only_exported(what: &str, names: &BTreeSet<String>) {
    let exported = exported_metrics();
    let unknown: Vec<_> = names.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "{what} names metrics that pgwarden does not export: {unknown:?}\nexported: {exported:?}"
    );
}

/// The problem codes of problem.rs (`ProblemCode::X => "code"`).
fn problem_codes() -> BTreeSet<String> {
    let codes: BTreeSet<String> = read(PROBLEM_RS)
        .lines()
        .filter(|l| l.contains("ProblemCode::") && l.contains("=> \""))
        .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
        .collect();
    assert!(
        codes.contains("node_down") && codes.contains("operation_failed"),
        "the scan of {PROBLEM_RS} found no problem codes ({codes:?}): update problem_codes()"
    );
    codes
}

/// One rule of alerts.yml: its name and the lines of its block.
struct Rule {
    name: String,
    text: String,
}

fn alert_rules() -> Vec<Rule> {
    let src = read(ALERTS);
    let mut rules: Vec<Rule> = Vec::new();
    for line in src.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert:") {
            rules.push(Rule {
                name: name.trim().to_owned(),
                text: String::new(),
            });
        } else if let Some(rule) = rules.last_mut() {
            if !line.trim_start().starts_with('#') {
                rule.text.push_str(line);
                rule.text.push('\n');
            }
        }
    }
    assert!(
        rules.len() >= 20,
        "only {} alerts found in {ALERTS}",
        rules.len()
    );
    rules
}

#[test]
fn every_alert_has_a_firing_unit_test() {
    let tests = read(ALERTS_TEST);
    let lines: Vec<&str> = tests.lines().collect();
    // alertname -> (tests, tests that expect it to fire)
    let mut seen: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(at) = line.find("alertname:") else {
            continue;
        };
        let name: String = line[at + "alertname:".len()..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `exp_alerts: []` (on this line or the next ones) expects none.
        let exp = lines[i..]
            .iter()
            .find(|l| l.contains("exp_alerts"))
            .expect("exp_alerts after alertname");
        let fires = !exp
            .trim_end()
            .trim_end_matches('}')
            .trim_end()
            .ends_with("[]");
        let entry = seen.entry(name).or_default();
        entry.0 += 1;
        entry.1 += usize::from(fires);
    }
    let alerts: BTreeSet<String> = alert_rules().into_iter().map(|r| r.name).collect();
    let untested: Vec<_> = alerts.iter().filter(|a| !seen.contains_key(*a)).collect();
    assert!(
        untested.is_empty(),
        "alerts without a test in {ALERTS_TEST}: {untested:?}"
    );
    let never_fire: Vec<_> = alerts.iter().filter(|a| seen[*a].1 == 0).collect();
    assert!(
        never_fire.is_empty(),
        "alerts that no test in {ALERTS_TEST} expects to fire: {never_fire:?}"
    );
    let unknown: Vec<_> = seen.keys().filter(|n| !alerts.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "tests of alerts that alerts.yml does not define: {unknown:?}"
    );
}

#[test]
fn every_alert_has_severity_summary_description_and_runbook() {
    for rule in alert_rules() {
        let name = &rule.name;
        assert!(
            name.starts_with("Pgwarden"),
            "{name}: alert names start with Pgwarden"
        );
        for key in [
            "expr:",
            "severity:",
            "summary:",
            "description:",
            "runbook_url:",
        ] {
            assert!(rule.text.contains(key), "alert {name} has no {key}");
        }
        let severity = rule
            .text
            .lines()
            .find_map(|l| l.trim().strip_prefix("severity:"))
            .expect("severity")
            .trim()
            .trim_matches('"');
        assert!(
            matches!(severity, "critical" | "warning" | "{{ $labels.severity }}"),
            "alert {name}: severity {severity:?} is not critical or warning"
        );
        assert!(
            rule.text.contains(&format!("runbook_url: \"{RUNBOOK_URL}")),
            "alert {name}: runbook_url must start with {RUNBOOK_URL}"
        );
    }
}

#[test]
fn alerts_and_their_tests_name_only_exported_metrics() {
    assert_only_exported("alerts.yml", &metric_names_in(&read(ALERTS)));
    assert_only_exported("alerts_test.yml", &metric_names_in(&read(ALERTS_TEST)));
}

/// The codes alerts.yml names in `code="..."` and in the catch-all's
/// `code!~"a|b|..."` exist: a typo would silence an alert, or make the
/// catch-all repeat one.
#[test]
fn alerts_name_only_real_problem_codes() {
    let codes = problem_codes();
    let src = read(ALERTS);
    let mut named = BTreeSet::new();
    for marker in ["code=\"", "code!~\""] {
        for (at, _) in src.match_indices(marker) {
            let rest = &src[at + marker.len()..];
            let value = &rest[..rest.find('"').expect("closing quote")];
            named.extend(value.split('|').map(str::to_owned));
        }
    }
    assert!(named.len() >= 10, "found only {named:?} in {ALERTS}");
    let unknown: Vec<_> = named.difference(&codes).collect();
    assert!(
        unknown.is_empty(),
        "alerts.yml names problem codes that problem.rs does not have: {unknown:?} (codes: {codes:?})"
    );
}

/// The anchors the runbook URLs point to. PgwardenProblem's anchor is the
/// code with `-` for `_`, for every code its `code!~` list leaves to it.
fn runbook_anchors() -> BTreeSet<String> {
    let src = read(ALERTS);
    let mut anchors = BTreeSet::new();
    for (at, _) in src.match_indices(RUNBOOK_URL) {
        let rest = &src[at + RUNBOOK_URL.len()..];
        let anchor = &rest[..rest.find('"').expect("closing quote of runbook_url")];
        if anchor.contains("{{") {
            let rule = alert_rules()
                .into_iter()
                .find(|r| r.text.contains(anchor))
                .expect("the rule of a templated anchor");
            let excluded: BTreeSet<&str> = rule
                .text
                .split("code!~\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .expect("a templated runbook anchor belongs to the code!~ catch-all")
                .split('|')
                .collect();
            for code in problem_codes() {
                if !excluded.contains(code.as_str()) {
                    anchors.insert(code.replace('_', "-"));
                }
            }
        } else {
            anchors.insert(anchor.to_owned());
        }
    }
    anchors
}

/// The default base of the runbook links is a real place: the package
/// installs docs/runbook.md there (flat, as docs/*.md).
#[test]
fn runbook_links_default_to_the_installed_runbook() {
    assert!(RUNBOOK_URL.contains(&format!("file://{INSTALLED_DOCS}{{{{ end }}}}runbook.md#")));
    let manifest = read(PACKAGE_MANIFEST);
    assert!(
        manifest.contains(&format!(
            r#"["../../docs/*.md", "{}", "644"]"#,
            INSTALLED_DOCS.trim_start_matches('/')
        )),
        "the package no longer installs docs/*.md into {INSTALLED_DOCS}"
    );
    assert!(Path::new(RUNBOOK).is_file());
}

/// Every anchor the alerts link to must exist in docs/runbook.md: a heading
/// (GitHub's slug: lower case, spaces to `-`, punctuation dropped) or an
/// explicit `<a id="...">` / `<a name="...">`.
#[test]
fn runbook_links_of_the_alerts_resolve() {
    let anchors = runbook_anchors();
    assert!(
        anchors.contains("standby-not-streaming"),
        "anchors: {anchors:?}"
    );
    // It exists (install.sh ships it): a missing runbook is a failure, not
    // a reason to check nothing.
    let runbook = std::fs::read_to_string(RUNBOOK)
        .unwrap_or_else(|e| panic!("{RUNBOOK}: {e}; the alerts link to: {anchors:?}"));
    let mut present = BTreeSet::new();
    for line in runbook.lines() {
        if let Some(heading) = line.strip_prefix('#') {
            let slug: String = heading
                .trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect();
            present.insert(slug);
        }
        for marker in ["id=\"", "name=\""] {
            for (at, _) in line.match_indices(marker) {
                let rest = &line[at + marker.len()..];
                if let Some(end) = rest.find('"') {
                    present.insert(rest[..end].to_owned());
                }
            }
        }
    }
    let missing: Vec<_> = anchors.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "docs/runbook.md has no section for these anchors of alerts.yml: {missing:?}"
    );
}

// ------------------------------------------------------------------ Grafana

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not valid JSON: {e}"))
}

fn panels(dashboard: &serde_json::Value) -> &Vec<serde_json::Value> {
    dashboard["panels"]
        .as_array()
        .expect("dashboard.panels is an array")
}

/// (panel title, expr) of every target of every panel.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((title.clone(), expr.to_owned()));
            }
        }
    }
    out
}

#[test]
fn dashboard_panels_have_what_grafana_needs() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(
        d["title"].as_str().is_some_and(|t| !t.is_empty()),
        "dashboard title"
    );
    assert!(
        d["uid"].as_str().is_some_and(|t| !t.is_empty()),
        "dashboard uid"
    );

    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable `{name}`"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let cluster = var("cluster");
    assert_eq!(cluster["type"], "query");
    assert_eq!(
        cluster["definition"],
        "label_values(pgwarden_build_info, cluster)"
    );
    assert_eq!(
        cluster["query"]["query"],
        "label_values(pgwarden_build_info, cluster)"
    );

    let panels = panels(&d);
    assert!(panels.len() >= 15, "only {} panels", panels.len());
    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title:?}: no numeric id"));
        assert!(ids.insert(id), "panel {title:?}: id {id} is used twice");
        assert!(
            p["type"].as_str().is_some_and(|t| !t.is_empty()),
            "panel {title:?}: no type"
        );
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {title:?}: datasource must be the `datasource` variable"
        );
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            g[k].as_u64()
                .unwrap_or_else(|| panic!("panel {title:?}: gridPos.{k} missing"))
        });
        assert!(
            w > 0 && h > 0 && x + w <= 24,
            "panel {title:?}: gridPos {g}"
        );
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.to_owned()) {
                    panic!("panels {other:?} and {title:?} overlap at x={cx} y={cy}");
                }
            }
        }
        let targets = p["targets"]
            .as_array()
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("panel {title:?}: no targets"));
        let mut refs = BTreeSet::new();
        for t in targets {
            let r = t["refId"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a target without refId"));
            assert!(refs.insert(r), "panel {title:?}: refId {r} twice");
            let expr = t["expr"]
                .as_str()
                .filter(|e| !e.trim().is_empty())
                .unwrap_or_else(|| panic!("panel {title:?}: target {r} has no expr"));
            assert!(
                expr.contains("cluster=\"$cluster\""),
                "panel {title:?}: {expr} does not filter on the `cluster` variable"
            );
        }
    }
}

#[test]
fn dashboard_queries_name_only_exported_metrics() {
    let d = dashboard();
    let mut names = BTreeSet::new();
    for (_, expr) in dashboard_exprs(&d) {
        names.extend(metric_names_in(&expr));
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["definition"].as_str() {
            names.extend(metric_names_in(q));
        }
    }
    assert!(names.len() >= 20, "the dashboard shows only {names:?}");
    assert_only_exported("dashboard.json", &names);
}
