//! The status page served at `GET /`: one self-contained HTML document for a
//! person at a browser (both nodes, the problems, the current or last
//! operation, the latest audit entries), refreshing itself.
//!
//! [`render`] is a pure function of what the handler gathered, so the page is
//! unit-tested without a server. It is written with plain `format!`: no
//! template engine, no script, no external asset (the handler also sends a
//! Content-Security-Policy that forbids loading any). Every value that comes
//! from data goes through [`escape`]; nothing secret is shown (no conninfo,
//! no settings beyond `synchronous_standby_names`; audit entries carry only a
//! hash of the caller's token).
//!
//! Elements a test or a scraper may look for have stable ids and classes:
//! `#banner` (`.healthy` / `.unhealthy`), `#node-<name>` rows with `.role`,
//! `.state`, `.timeline`, `.lsn-current`, `.lsn-receive`, `.lsn-replay`,
//! `.lag-bytes`, `.lag-seconds` (when known), `.slot`, `.sync` cells; `#problems` with
//! `.problem` items (`.code`, `.severity`, `.message`); `#operation` with
//! `.step` rows; `#audit` with `.audit-entry` rows.

use std::fmt::Write as _;
use std::time::Duration;

use pgwarden_core::health::{human_bytes, Severity};
use pgwarden_core::operation::Operation;
use pgwarden_core::view::{ClusterView, NodeView, Role};
use pgwarden_core::Config;
use serde::Serialize;

use crate::audit::AuditEntry;

/// How many audit entries the page shows, newest first.
pub(crate) const AUDIT_ENTRIES: usize = 10;

/// Everything the page shows; gathered by the handler, rendered by [`render`].
pub(crate) struct Page<'a> {
    pub config: &'a Config,
    pub view: &'a ClusterView,
    /// The current operation, or else the newest of the journal.
    pub operation: Option<&'a Operation>,
    /// The latest audit entries, oldest first (as [`crate::audit::AuditLog::tail`]
    /// returns them), or why they could not be read.
    pub audit: Result<&'a [AuditEntry], String>,
    /// RFC 3339 time of rendering.
    pub generated_at: &'a str,
}

/// `&`, `<`, `>`, `"` and `'` as character references: safe in element
/// content and in quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds between two automatic reloads: the poll interval rounded up, but
/// at least 2 s. The data changes only once per poll, so reloading faster
/// shows nothing new; and each reload reads the audit log from disk, which a
/// wall screen left open should not do several times a second.
pub(crate) fn refresh_seconds(poll_interval: Duration) -> u64 {
    let secs = poll_interval.as_secs() + u64::from(poll_interval.subsec_nanos() > 0);
    secs.max(2)
}

