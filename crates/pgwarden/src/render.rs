//! What the operation commands print: check lists, step lines, tables, the
//! final verdict and the text of an error, as pure functions over small,
//! tolerant copies of the daemon's JSON shapes, so that every one is tested
//! without a daemon. `operate.rs` does the I/O.
//!
//! Times are shown in UTC, as the daemon records them.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

use crate::client::{ApiError, EXIT_REFUSED};

/// Exit status when the operator pressed Ctrl-C (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

// ---------------------------------------------------------------------------
// The JSON shapes, as far as the CLI needs them; unknown fields are ignored
// and missing ones take defaults, so a newer daemon does not break the CLI.

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Operation {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub request: Request,
    pub created_at: Option<String>,
    pub finished_at: Option<String>,
    pub steps: Vec<Step>,
    /// What steps recorded (`old_primary`, `timeline_before`, ...): strings.
    pub facts: std::collections::BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Request {
    pub target: String,
    pub reason: String,
    pub force: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Step {
    pub name: String,
    pub state: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub message: Option<String>,
    pub attempts: u32,
    /// The long work of a running step (a rejoin's copy); see
    /// [`running_progress`].
    pub progress: Option<pgwarden_core::progress::Progress>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Check {
    pub name: String,
    pub verdict: String,
    pub message: String,
    /// `--force` lifts (or lifted) this check.
    pub forceable: bool,
}

/// The answer to a dry run.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct DryRun {
    pub kind: String,
    pub target: String,
    pub would_proceed: bool,
    pub checks: Vec<Check>,
    pub plan: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct AuditEntry {
    pub time: String,
    pub remote: String,
    pub caller: String,
    pub method: String,
    pub endpoint: String,
    pub body: Value,
    pub status: Option<u16>,
    pub result: String,
}

/// The JSON `v` as `T`, or an error naming `what` the daemon answered.
pub fn parse<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> anyhow::Result<T> {
    serde_json::from_value(v)
        .with_context(|| format!("the daemon's {what} is not what this CLI expects"))
}

// ---------------------------------------------------------------------------
// Pure rendering.

/// `12:00:01.234` (UTC) of an RFC 3339 time; the text itself if it does not parse.
pub fn clock(ts: &str) -> String {
    match humantime::parse_rfc3339_weak(ts) {
        Ok(t) => humantime::format_rfc3339_millis(t).to_string()[11..23].to_owned(),
        Err(_) => ts.to_owned(),
    }
}

/// `2024-05-01 12:00:01` (UTC) of an RFC 3339 time.
pub fn date_time(ts: &str) -> String {
    match humantime::parse_rfc3339_weak(ts) {
        Ok(t) => humantime::format_rfc3339_seconds(t).to_string()[..19].replacen('T', " ", 1),
        Err(_) => ts.to_owned(),
    }
}

/// Time from `a` to `b`, both RFC 3339; `None` if either does not parse or
/// `b` is earlier.
pub fn between(a: &str, b: &str) -> Option<Duration> {
    let a = humantime::parse_rfc3339_weak(a).ok()?;
    let b = humantime::parse_rfc3339_weak(b).ok()?;
    b.duration_since(a).ok()
}

/// `0.05s`, `1.27s`, `12.3s`, `2m05s`, `1h02m`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2}s")
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        let s = d.as_secs();
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        let m = d.as_secs() / 60;
        format!("{}h{:02}m", m / 60, m % 60)
    }
}

/// `Failover` from `failover`.
pub fn title(kind: &str) -> String {
    let mut c = kind.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => "Operation".into(),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn verdict_label(verdict: &str) -> String {
    match verdict {
        "pass" => "ok".into(),
        "warn" => "WARN".into(),
        "fail" => "FAIL".into(),
        other => other.to_uppercase(),
    }
}

/// One line per check: `  ok    target_is_standby  pg-b is a reachable standby`.
pub fn render_checks(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let line = format!(
            "  {:<4}  {:<width$}  {}",
            verdict_label(&c.verdict),
            c.name,
            one_line(&c.message)
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `Plan: preflight -> fence_application -> ...`
pub fn plan_line(plan: &[String]) -> String {
    format!("Plan: {}", plan.join(" -> "))
}

/// The dry run as shown before anything happens.
pub fn render_dry_run(d: &DryRun) -> String {
    let mut out = format!("Preflight of {} to {}:\n", d.kind, d.target);
    out.push_str(&render_checks(&d.checks));
    if !d.plan.is_empty() {
        out.push_str(&plan_line(&d.plan));
        out.push('\n');
    }
    out
}

/// What `--force` changes, from the dry run's `forceable` marks: with
/// `--force`, the checks it lifted; without, the failed checks it would
/// lift and those it cannot. Empty when it changes nothing worth saying.
pub fn force_lines(checks: &[Check], forced: bool) -> Vec<String> {
    let names = |pred: &dyn Fn(&Check) -> bool| -> Vec<&str> {
        checks
            .iter()
            .filter(|c| pred(c))
            .map(|c| c.name.as_str())
            .collect()
    };
    if forced {
        let lifted = names(&|c| c.forceable && c.verdict == "warn");
        return if lifted.is_empty() {
            vec!["--force lifts no check here: every check passes without it".into()]
        } else {
            vec![format!(
                "--force lifts {} check(s): {}",
                lifted.len(),
                lifted.join(", ")
            )]
        };
    }
    let liftable = names(&|c| c.forceable && c.verdict == "fail");
    let stuck = names(&|c| !c.forceable && c.verdict == "fail");
    let mut out = Vec::new();
    if !liftable.is_empty() {
        out.push(format!("--force would lift: {}", liftable.join(", ")));
    }
    if !stuck.is_empty() {
        out.push(format!("--force cannot lift: {}", stuck.join(", ")));
    }
    out
}

/// The only node `--to` can name: the one reachable standby in
/// `/v1/status`; else a sentence naming the candidates (or why there is
/// none) for the operator to choose.
pub fn only_candidate(status: &Value) -> Result<String, String> {
    let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
    let candidates: Vec<&str> = nodes
        .iter()
        .filter(|n| n["role"] == "standby" && n["reachable"] == true)
        .filter_map(|n| n["name"].as_str())
        .collect();
    match candidates.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => {
            let seen: Vec<String> = nodes
                .iter()
                .map(|n| {
                    let state = if n["reachable"] == true {
                        n["role"].as_str().unwrap_or("unknown")
                    } else {
                        "unreachable"
                    };
                    format!("{} {state}", n["name"].as_str().unwrap_or("?"))
                })
                .collect();
            Err(format!(
                "no candidate: no node is a reachable standby ({}); pass --to NODE",
                seen.join(", ")
            ))
        }
        several => Err(format!(
            "{} candidates ({}): pass --to NODE",
            several.len(),
            several.join(", ")
        )),
    }
}

pub fn failed_checks(checks: &[Check]) -> usize {
    checks.iter().filter(|c| c.verdict == "fail").count()
}

/// The width of the step name column: the longest step name of the contract
/// (`reconfigure_new_primary`).
const STEP_WIDTH: usize = 23;
/// Width of the time column (`12:00:01.234`).
const CLOCK_WIDTH: usize = 12;

fn step_row(time: Option<&str>, name: &str, state: &str, dur: &str, message: &str) -> String {
    let time = time.map(clock).unwrap_or_default();
    let line = format!(
        "{time:<CLOCK_WIDTH$}  {name:<STEP_WIDTH$}  {state:<9}  {dur:>6}  {}",
        one_line(message)
    );
    line.trim_end().to_owned()
}

/// `12:00:01.234  fence_application        running`
pub fn step_start_line(s: &Step) -> String {
    step_row(s.started_at.as_deref(), &s.name, "running", "", "")
}

/// `12:00:02.501  fence_application        succeeded   1.27s  <message>`
pub fn step_finish_line(s: &Step) -> String {
    let dur = match (&s.started_at, &s.finished_at) {
        (Some(a), Some(b)) => between(a, b).map(human_duration).unwrap_or_default(),
        _ => String::new(),
    };
    let mut message = s.message.clone().unwrap_or_default();
    if s.attempts > 1 {
        message = format!("{message} [attempt {}]", s.attempts)
            .trim_start()
            .to_owned();
    }
    step_row(
        s.finished_at.as_deref().or(s.started_at.as_deref()),
        &s.name,
        &s.state,
        &dur,
        &message,
    )
}

/// The one line that says where a step is now (for `pgwarden operations ID`).
pub fn step_line(s: &Step) -> String {
    match s.state.as_str() {
        "pending" => step_row(None, &s.name, "pending", "", ""),
        "running" => step_start_line(s),
        _ => step_finish_line(s),
    }
}

fn is_finished(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "skipped")
}

/// Turns successive views of one operation into the lines to print: one
/// when a step starts and one when it finishes, each printed once, in order,
/// even when a step started and finished between two polls. A step run
/// again after a resume (its `attempts` grew) is printed again.
#[derive(Default)]
pub struct Follower {
    printed: HashSet<(String, u32, bool)>,
}

impl Follower {
    pub fn new() -> Follower {
        Follower::default()
    }

    /// Marks the steps already finished in `op` as printed (a resume shows
    /// only what happens from now on).
    pub fn seed(&mut self, op: &Operation) {
        for s in op.steps.iter().filter(|s| is_finished(&s.state)) {
            self.printed.insert((s.name.clone(), s.attempts, false));
            self.printed.insert((s.name.clone(), s.attempts, true));
        }
    }

    pub fn lines(&mut self, op: &Operation) -> Vec<String> {
        let mut out = Vec::new();
        for s in &op.steps {
            let started = s.state == "running" || (is_finished(&s.state) && s.started_at.is_some());
            if started && self.printed.insert((s.name.clone(), s.attempts, false)) {
                out.push(step_start_line(s));
            }
            if is_finished(&s.state) && self.printed.insert((s.name.clone(), s.attempts, true)) {
                out.push(step_finish_line(s));
            }
        }
        out
    }
}

/// The running step of `op` and the progress it shows, if any.
pub fn running_progress(op: &Operation) -> Option<(&Step, &pgwarden_core::progress::Progress)> {
    op.steps
        .iter()
        .find(|s| s.state == "running")
        .and_then(|s| s.progress.as_ref().map(|p| (s, p)))
}

/// `              rebuild_data_directory   streaming database files: 120.0 MiB of ...`:
/// a progress line under the step's start line, for a follower that is
/// not a terminal.
pub fn progress_line(s: &Step, p: &pgwarden_core::progress::Progress) -> String {
    let line = format!(
        "{:<CLOCK_WIDTH$}  {:<STEP_WIDTH$}  {}",
        p.observed_at
            .is_empty()
            .then(String::new)
            .unwrap_or_else(|| clock(&p.observed_at)),
        s.name,
        one_line(&p.line())
    );
    line.trim_end().to_owned()
}

/// When a follower without a terminal prints a progress line: a new phase
/// at once, otherwise at most one every `every_s` seconds (a copy of hours
/// must not flood a log). Time is a parameter.
pub struct ProgressThrottle {
    every_s: f64,
    last: Option<(f64, String)>,
}

impl ProgressThrottle {
    pub fn new(every_s: f64) -> ProgressThrottle {
        ProgressThrottle {
            every_s,
            last: None,
        }
    }

    pub fn due(&mut self, now_s: f64, step: &str, p: &pgwarden_core::progress::Progress) -> bool {
        let key = format!("{step}/{}", p.phase);
        let due = match &self.last {
            None => true,
            Some((at, k)) => *k != key || now_s - at >= self.every_s,
        };
        if due {
            self.last = Some((now_s, key));
        }
        due
    }
}

/// Whether the operation will change without an operator.
pub fn is_running(op: &Operation) -> bool {
    op.state == "running"
}

/// The step where the operation stands: the failed one, else the running
/// one, else the first that has not finished.
pub fn current_step(op: &Operation) -> Option<&Step> {
    op.steps
        .iter()
        .find(|s| s.state == "failed")
        .or_else(|| op.steps.iter().find(|s| s.state == "running"))
        .or_else(|| op.steps.iter().find(|s| !is_finished(&s.state)))
}

fn next_hint(id: &str, flags: &str) -> String {
    format!("inspect with: pgwarden operations {id}{flags}; then pgwarden resume {id}{flags} or pgwarden abort {id}{flags}")
}

pub fn total_duration(op: &Operation) -> Option<Duration> {
    between(op.created_at.as_deref()?, op.finished_at.as_deref()?)
}

/// The closing lines for an operation and the exit status they mean.
/// `flags` are the connection flags to repeat in hints (e.g. ` --url ...`).
pub fn outcome(op: &Operation, flags: &str) -> (Vec<String>, u8) {
    let kind = title(&op.kind);
    let id = &op.id;
    let at = current_step(op);
    let at_name = at.map(|s| s.name.as_str()).unwrap_or("?");
    match op.state.as_str() {
        "succeeded" => {
            let took = total_duration(op)
                .map(|d| format!(" in {}", human_duration(d)))
                .unwrap_or_default();
            (vec![format!("{kind} succeeded{took} (operation {id})")], 0)
        }
        "failed" => {
            let message = at
                .and_then(|s| s.message.as_deref())
                .map(one_line)
                .unwrap_or_else(|| "no message".into());
            (
                vec![
                    format!("{kind} FAILED at {at_name}: {message}"),
                    next_hint(id, flags),
                ],
                1,
            )
        }
        "interrupted" => (
            vec![
                format!("{kind} INTERRUPTED at {at_name}: the daemon stopped while the operation ran (operation {id})"),
                next_hint(id, flags),
            ],
            1,
        ),
        "aborted" => (vec![format!("{kind} aborted (operation {id})")], 1),
        "running" => (
            vec![format!(
                "{kind} running, at {at_name} (operation {id}); follow with: pgwarden operations {id} --follow{flags}"
            )],
            0,
        ),
        other => (vec![format!("{kind} {other} (operation {id})")], 1),
    }
}

/// A table: columns padded to their widest cell, two spaces apart.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |v| v.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, &w)| format!("{v:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// What to say about an operation in one cell: the failed step and its
/// message, else the running step, else the last message.
pub fn detail(op: &Operation) -> String {
    let with_message = |s: &Step, fallback: &str| match s.message.as_deref() {
        Some(m) if !m.is_empty() => format!("{}: {}", s.name, one_line(m)),
        _ => format!("{}: {fallback}", s.name),
    };
    if let Some(s) = op.steps.iter().find(|s| s.state == "failed") {
        return with_message(s, "failed");
    }
    if let Some(s) = op.steps.iter().find(|s| s.state == "running") {
        let what = if op.state == "running" {
            "running"
        } else {
            "was running"
        };
        return format!("{}: {what}", s.name);
    }
    op.steps
        .iter()
        .rev()
        .find(|s| s.started_at.is_some() && is_finished(&s.state))
        .map(|s| with_message(s, &s.state))
        .unwrap_or_default()
}

/// `pgwarden operations`: one row per operation, in the daemon's order (newest first).
pub fn render_operations(ops: &[Operation]) -> String {
    if ops.is_empty() {
        return "No operations.\n".into();
    }
    let mut rows = vec![[
        "ID", "KIND", "STATE", "TARGET", "CREATED", "DURATION", "STEP",
    ]
    .map(String::from)
    .to_vec()];
    for op in ops {
        rows.push(vec![
            op.id.clone(),
            op.kind.clone(),
            op.state.clone(),
            op.request.target.clone(),
            op.created_at.as_deref().map(date_time).unwrap_or_default(),
            total_duration(op)
                .map(human_duration)
                .unwrap_or_else(|| "-".into()),
            truncate(&detail(op), 80),
        ]);
    }
    table(&rows)
}

/// `pgwarden operations ID`: a header, one line per step, the verdict.
pub fn render_operation(op: &Operation, flags: &str) -> String {
    let mut out = format!(
        "Operation {}: {} to {}{}, {}\n",
        op.id,
        op.kind,
        op.request.target,
        if op.request.force { " (forced)" } else { "" },
        op.state
    );
    if let Some(c) = &op.created_at {
        out.push_str(&format!("Created: {} UTC\n", date_time(c)));
    }
    if !op.request.reason.is_empty() {
        out.push_str(&format!("Reason:  {}\n", one_line(&op.request.reason)));
    }
    for s in &op.steps {
        out.push_str(&step_line(s));
        out.push('\n');
        // A running step's long work, as last read.
        if let Some(p) = s.progress.as_ref().filter(|_| s.state == "running") {
            out.push_str(&progress_line(s, p));
            out.push('\n');
        }
    }
    for l in outcome(op, flags).0 {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// `pgwarden audit`: one row per entry, in the daemon's order.
pub fn render_audit(entries: &[AuditEntry]) -> String {
    if entries.is_empty() {
        return "No audit entries.\n".into();
    }
    let mut rows = vec![[
        "TIME", "CALLER", "REMOTE", "REQUEST", "STATUS", "RESULT", "BODY",
    ]
    .map(String::from)
    .to_vec()];
    for e in entries {
        let body = match &e.body {
            Value::Null => String::new(),
            Value::Object(m) if m.is_empty() => String::new(),
            b => b.to_string(),
        };
        rows.push(vec![
            date_time(&e.time),
            e.caller.clone(),
            e.remote.clone(),
            format!("{} {}", e.method, e.endpoint),
            e.status.map(|s| s.to_string()).unwrap_or_default(),
            truncate(&one_line(&e.result), 60),
            truncate(&body, 80),
        ]);
    }
    table(&rows)
}

/// The question asked before a failover or switchover.
pub fn confirm_question(kind: &str, target: &str, application: Option<&str>) -> String {
    let app = application.unwrap_or("the application");
    let verb = match kind {
        "switchover" => "Switch over",
        _ => "Fail over",
    };
    format!("{verb} to {target}? This stops {app} and promotes {target}. [y/N] ")
}

/// Whether an answer to a `[y/N]` question is yes.
pub fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

// ---------------------------------------------------------------------------
// Errors and exit statuses.

/// The operator or a check said no: exit 3 with this sentence.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The text (ending in a newline) and the exit status of an error.
pub fn describe_error(e: &anyhow::Error) -> (String, u8) {
    if let Some(r) = e.downcast_ref::<Refused>() {
        return (format!("pgwarden: {r}\n"), EXIT_REFUSED);
    }
    let Some(api) = e.downcast_ref::<ApiError>() else {
        return (format!("pgwarden: {e:#}\n"), 1);
    };
    let mut out = format!("pgwarden: {api}\n");
    if let ApiError::Status {
        status, code, body, ..
    } = api
    {
        // A refused preflight (422 `preflight_failed`) lists its checks.
        if let Ok(checks) = serde_json::from_value::<Vec<Check>>(body["checks"].clone()) {
            let failed: Vec<Check> = checks.into_iter().filter(|c| c.verdict == "fail").collect();
            if !failed.is_empty() {
                out.push_str(&render_checks(&failed));
            }
        }
        if code.as_deref() == Some("conflict") {
            out.push_str("pgwarden: see the open operation with: pgwarden operations\n");
        }
        if matches!(status, 401 | 403) {
            out.push_str(
                "pgwarden: check the token: --token-file, PGWARDEN_TOKEN_FILE or the api_token_file of --config\n",
            );
        }
    }
    (out, api.exit_code())
}

/// The header and step lines of an operation, without the verdict.
pub fn render_operation_steps(op: &Operation) -> String {
    let mut out = format!(
        "Operation {}: {} to {}, {}\n",
        op.id, op.kind, op.request.target, op.state
    );
    for s in &op.steps {
        out.push_str(&step_line(s));
        out.push('\n');
    }
    out
}

/// Seconds since the epoch, for tests that need a time.
#[cfg(test)]
fn rfc3339(secs: f64) -> String {
    // Whole milliseconds: f64 seconds would round 1.234 down to 1.233.
    let t =
        std::time::SystemTime::UNIX_EPOCH + Duration::from_millis((secs * 1000.0).round() as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const T0: f64 = 1_714_564_801.234; // 2024-05-01T12:00:01.234Z

    fn check(name: &str, verdict: &str, forceable: bool) -> Check {
        Check {
            name: name.into(),
            verdict: verdict.into(),
            message: String::new(),
            forceable,
        }
    }

    #[test]
    fn force_lines_name_exactly_what_force_lifts() {
        let refused = [
            check("target_is_standby", "pass", false),
            check("primary_down", "fail", true),
            check("host_fenced", "fail", false),
            check("lag_within_limit", "pass", false),
        ];
        assert_eq!(
            force_lines(&refused, false),
            [
                "--force would lift: primary_down",
                "--force cannot lift: host_fenced"
            ]
        );
        let forced = [
            check("primary_down", "warn", true),
            check("application_config_effective", "warn", false),
        ];
        assert_eq!(
            force_lines(&forced, true),
            ["--force lifts 1 check(s): primary_down"]
        );
        assert_eq!(
            force_lines(&[check("primary_down", "pass", false)], true),
            ["--force lifts no check here: every check passes without it"]
        );
        assert!(force_lines(&[check("x", "pass", false)], false).is_empty());
    }

    #[test]
    fn the_only_reachable_standby_is_the_candidate() {
        let node = |name: &str, role: &str, reachable: bool| json!({"name": name, "role": role, "reachable": reachable});
        let two = json!({"nodes": [node("pg-a", "primary", true), node("pg-b", "standby", true)]});
        assert_eq!(only_candidate(&two).unwrap(), "pg-b");
        // A failover: the old primary no longer answers.
        let lost =
            json!({"nodes": [node("pg-a", "unknown", false), node("pg-b", "standby", true)]});
        assert_eq!(only_candidate(&lost).unwrap(), "pg-b");
        let three = json!({"nodes": [node("pg-a", "primary", true), node("pg-b", "standby", true), node("pg-c", "standby", true)]});
        assert_eq!(
            only_candidate(&three).unwrap_err(),
            "2 candidates (pg-b, pg-c): pass --to NODE"
        );
        let none =
            json!({"nodes": [node("pg-a", "primary", true), node("pg-b", "standby", false)]});
        assert_eq!(
            only_candidate(&none).unwrap_err(),
            "no candidate: no node is a reachable standby (pg-a primary, pg-b unreachable); pass --to NODE"
        );
    }

    fn step(
        name: &str,
        state: &str,
        start: Option<f64>,
        end: Option<f64>,
        msg: Option<&str>,
    ) -> Step {
        Step {
            name: name.into(),
            state: state.into(),
            started_at: start.map(rfc3339),
            finished_at: end.map(rfc3339),
            message: msg.map(str::to_owned),
            attempts: u32::from(start.is_some()),
            progress: None,
        }
    }

    fn op(state: &str, steps: Vec<Step>) -> Operation {
        Operation {
            id: "op-1".into(),
            kind: "failover".into(),
            state: state.into(),
            request: Request {
                target: "pg-b".into(),
                reason: "test".into(),
                force: false,
            },
            created_at: Some(rfc3339(T0)),
            finished_at: None,
            steps,
            facts: Default::default(),
        }
    }

    #[test]
    fn times_and_durations_read_well() {
        assert_eq!(clock(&rfc3339(T0)), "12:00:01.234");
        assert_eq!(clock("2024-05-01T12:00:01.5Z"), "12:00:01.500");
        assert_eq!(clock("yesterday"), "yesterday");
        assert_eq!(date_time("2024-05-01T12:00:01.234Z"), "2024-05-01 12:00:01");
        assert_eq!(human_duration(Duration::from_millis(1267)), "1.27s");
        assert_eq!(human_duration(Duration::from_millis(50)), "0.05s");
        assert_eq!(human_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1h02m");
        assert_eq!(
            between("2024-05-01T12:00:01.234Z", "2024-05-01T12:00:02.501Z"),
            Some(Duration::from_millis(1267))
        );
        assert_eq!(
            between("2024-05-01T12:00:02Z", "2024-05-01T12:00:01Z"),
            None
        );
    }

    #[test]
    fn checks_render_as_an_aligned_list_and_the_plan_as_arrows() {
        let d: DryRun = serde_json::from_value(json!({
            "kind": "failover", "target": "pg-b", "would_proceed": false,
            "checks": [
                {"name": "target_is_standby", "verdict": "pass", "message": "pg-b is a reachable standby"},
                {"name": "lag", "verdict": "warn", "message": "lag 1 MiB (ignored: force)"},
                {"name": "primary_down", "verdict": "fail", "message": "pg-a is a reachable primary", "forceable": true},
            ],
            "plan": ["preflight", "fence_application", "promote"],
            "something_new": 1,
        }))
        .unwrap();
        assert_eq!(
            render_dry_run(&d),
            "Preflight of failover to pg-b:\n\
             \x20 ok    target_is_standby  pg-b is a reachable standby\n\
             \x20 WARN  lag                lag 1 MiB (ignored: force)\n\
             \x20 FAIL  primary_down       pg-a is a reachable primary\n\
             Plan: preflight -> fence_application -> promote\n"
        );
        assert_eq!(failed_checks(&d.checks), 1);
    }

    #[test]
    fn step_lines_carry_the_steps_own_times_and_durations() {
        let s = step(
            "fence_application",
            "succeeded",
            Some(T0),
            Some(T0 + 1.267),
            Some("inmanta-server stopped, no session left"),
        );
        assert_eq!(
            step_start_line(&s),
            "12:00:01.234  fence_application        running"
        );
        assert_eq!(
            step_finish_line(&s),
            "12:00:02.501  fence_application        succeeded   1.27s  inmanta-server stopped, no session left"
        );
        let p = step("promote", "pending", None, None, None);
        assert_eq!(
            step_line(&p),
            "              promote                  pending"
        );
        let mut again = step("promote", "failed", Some(T0), Some(T0 + 0.05), Some("boom"));
        again.attempts = 2;
        assert_eq!(
            step_line(&again),
            "12:00:01.284  promote                  failed      0.05s  boom [attempt 2]"
        );
    }

    #[test]
    fn the_follower_prints_each_start_and_finish_once_in_order() {
        let mut f = Follower::new();
        let mut o = op(
            "running",
            vec![
                step("preflight", "running", Some(T0), None, None),
                step("fence_application", "pending", None, None, None),
            ],
        );
        assert_eq!(f.lines(&o), vec![step_start_line(&o.steps[0])]);
        assert!(f.lines(&o).is_empty(), "nothing new, nothing printed");
        // Between two polls preflight finished and fencing both started
        // and finished: all three lines, in order.
        o.steps[0] = step(
            "preflight",
            "succeeded",
            Some(T0),
            Some(T0 + 0.1),
            Some("ok"),
        );
        o.steps[1] = step(
            "fence_application",
            "succeeded",
            Some(T0 + 0.1),
            Some(T0 + 1.0),
            Some("fenced"),
        );
        let lines = f.lines(&o);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].contains("preflight") && lines[0].contains("succeeded"));
        assert!(lines[1].contains("fence_application") && lines[1].ends_with("running"));
        assert!(lines[2].contains("fence_application") && lines[2].contains("fenced"));
        assert!(f.lines(&o).is_empty());
    }

    #[test]
    fn a_resumed_step_is_printed_again_and_done_steps_are_not() {
        let failed = op(
            "failed",
            vec![
                step(
                    "preflight",
                    "succeeded",
                    Some(T0),
                    Some(T0 + 0.1),
                    Some("ok"),
                ),
                step(
                    "promote",
                    "failed",
                    Some(T0 + 0.1),
                    Some(T0 + 0.2),
                    Some("boom"),
                ),
            ],
        );
        let mut f = Follower::new();
        f.seed(&failed);
        // The daemon resets the failed step to pending, keeping its old times.
        let mut resumed = failed.clone();
        resumed.state = "running".into();
        resumed.steps[1].state = "pending".into();
        assert!(f.lines(&resumed).is_empty());
        resumed.steps[1] = step("promote", "running", Some(T0 + 5.0), None, None);
        resumed.steps[1].attempts = 2;
        let lines = f.lines(&resumed);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].starts_with("12:00:06.234  promote"));
    }

    #[test]
    fn progress_is_shown_under_its_step_and_a_plain_follower_is_throttled() {
        let mut running = step("rebuild_data_directory", "running", Some(T0), None, None);
        let mut o = op("running", vec![running.clone()]);
        assert!(
            running_progress(&o).is_none(),
            "no progress: nothing to show"
        );
        let p = pgwarden_core::progress::Progress {
            phase: "streaming database files".into(),
            bytes_done: Some(120 << 20),
            bytes_total: Some(300 << 20),
            rate_bytes_per_s: Some((8 << 20) as f64),
            eta_s: Some(22.6),
            observed_at: rfc3339(T0 + 5.0),
            note: None,
        };
        running.progress = Some(p.clone());
        o.steps = vec![running];
        let (s, shown) = running_progress(&o).unwrap();
        assert_eq!(shown, &p);
        assert_eq!(
            &progress_line(s, shown)[CLOCK_WIDTH..],
            "  rebuild_data_directory   streaming database files: 120.0 MiB of 300.0 MiB (40%), 8.0 MiB/s, about 23s left"
        );
        let mut t = ProgressThrottle::new(5.0);
        assert!(
            t.due(0.0, "rebuild_data_directory", &p),
            "the first at once"
        );
        assert!(!t.due(1.0, "rebuild_data_directory", &p));
        assert!(!t.due(4.9, "rebuild_data_directory", &p));
        assert!(t.due(5.0, "rebuild_data_directory", &p));
        let finishing = pgwarden_core::progress::Progress {
            phase: "finishing".into(),
            ..p.clone()
        };
        assert!(
            t.due(5.5, "rebuild_data_directory", &finishing),
            "a new phase at once"
        );
        // `pgwarden operations ID` shows it under the running step.
        let shown = render_operation(&o, "");
        assert!(
            shown.contains("streaming database files: 120.0 MiB of 300.0 MiB"),
            "{shown}"
        );
    }

    #[test]
    fn the_outcome_says_how_it_ended_and_what_to_do() {
        let mut o = op(
            "succeeded",
            vec![step(
                "done",
                "succeeded",
                Some(T0 + 1.0),
                Some(T0 + 1.9),
                None,
            )],
        );
        o.finished_at = Some(rfc3339(T0 + 1.9));
        assert_eq!(
            outcome(&o, ""),
            (
                vec!["Failover succeeded in 1.90s (operation op-1)".to_owned()],
                0
            )
        );
        let o = op(
            "failed",
            vec![
                step(
                    "preflight",
                    "succeeded",
                    Some(T0),
                    Some(T0 + 0.1),
                    Some("ok"),
                ),
                step(
                    "promote",
                    "failed",
                    Some(T0),
                    Some(T0 + 1.0),
                    Some("pg_promote timed out"),
                ),
                step("done", "pending", None, None, None),
            ],
        );
        let (lines, code) = outcome(&o, " --url http://h:8008");
        assert_eq!(code, 1);
        assert_eq!(lines[0], "Failover FAILED at promote: pg_promote timed out");
        assert_eq!(
            lines[1],
            "inspect with: pgwarden operations op-1 --url http://h:8008; then pgwarden resume op-1 --url http://h:8008 or pgwarden abort op-1 --url http://h:8008"
        );
        let o = op(
            "interrupted",
            vec![
                step("preflight", "succeeded", Some(T0), Some(T0 + 0.1), None),
                step("promote", "running", Some(T0), None, None),
            ],
        );
        let (lines, code) = outcome(&o, "");
        assert_eq!(code, 1);
        assert!(
            lines[0].starts_with("Failover INTERRUPTED at promote"),
            "{lines:?}"
        );
        assert_eq!(outcome(&op("aborted", vec![]), "").1, 1);
    }

    #[test]
    fn the_operations_table_has_one_row_per_operation() {
        let mut ok = op(
            "succeeded",
            vec![step(
                "done",
                "succeeded",
                Some(T0),
                Some(T0 + 2.0),
                Some("switched to pg-b"),
            )],
        );
        ok.id = "op-2".into();
        ok.kind = "switchover".into();
        ok.finished_at = Some(rfc3339(T0 + 2.5));
        let failed = op(
            "failed",
            vec![
                step(
                    "preflight",
                    "succeeded",
                    Some(T0),
                    Some(T0 + 0.1),
                    Some("ok"),
                ),
                step(
                    "promote",
                    "failed",
                    Some(T0),
                    Some(T0 + 1.0),
                    Some("pg_promote\ntimed out"),
                ),
            ],
        );
        let running = Operation {
            id: "op-3".into(),
            ..op(
                "running",
                vec![step("fence_application", "running", Some(T0), None, None)],
            )
        };
        assert_eq!(
            render_operations(&[running, ok, failed]),
            "ID    KIND        STATE      TARGET  CREATED              DURATION  STEP\n\
             op-3  failover    running    pg-b    2024-05-01 12:00:01  -         fence_application: running\n\
             op-2  switchover  succeeded  pg-b    2024-05-01 12:00:01  2.50s     done: switched to pg-b\n\
             op-1  failover    failed     pg-b    2024-05-01 12:00:01  -         promote: pg_promote timed out\n"
        );
        assert_eq!(render_operations(&[]), "No operations.\n");
    }

    #[test]
    fn one_operation_shows_every_step_and_the_verdict() {
        let o = op(
            "failed",
            vec![
                step(
                    "preflight",
                    "succeeded",
                    Some(T0),
                    Some(T0 + 0.1),
                    Some("ok"),
                ),
                step(
                    "promote",
                    "failed",
                    Some(T0 + 0.1),
                    Some(T0 + 1.1),
                    Some("boom"),
                ),
                step("done", "pending", None, None, None),
            ],
        );
        let text = render_operation(&o, "");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Operation op-1: failover to pg-b, failed");
        assert_eq!(lines[1], "Created: 2024-05-01 12:00:01 UTC");
        assert_eq!(lines[2], "Reason:  test");
        assert_eq!(
            lines[3],
            "12:00:01.334  preflight                succeeded   0.10s  ok"
        );
        assert_eq!(
            lines[4],
            "12:00:02.334  promote                  failed      1.00s  boom"
        );
        assert_eq!(lines[5], "              done                     pending");
        assert_eq!(lines[6], "Failover FAILED at promote: boom");
    }

    #[test]
    fn the_audit_table_shows_who_asked_for_what() {
        let entries: Vec<AuditEntry> = serde_json::from_value(json!([
            {"time": "2024-05-01T12:00:01.234Z", "remote": "127.0.0.1:50000", "caller": "token:0123456789ab",
             "method": "POST", "endpoint": "/v1/failover", "body": {"target": "pg-b", "dry_run": true},
             "status": 200, "result": "dry run: would proceed"},
            {"time": "2024-05-01T12:00:02Z", "remote": "127.0.0.1:50001", "caller": "anonymous",
             "method": "POST", "endpoint": "/v1/failover", "body": null, "status": 401, "result": "unauthorized"},
        ]))
        .unwrap();
        assert_eq!(
            render_audit(&entries),
            "TIME                 CALLER              REMOTE           REQUEST            STATUS  RESULT                  BODY\n\
             2024-05-01 12:00:01  token:0123456789ab  127.0.0.1:50000  POST /v1/failover  200     dry run: would proceed  {\"dry_run\":true,\"target\":\"pg-b\"}\n\
             2024-05-01 12:00:02  anonymous           127.0.0.1:50001  POST /v1/failover  401     unauthorized\n"
        );
    }

    #[test]
    fn errors_print_the_daemons_sentence_and_the_failed_checks() {
        let e = crate::client::status_error(
            422,
            "http://x/v1/failover".into(),
            &json!({"error": "preflight_failed", "message": "preflight refused the failover",
                    "checks": [{"name": "a", "verdict": "pass", "message": "fine"},
                               {"name": "lag", "verdict": "fail", "message": "too far behind"}]})
            .to_string(),
        );
        let (text, code) = describe_error(&anyhow::Error::new(e));
        assert_eq!(code, 3);
        assert_eq!(
            text,
            "pgwarden: preflight refused the failover\n  FAIL  lag  too far behind\n"
        );
        let (text, code) =
            describe_error(&Refused("not a terminal: pass --yes to confirm".into()).into());
        assert_eq!(
            (text.as_str(), code),
            ("pgwarden: not a terminal: pass --yes to confirm\n", 3)
        );
        let e = crate::client::status_error(
            403,
            "u".into(),
            r#"{"error":"forbidden","message":"wrong token"}"#,
        );
        let (text, code) = describe_error(&anyhow::Error::new(e));
        assert_eq!(code, 4);
        assert!(text.starts_with("pgwarden: wrong token\n"), "{text}");
        let (_, code) = describe_error(&anyhow::anyhow!("anything else"));
        assert_eq!(code, 1);
    }

    #[test]
    fn the_question_names_the_application_and_the_target() {
        assert_eq!(
            confirm_question("failover", "pg-b", Some("inmanta-server")),
            "Fail over to pg-b? This stops inmanta-server and promotes pg-b. [y/N] "
        );
        assert_eq!(
            confirm_question("switchover", "pg-a", None),
            "Switch over to pg-a? This stops the application and promotes pg-a. [y/N] "
        );
        assert!(is_yes("y\n") && is_yes(" YES ") && !is_yes("\n") && !is_yes("no"));
    }
}