/// An id fragment from a name: ASCII letters, digits, `-` and `_` kept, any
/// other character as `_` (node names are plain in practice; this keeps the
/// attribute valid whatever they are).
fn id_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The snake_case name serde gives an enum value (`switch_application`).
fn snake(v: impl Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

const DASH: &str = "<span class=\"none\">&#8212;</span>";

fn or_dash(v: Option<String>) -> String {
    v.map(|s| escape(&s)).unwrap_or_else(|| DASH.to_owned())
}

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2430; background: #f4f6f9; margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 24px 40px; }
header { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; }
h1 { font-size: 22px; margin: 0; }
h2 { font-size: 16px; margin: 26px 0 8px; }
.meta { color: #5b6575; font-size: 13px; }
.banner { margin: 14px 0 4px; padding: 10px 14px; border-radius: 6px; font-weight: 600; font-size: 15px; }
.banner.healthy { background: #e3f5e8; color: #17602f; border: 1px solid #b4e0c0; }
.banner.unhealthy { background: #fdeaea; color: #8f1d1d; border: 1px solid #f2b8b8; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid #dde2ea; border-radius: 6px; }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid #e7ebf0; vertical-align: top; }
th { background: #eef1f5; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: #4a5464; }
tr:last-child td { border-bottom: none; }
td.mono, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 13px; }
.small { font-size: 12px; color: #5b6575; }
.none { color: #9aa3b0; }
.pill { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; background: #e8ebf0; color: #3b4452; }
.pill.primary { background: #dbe8ff; color: #1c4fa8; }
.pill.standby { background: #e9e1fb; color: #5b2ca0; }
.pill.replica { background: #e3f1f8; color: #1f5f7a; }
.pill.up, .pill.succeeded, .pill.sync { background: #e3f5e8; color: #17602f; }
.pill.down, .pill.failed, .pill.critical, .pill.interrupted { background: #fdeaea; color: #8f1d1d; }
.pill.unreachable, .pill.warning, .pill.running, .pill.aborted, .pill.async, .pill.potential { background: #fff3d6; color: #7a5300; }
.pill.skipped, .pill.pending { background: #eef1f5; color: #5b6575; }
ul.problems { list-style: none; margin: 0; padding: 0; background: #fff; border: 1px solid #dde2ea; border-radius: 6px; }
ul.problems li { padding: 8px 12px; border-bottom: 1px solid #e7ebf0; }
ul.problems li:last-child { border-bottom: none; }
.code { font-family: ui-monospace, Menlo, Consolas, monospace; font-weight: 600; margin: 0 6px; }
.empty { color: #5b6575; background: #fff; border: 1px solid #dde2ea; border-radius: 6px; padding: 10px 14px; margin: 0; }
.opsummary { margin: 0 0 8px; }
"#;

/// The whole page.
pub(crate) fn render(p: &Page<'_>) -> String {
    let v = p.view;
    let mut h = String::with_capacity(16 * 1024);
    let title = format!("pgwarden: {}", escape(&v.cluster));
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{refresh}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        refresh = refresh_seconds(p.config.poll.interval),
    );
    let _ = writeln!(
        h,
        "<header><h1 id=\"cluster\">Cluster {cluster}</h1>\
         <span class=\"meta\">seen from <strong id=\"local-node\">{local}</strong> \
         &middot; generated <span id=\"generated-at\">{at}</span> \
         &middot; reloads every {refresh} s</span></header>",
        cluster = escape(&v.cluster),
        local = escape(&p.config.local_node),
        at = escape(p.generated_at),
        refresh = refresh_seconds(p.config.poll.interval),
    );
    banner(&mut h, v);
    nodes(&mut h, p);
    problems(&mut h, v);
    operation(&mut h, p.operation);
    audit(&mut h, &p.audit);
    h.push_str(
        "<p class=\"small\">The same data as JSON: <a href=\"/v1/status\">/v1/status</a>, \
         <a href=\"/health\">/health</a>, <a href=\"/v1/operations\">/v1/operations</a>, \
         <a href=\"/v1/audit\">/v1/audit</a>, <a href=\"/metrics\">/metrics</a>.</p>\n",
    );
    h.push_str("</main>\n</body>\n</html>\n");
    h
}

fn banner(h: &mut String, v: &ClusterView) {
    let primary = match &v.primary {
        Some(p) => format!("primary {}", escape(p)),
        None => "no single primary".to_owned(),
    };
    if v.healthy {
        let _ = writeln!(
            h,
            "<div id=\"banner\" class=\"banner healthy\">Healthy &middot; {primary}</div>"
        );
    } else {
        let critical = v
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Critical)
            .count();
        let s = if critical == 1 { "" } else { "s" };
        let _ = writeln!(
            h,
            "<div id=\"banner\" class=\"banner unhealthy\">Unhealthy: {critical} critical problem{s} &middot; {primary}</div>"
        );
    }
}

fn nodes(h: &mut String, p: &Page<'_>) {
    h.push_str(
        "<h2>Nodes</h2>\n<table id=\"nodes\">\n<thead><tr><th>Node</th><th>Role</th><th>State</th>\
         <th>Sessions</th><th>TL</th><th>Current LSN</th><th>Receive LSN</th><th>Replay LSN</th>\
         <th>Replay lag</th><th>Slot</th><th>Sync</th></tr></thead>\n<tbody>\n",
    );
    for n in &p.view.nodes {
        node_row(h, p, n);
    }
    h.push_str("</tbody>\n</table>\n");
}

fn node_row(h: &mut String, p: &Page<'_>, n: &NodeView) {
    let snap = n.snapshot.as_ref();
    let local = if n.name == p.config.local_node {
        " <span class=\"small\">(local)</span>"
    } else {
        ""
    };
    let name = format!(
        "<strong class=\"name\">{}</strong>{local}<br><span class=\"small mono\">{}:{}</span>",
        escape(&n.name),
        escape(&n.host),
        n.port
    );
    let role = n.role.as_str();
    let (state_class, state_text) = if n.down {
        ("down", "down")
    } else if n.reachable {
        ("up", "up")
    } else if snap.is_none() {
        // Never answered yet, and fewer failures than the threshold.
        ("unreachable", "unknown")
    } else {
        ("unreachable", "unreachable")
    };
    let mut state = format!("<span class=\"pill {state_class}\">{state_text}</span>");
    if let Some(w) = snap.and_then(|s| s.wal_receiver.as_ref()) {
        let _ = write!(
            state,
            "<br><span class=\"small receiver\">receiver {}</span>",
            escape(&w.status)
        );
    }
    if !n.reachable {
        if let Some(e) = &n.last_error {
            let _ = write!(
                state,
                "<br><span class=\"small last-error\">{} failed poll{}: {}</span>",
                n.consecutive_failures,
                if n.consecutive_failures == 1 { "" } else { "s" },
                escape(e)
            );
        }
    }
    // Client sessions, as the Password Manager Pro HA dashboard counts them
    // per server (pgwarden's own monitoring session included).
    let sessions = or_dash(snap.map(|s| s.sessions_by_role.values().sum::<u32>().to_string()));
    let timeline = or_dash(snap.map(|s| s.timeline.to_string()));
    let lsn = |l: Option<pgwarden_core::snapshot::Lsn>| or_dash(l.map(|l| l.to_string()));
    let current = lsn(snap.and_then(|s| s.current_lsn));
    let receive = lsn(snap.and_then(|s| s.receive_lsn));
    let replay = lsn(snap.and_then(|s| s.replay_lsn));

    // What the primary's pg_stat_replication says about this node.
    let link = if n.role == Role::Primary {
        None
    } else {
        p.view.link_to(&n.name)
    };
    let lag_bytes = or_dash(link.map(|l| human_bytes(l.lag_bytes.replay)));
    // The primary's view of the replay lag, else the standby's own delay.
    let lag_seconds = link
        .and_then(|l| l.row.replay_lag_seconds)
        .or_else(|| snap.and_then(|s| s.replay_delay_seconds))
        .map(|s| format!("<br><span class=\"lag-seconds small\">{s:.3} s</span>"))
        .unwrap_or_default();
    let sync = match (n.role, link) {
        (_, Some(l)) => {
            let state = l.row.sync_state.as_deref().unwrap_or("unknown");
            format!(
                "<span class=\"pill {cls}\">{}</span>",
                escape(state),
                cls = id_part(state)
            )
        }
        (Role::Primary, None) => {
            let names = snap
                .map(|s| s.settings.synchronous_standby_names.as_str())
                .unwrap_or("");
            if names.is_empty() {
                "<span class=\"small\">standby names unset</span>".to_owned()
            } else {
                format!(
                    "<span class=\"small\">standby names <span class=\"mono\">{}</span></span>",
                    escape(names)
                )
            }
        }
        (Role::Standby | Role::Replica, None) => {
            "<span class=\"pill down\">not streaming</span>".to_owned()
        }
        (Role::Unknown, None) => DASH.to_owned(),
    };
    let slots: Vec<String> = snap
        .map(|s| {
            s.slots
                .iter()
                .map(|sl| {
                    format!(
                        "<span class=\"mono\">{}</span> <span class=\"pill {cls}\">{act}</span> \
                         <span class=\"small\">{wal}</span>",
                        escape(&sl.slot_name),
                        cls = if sl.active { "up" } else { "down" },
                        act = if sl.active { "active" } else { "inactive" },
                        wal = escape(sl.wal_status.as_deref().unwrap_or("")),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let slot = if slots.is_empty() {
        DASH.to_owned()
    } else {
        slots.join("<br>")
    };
    let _ = writeln!(
        h,
        "<tr id=\"node-{id}\" class=\"node\"><td>{name}</td>\
         <td class=\"role\"><span class=\"pill {role}\">{role}</span></td>\
         <td class=\"state\">{state}</td><td class=\"sessions\">{sessions}</td>\
         <td class=\"timeline\">{timeline}</td>\
         <td class=\"lsn-current mono\">{current}</td><td class=\"lsn-receive mono\">{receive}</td>\
         <td class=\"lsn-replay mono\">{replay}</td>\
         <td class=\"lag\"><span class=\"lag-bytes\">{lag_bytes}</span>{lag_seconds}</td>\
         <td class=\"slot\">{slot}</td><td class=\"sync\">{sync}</td></tr>",
        id = id_part(&n.name),
    );
}

fn problems(h: &mut String, v: &ClusterView) {
    h.push_str("<h2>Problems</h2>\n");
    if v.problems.is_empty() {
        h.push_str("<p id=\"problems\" class=\"empty\">No problems.</p>\n");
        return;
    }
    h.push_str("<ul id=\"problems\" class=\"problems\">\n");
    for pr in &v.problems {
        let sev = match pr.severity {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
        };
        let node = pr
            .node
            .as_deref()
            .map(|n| format!("<span class=\"small\">[{}]</span> ", escape(n)))
            .unwrap_or_default();
        let _ = writeln!(
            h,
            "<li class=\"problem problem-{sev}\" data-code=\"{code}\">\
             <span class=\"pill severity {sev}\">{sev}</span>\
             <span class=\"code\">{code}</span>{node}<span class=\"message\">{msg}</span></li>",
            code = pr.code.as_str(),
            msg = escape(&pr.message),
        );
    }
    h.push_str("</ul>\n");
}

fn operation(h: &mut String, op: Option<&Operation>) {
    h.push_str("<h2>Operation</h2>\n");
    let Some(op) = op else {
        h.push_str("<p id=\"operation\" class=\"empty\">No operation has run yet.</p>\n");
        return;
    };
    let state = snake(op.state);
    let reason = if op.request.reason.is_empty() {
        String::new()
    } else {
        format!(
            " &middot; reason &#8220;{}&#8221;",
            escape(&op.request.reason)
        )
    };
    let finished = op
        .finished_at
        .as_deref()
        .map(|f| format!(" &middot; finished {}", escape(f)))
        .unwrap_or_default();
    let _ = writeln!(
        h,
        "<div id=\"operation\" data-id=\"{id}\">\n<p class=\"opsummary\"><strong class=\"kind\">{kind}</strong> \
         to <strong class=\"target\">{target}</strong> \
         <span class=\"pill op-state {state}\">{state}</span>{force} \
         <span class=\"small\">operation <span class=\"mono\">{id}</span> &middot; created {created}{finished}{reason}</span></p>",
        id = escape(&op.id),
        kind = op.kind.as_str(),
        target = escape(&op.request.target),
        force = if op.request.force {
            " <span class=\"pill warning\">forced</span>"
        } else {
            ""
        },
        created = escape(&op.created_at),
    );
    h.push_str(
        "<table class=\"steps\">\n<thead><tr><th>Step</th><th>State</th><th>Started</th>\
         <th>Finished</th><th>Message</th></tr></thead>\n<tbody>\n",
    );
    for s in &op.steps {
        let name = snake(s.name);
        let st = snake(s.state);
        let attempts = if s.attempts > 1 {
            format!(" <span class=\"small\">({} attempts)</span>", s.attempts)
        } else {
            String::new()
        };
        let _ = writeln!(
            h,
            "<tr class=\"step\" id=\"step-{name}\"><td class=\"mono\">{name}</td>\
             <td class=\"step-state\"><span class=\"pill {st}\">{st}</span>{attempts}</td>\
             <td class=\"small\">{started}</td><td class=\"small\">{finished}</td>\
             <td class=\"step-message\">{msg}</td></tr>",
            started = or_dash(s.started_at.clone()),
            finished = or_dash(s.finished_at.clone()),
            msg = s.message.as_deref().map(escape).unwrap_or_default()
                + &s.progress.as_ref().map(step_progress).unwrap_or_default(),
        );
    }
    h.push_str("</tbody>\n</table>\n</div>\n");
}

/// A step's long work: a bar when the total is known, then the figures
/// (`unknown` when its source could not be read).
fn step_progress(p: &pgwarden_core::progress::Progress) -> String {
    let bar = p
        .fraction()
        .map(|f| {
            format!(
                "<progress max=\"1000\" value=\"{:.0}\"></progress> ",
                f * 1000.0
            )
        })
        .unwrap_or_default();
    format!(
        "<div class=\"step-progress small\" title=\"observed {at}\">{bar}{line}</div>",
        at = escape(&p.observed_at),
        line = escape(&p.line()),
    )
}

fn audit(h: &mut String, entries: &Result<&[AuditEntry], String>) {
    h.push_str("<h2>Audit log</h2>\n");
    let entries = match entries {
        Ok([]) => {
            h.push_str("<p id=\"audit\" class=\"empty\">No request has been audited yet.</p>\n");
            return;
        }
        Ok(e) => e,
        Err(why) => {
            let _ = writeln!(
                h,
                "<p id=\"audit\" class=\"empty\">Cannot read the audit log: {}</p>",
                escape(why)
            );
            return;
        }
    };
    h.push_str(
        "<table id=\"audit\">\n<thead><tr><th>Time</th><th>Caller</th><th>Request</th>\
         <th>Body</th><th>Status</th><th>Result</th></tr></thead>\n<tbody>\n",
    );
    for e in entries.iter().rev() {
        let status_class = if (200..300).contains(&e.status) {
            "succeeded"
        } else {
            "failed"
        };
        let body = if e.body.is_null() {
            String::new()
        } else {
            escape(&e.body.to_string())
        };
        let _ = writeln!(
            h,
            "<tr class=\"audit-entry\"><td class=\"small\">{time}</td>\
             <td class=\"mono\">{caller}<br><span class=\"small\">{remote}</span></td>\
             <td class=\"mono\">{method} {endpoint}</td><td class=\"mono small\">{body}</td>\
             <td><span class=\"pill {status_class}\">{status}</span></td>\
             <td class=\"result\">{result}</td></tr>",
            time = escape(&e.time),
            caller = escape(&e.caller),
            remote = escape(&e.remote),
            method = escape(&e.method),
            endpoint = escape(&e.endpoint),
            status = e.status,
            result = escape(&e.result),
        );
    }
    h.push_str("</tbody>\n</table>\n");
}

#[cfg(test)]
mod tests {
    use pgwarden_core::operation::{OperationKind, Request, StepOutcome};
    use pgwarden_core::snapshot::NodeSnapshot;
    use pgwarden_core::view::NodeObservation;

    use super::*;

    #[test]
    fn escape_replaces_every_special_character() {
        assert_eq!(escape("plain pg-a_1"), "plain pg-a_1");
        assert_eq!(
            escape(r#"<script>alert("x" & 'y')</script>"#),
            "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape("&amp;"), "&amp;amp;", "escaped twice stays visible");
        assert_eq!(escape("é ✓"), "é ✓", "other text untouched");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn the_refresh_is_the_poll_interval_but_at_least_two_seconds() {
        assert_eq!(refresh_seconds(Duration::from_millis(200)), 2);
        assert_eq!(refresh_seconds(Duration::from_secs(1)), 2);
        assert_eq!(refresh_seconds(Duration::from_millis(2500)), 3);
        assert_eq!(refresh_seconds(Duration::from_secs(10)), 10);
    }

    #[test]
    fn ids_keep_only_safe_characters() {
        assert_eq!(id_part("pg-a_1"), "pg-a_1");
        assert_eq!(id_part("a b\"<"), "a_b__");
    }

    fn config() -> Config {
        let text = r#"
cluster: test
local_node: pg-a
listen: 127.0.0.1:8008
state_dir: /tmp/x
api_token_file: /tmp/token
monitor: {user: pgwarden}
replication: {slot: replication, application_name: inmanta, user: replication}
nodes:
  - {name: pg-a, host: 10.0.0.1, port: 5432}
  - {name: pg-b, host: 10.0.0.2, port: 5432}
"#;
        Config::parse_str("test.yaml", text).unwrap()
    }

    /// A healthy primary as the probe reports it.
    fn primary() -> NodeSnapshot {
        serde_json::from_value(serde_json::json!({
            "server_version": 150010,
            "in_recovery": false,
            "timeline": 3,
            "system_identifier": 7300000000000000001u64,
            "current_lsn": "0/3000148",
            "receive_lsn": null,
            "replay_lsn": null,
            "last_replay_at": null,
            "replay_delay_seconds": null,
            "replication": [{
                "pid": 100, "application_name": "inmanta", "client_addr": "10.0.0.2",
                "state": "streaming", "sync_state": "sync",
                "sent_lsn": "0/3000148", "write_lsn": "0/3000148", "flush_lsn": "0/3000148",
                "replay_lsn": "0/3000100",
                "write_lag_seconds": 0.001, "flush_lag_seconds": 0.002, "replay_lag_seconds": 0.003
            }],
            "slots": [{
                "slot_name": "replication", "slot_type": "physical", "active": true,
                "restart_lsn": "0/3000000", "wal_status": "reserved", "safe_wal_size": null,
                "retained_bytes": 328
            }],
            "wal_receiver": null,
            "settings": {
                "synchronous_standby_names": "inmanta", "synchronous_commit": "on",
                "wal_level": "replica", "hot_standby": "on", "max_wal_senders": 10,
                "primary_conninfo": "", "primary_slot_name": "",
                "wal_log_hints": "on", "data_checksums": "off"
            },
            "backends_waiting_sync_rep": 0,
            "sessions_by_role": {"inmanta": 2}
        }))
        .expect("fixture parses")
    }

    /// A streaming standby of [`primary`] whose conninfo holds a password.
    fn standby() -> NodeSnapshot {
        serde_json::from_value(serde_json::json!({
            "server_version": 150010,
            "in_recovery": true,
            "timeline": 3,
            "system_identifier": 7300000000000000001u64,
            "current_lsn": null,
            "receive_lsn": "0/3000148",
            "replay_lsn": "0/3000100",
            "last_replay_at": null,
            "replay_delay_seconds": 0.0,
            "replication": [],
            "slots": [],
            "wal_receiver": {
                "status": "streaming", "sender_host": "10.0.0.1", "sender_port": 5432,
                "slot_name": "replication", "received_tli": 3, "flushed_lsn": "0/3000148"
            },
            "settings": {
                "synchronous_standby_names": "", "synchronous_commit": "on",
                "wal_level": "replica", "hot_standby": "on", "max_wal_senders": 10,
                "primary_conninfo": "host=10.0.0.1 user=replication password=hunter2 application_name=inmanta",
                "primary_slot_name": "replication",
                "wal_log_hints": "on", "data_checksums": "off"
            },
            "backends_waiting_sync_rep": 0,
            "sessions_by_role": {}
        }))
        .expect("fixture parses")
    }

    fn ok(s: NodeSnapshot) -> NodeObservation {
        NodeObservation {
            snapshot: Some(s),
            ..Default::default()
        }
    }

    fn entry(endpoint: &str, reason: &str) -> AuditEntry {
        AuditEntry {
            time: "2026-11-22T01:31:47.000Z".into(),
            remote: "127.0.0.1:5555".into(),
            caller: crate::audit::caller_id("s3cret-token"),
            method: "POST".into(),
            endpoint: endpoint.into(),
            body: serde_json::json!({"target": "pg-b", "reason": reason}),
            status: 202,
            result: "accepted".into(),
        }
    }

    fn page_of(
        config: &Config,
        view: &ClusterView,
        op: Option<&Operation>,
        audit: &[AuditEntry],
    ) -> String {
        render(&Page {
            config,
            view,
            operation: op,
            audit: Ok(audit),
            generated_at: "2026-11-22T01:32:00.000Z",
        })
    }

    /// The text of the element with `id` up to its closing tag of the same
    /// name (enough for the flat rows rendered here).
    fn element<'h>(html: &'h str, id: &str) -> &'h str {
        let start = html
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no #{id} in\n{html}"));
        let open = html[..start].rfind('<').unwrap();
        let tag: String = html[open + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let end = html[start..]
            .find(&format!("</{tag}>"))
            .map(|e| start + e)
            .unwrap();
        &html[open..end]
    }

    #[test]
    fn a_healthy_pair_shows_both_nodes_and_no_problems() {
        let c = config();
        let view = ClusterView::build(&c, &[ok(primary()), ok(standby())]);
        assert!(view.healthy, "{:?}", view.problems);
        let html = page_of(&c, &view, None, &[]);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"2\">"));
        assert!(html.contains("Cluster test"));
        assert!(element(&html, "banner").contains("Healthy"));
        assert!(element(&html, "banner").contains("primary pg-a"));
        assert!(element(&html, "local-node").contains("pg-a"));
        assert!(html.contains("2026-11-22T01:32:00.000Z"));

        let a = element(&html, "node-pg-a");
        assert!(a.contains("class=\"pill primary\">primary<"), "{a}");
        assert!(a.contains(">up<"), "{a}");
        assert!(a.contains("<td class=\"timeline\">3</td>"), "{a}");
        assert!(a.contains("0/3000148"), "{a}");
        assert!(a.contains("replication</span> <span class=\"pill up\">active<"));
        assert!(a.contains("reserved"), "{a}");
        assert!(a.contains("standby names"), "{a}");

        let b = element(&html, "node-pg-b");
        assert!(b.contains("class=\"pill standby\">standby<"), "{b}");
        assert!(b.contains("receiver streaming"), "{b}");
        assert!(b.contains("0/3000100"), "{b}");
        assert!(b.contains("72 B"), "replay lag bytes: {b}");
        assert!(b.contains("0.003 s"), "replay lag seconds: {b}");
        assert!(b.contains(">sync<"), "{b}");

        assert!(element(&html, "problems").contains("No problems."));
        assert!(element(&html, "operation").contains("No operation has run yet."));
        assert!(element(&html, "audit").contains("No request has been audited yet."));
        assert!(!html.contains("hunter2"), "a conninfo password leaked");
        assert!(!html.contains("<script"), "the page has no script");
        assert!(!html.contains("src="), "the page loads nothing");
    }

    #[test]
    fn a_down_standby_shows_as_down_with_its_problems() {
        let c = config();
        let mut p = primary();
        p.replication.clear();
        p.slots[0].active = false;
        let down = NodeObservation {
            snapshot: None,
            consecutive_failures: 3,
            last_error: Some("connection refused <oops>".into()),
            polled_at: None,
            daemon_failures: None,
        };
        let view = ClusterView::build(&c, &[ok(p), down]);
        assert!(!view.healthy);
        let html = page_of(&c, &view, None, &[]);
        let banner = element(&html, "banner");
        assert!(banner.contains("unhealthy") && banner.contains("critical problem"));
        let b = element(&html, "node-pg-b");
        assert!(b.contains(">down<"), "{b}");
        assert!(b.contains(">unknown<"), "{b}");
        assert!(
            b.contains("3 failed polls: connection refused &lt;oops&gt;"),
            "{b}"
        );
        let problems = element(&html, "problems");
        for code in ["node_down", "slot_inactive"] {
            assert!(
                problems.contains(&format!("<span class=\"code\">{code}</span>")),
                "{code} missing: {problems}"
            );
        }
        assert!(problems.contains("critical"));
        assert!(!html.contains("<oops>"), "data is escaped");
    }

    #[test]
    fn the_operation_and_the_audit_entries_are_shown_escaped() {
        let c = config();
        let view = ClusterView::build(&c, &[ok(primary()), ok(standby())]);
        let mut op = Operation::new(
            "20261122T013147Z-switchover-2d5d8e".into(),
            OperationKind::Switchover,
            Request {
                target: "pg-b".into(),
                reason: "patch <night>".into(),
                force: false,
                fenced_hosts: Vec::new(),
            },
            "2026-11-22T01:31:47.000Z",
        );
        op.start_step("2026-11-22T01:31:47.100Z").unwrap();
        op.finish_step(
            StepOutcome::Succeeded("all checks pass".into()),
            "2026-11-22T01:31:47.200Z",
        )
        .unwrap();
        op.start_step("2026-11-22T01:31:47.300Z").unwrap();
        op.finish_step(
            StepOutcome::Failed("standin did not stop: \"timeout\" & more".into()),
            "2026-11-22T01:31:48.000Z",
        )
        .unwrap();
        let view = view.with_operation(Some(&op));
        let entries: Vec<AuditEntry> = (0..3)
            .map(|i| entry("/v1/switchover", &format!("reason {i} <b>")))
            .collect();
        let html = page_of(&c, &view, Some(&op), &entries);

        let o = element(&html, "operation");
        assert!(o.contains(">switchover<") && o.contains(">pg-b<"), "{o}");
        assert!(o.contains("class=\"pill op-state failed\">failed<"), "{o}");
        assert!(o.contains("patch &lt;night&gt;"), "{o}");
        let pre = element(&html, "step-preflight");
        assert!(pre.contains(">succeeded<") && pre.contains("all checks pass"));
        let fence = element(&html, "step-fence_application");
        assert!(fence.contains(">failed<"), "{fence}");
        assert!(
            fence.contains("standin did not stop: &quot;timeout&quot; &amp; more"),
            "{fence}"
        );
        assert!(element(&html, "step-done").contains(">pending<"));
        assert!(element(&html, "problems").contains("operation_failed"));
        // A step's progress: its bar and figures, or unknown said plainly.
        op.steps[2].progress = Some(pgwarden_core::progress::Progress {
            phase: "streaming database files".into(),
            bytes_done: Some(25 << 20),
            bytes_total: Some(100 << 20),
            rate_bytes_per_s: Some((5 << 20) as f64),
            eta_s: Some(15.0),
            observed_at: "2026-11-22T01:31:49.000Z".into(),
            note: None,
        });
        op.steps[3].progress = Some(pgwarden_core::progress::Progress {
            phase: "unknown".into(),
            note: Some("cannot read <it>".into()),
            ..Default::default()
        });
        let html2 = page_of(&c, &view, Some(&op), &entries);
        let stop = element(&html2, "step-stop_old_primary");
        assert!(
            stop.contains("<progress max=\"1000\" value=\"250\">"),
            "{stop}"
        );
        assert!(
            stop.contains("25.0 MiB of 100.0 MiB (25%), 5.0 MiB/s, about 15s left"),
            "{stop}"
        );
        let promote = element(&html2, "step-promote");
        assert!(!promote.contains("<progress"), "{promote}");
        assert!(
            promote.contains("unknown (cannot read &lt;it&gt;)"),
            "{promote}"
        );

        let audit = element(&html, "audit");
        assert_eq!(audit.matches("class=\"audit-entry\"").count(), 3);
        assert!(audit.contains("POST /v1/switchover"), "{audit}");
        assert!(audit.contains("token:"), "{audit}");
        assert!(audit.contains("reason 2 &lt;b&gt;"), "{audit}");
        assert!(
            audit.find("reason 2").unwrap() < audit.find("reason 0").unwrap(),
            "newest first"
        );
        assert!(!html.contains("s3cret-token"));
        assert!(!html.contains("<b>"), "data is escaped");
    }

    #[test]
    fn an_unreadable_audit_log_is_said_not_hidden() {
        let c = config();
        let view = ClusterView::build(&c, &[]);
        let html = render(&Page {
            config: &c,
            view: &view,
            operation: None,
            audit: Err("permission denied".into()),
            generated_at: "now",
        });
        assert!(element(&html, "audit").contains("Cannot read the audit log: permission denied"));
        let a = element(&html, "node-pg-a");
        assert!(a.contains(">unknown<"), "never polled: {a}");
    }
}
