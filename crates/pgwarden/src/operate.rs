//! The operator's side of the operation API: `pgwarden failover`,
//! `switchover`, `operations`, `resume`, `abort` and `audit`.
//!
//! This file does the I/O (asking the daemons, following an operation,
//! asking for confirmation); everything it prints is made in `render.rs`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use crate::client::{ApiError, Client, Connect, EXIT_REFUSED};
use crate::render::*;

/// `print!` that does not panic when stdout is a closed pipe (`| head`):
/// what the reader no longer wants is dropped.
macro_rules! out {
    ($($arg:tt)*) => {
        emit(&format!($($arg)*))
    };
}

/// `println!` that does not panic on a closed pipe, see [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {
        emit(&format!("{}\n", format_args!($($arg)*)))
    };
}

fn emit(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

/// Prints an error as `pgwarden: <message>` (with the failed checks of a
/// refused preflight) and turns the result into the exit status.
pub fn report(r: anyhow::Result<u8>) -> ExitCode {
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let (message, code) = describe_error(&e);
            eprint!("{message}");
            ExitCode::from(code)
        }
    }
}

// ---------------------------------------------------------------------------
// The commands.

/// Flags of `pgwarden failover` and `pgwarden switchover`.
#[derive(Args, Clone, Debug)]
pub struct OperateArgs {
    /// The standby to promote (a node name of the config, e.g. pg-b)
    /// [default: the only reachable standby, when there is exactly one].
    #[arg(long, value_name = "NODE")]
    pub to: Option<String>,
    /// Only run the preflight checks and show the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Lift the checks that allow it (lag, primary not yet down, ...).
    #[arg(long)]
    pub force: bool,
    /// Confirm that HOST (a node name), whose daemon does not answer, is
    /// fenced: powered off, or PostgreSQL and the application stopped and
    /// disabled there. Journaled and audited. Repeat for several hosts.
    #[arg(long = "confirm-fenced", value_name = "HOST")]
    pub confirm_fenced: Vec<String>,
    /// Why, for the journal and the audit log [default: requested with pgwarden CLI by $USER].
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(long, short)]
    pub yes: bool,
    #[command(flatten)]
    pub connect: Connect,
}

/// `pgwarden rejoin NODE`.
#[derive(Args, Debug)]
pub struct RejoinArgs {
    /// The node to turn into the standby of the current primary (a former
    /// primary, or a node with an empty data directory).
    #[arg(value_name = "NODE")]
    pub node: String,
    /// auto: pg_rewind when the data directory allows it, else pg_basebackup.
    #[arg(long, value_parser = ["auto", "rewind", "basebackup"], default_value = "auto")]
    pub method: String,
    /// Keep the old data directory after a pg_basebackup (default: removed
    /// once the new standby is synchronous).
    #[arg(long)]
    pub keep_old_data: bool,
    /// Only run the preflight checks and show the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Why, for the journal and the audit log.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Do not ask for confirmation (needed when stdin is not a terminal).
    #[arg(long, short)]
    pub yes: bool,
    #[command(flatten)]
    pub connect: Connect,
}

/// `pgwarden rejoin NODE`: dry run, confirmation, then the steps live.
pub async fn run_rejoin(args: RejoinArgs) -> anyhow::Result<u8> {
    let client = args.connect.resolve(true)?.client;
    let flags = hint_flags(&args.connect);
    let mut body = json!({
        "node": args.node,
        "reason": args.reason.clone().unwrap_or_else(default_reason),
        "dry_run": true,
        "method": args.method,
        "keep_old_data": args.keep_old_data,
    });
    let (_, answer) = client.post("/v1/rejoin", &body).await?;
    let mut dry: DryRun = parse(answer, "dry run")?;
    dry.kind = "rejoin".into();
    dry.target = args.node.clone();
    out!("{}", render_dry_run(&dry));
    if !dry.would_proceed {
        outln!("Refused: {} check(s) failed", failed_checks(&dry.checks));
        return Ok(EXIT_REFUSED);
    }
    if args.dry_run {
        outln!("Dry run: nothing was changed; run again without --dry-run to proceed.");
        return Ok(0);
    }
    confirm(
        &format!(
            "Rejoin {}? Its PostgreSQL is stopped and its data directory rebuilt from the primary (a replaced directory is kept until the new standby is synchronous). [y/N] ",
            args.node
        ),
        args.yes,
    )?;
    body["dry_run"] = json!(false);
    let (_, answer) = client.post("/v1/rejoin", &body).await?;
    let op: Operation = parse(answer, "operation")?;
    outln!("Rejoin started (operation {})", op.id);
    follow(&client, op, Follower::new(), &flags).await
}

/// The connection flags to repeat in a hint, so it works as printed.
fn hint_flags(c: &Connect) -> String {
    let mut out = String::new();
    if let Some(u) = &c.url {
        out.push_str(&format!(" --url {u}"));
    }
    if let Some(p) = &c.config {
        out.push_str(&format!(" --config {}", p.display()));
    }
    out
}

fn default_reason() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown user".into());
    format!("requested with pgwarden CLI by {user}")
}

/// Asks `question` on stderr; `--yes` answers for the operator, and without
/// a terminal there is nobody to ask.
fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Refused("not a terminal: pass --yes to confirm".into()).into());
    }
    eprint!("{question}");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    if is_yes(&answer) {
        Ok(())
    } else {
        Err(Refused("not confirmed: nothing was changed".into()).into())
    }
}

fn print_lines(lines: &[String]) {
    for l in lines {
        outln!("{l}");
    }
}

/// `pgwarden failover` / `pgwarden switchover`.
pub async fn run_operate(kind: &str, args: OperateArgs) -> anyhow::Result<u8> {
    let resolved = args.connect.resolve(true)?;
    let client = resolved.client;
    let flags = hint_flags(&args.connect);
    let reason = args.reason.clone().unwrap_or_else(default_reason);
    let path = format!("/v1/{kind}");
    let target = match &args.to {
        Some(t) => t.clone(),
        None => {
            let status = client.get("/v1/status").await?;
            let chosen = only_candidate(&status).map_err(Refused)?;
            outln!("No --to given: {chosen} is the only candidate (the one reachable standby)");
            chosen
        }
    };
    let mut body = json!({
        "target": target,
        "reason": reason,
        "dry_run": true,
        "force": args.force,
        "fenced_hosts": args.confirm_fenced,
    });

    let (_, answer) = client.post(&path, &body).await?;
    let mut dry: DryRun = parse(answer, "dry run")?;
    if dry.kind.is_empty() {
        dry.kind = kind.to_owned();
    }
    if dry.target.is_empty() {
        dry.target = target.clone();
    }
    out!("{}", render_dry_run(&dry));
    let failed = failed_checks(&dry.checks);
    if !dry.would_proceed {
        if failed == 0 {
            outln!("Refused: the daemon would not proceed");
        } else {
            outln!("Refused: {failed} check(s) failed");
        }
        print_lines(&force_lines(&dry.checks, args.force));
        return Ok(EXIT_REFUSED);
    }
    // Said before the question, so nobody confirms a force blind.
    if args.force {
        print_lines(&force_lines(&dry.checks, true));
    }
    if args.dry_run {
        outln!("Dry run: nothing was changed; run again without --dry-run to proceed.");
        return Ok(0);
    }

    confirm(
        &confirm_question(kind, &target, resolved.application.as_deref()),
        args.yes,
    )?;

    body["dry_run"] = json!(false);
    let (_, answer) = client.post(&path, &body).await?;
    let op: Operation = parse(answer, "operation")?;
    outln!("{} started (operation {})", title(kind), op.id);
    follow(&client, op, Follower::new(), &flags).await
}

/// Prints the steps of `op` as they start and finish until it stops running.
/// Ctrl-C stops following, not the operation.
async fn follow(
    client: &Client,
    first: Operation,
    mut f: Follower,
    flags: &str,
) -> anyhow::Result<u8> {
    const POLL: Duration = Duration::from_millis(100);
    const GIVE_UP: Duration = Duration::from_secs(60);
    let id = first.id.clone();
    let path = format!("/v1/operations/{id}");
    let interrupted = || {
        eprintln!();
        eprintln!("pgwarden: stopped following; operation {id} continues on the daemon.");
        eprintln!("Follow it with: pgwarden operations {id} --follow{flags}");
        Ok(EXIT_INTERRUPTED)
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    let mut op = first;
    let mut lost_since: Option<Instant> = None;
    let mut shown = ProgressShown::new(std::io::stdout().is_terminal());
    loop {
        shown.print(&f.lines(&op));
        if !is_running(&op) {
            shown.clear();
            let (lines, code) = outcome(&op, flags);
            print_lines(&lines);
            return Ok(code);
        }
        shown.update(&op);
        tokio::select! {
            _ = &mut ctrl_c => { shown.clear(); return interrupted() },
            _ = tokio::time::sleep(POLL) => {}
        }
        let answer = tokio::select! {
            _ = &mut ctrl_c => { shown.clear(); return interrupted() },
            r = client.get_with_timeout(&path, Duration::from_secs(5)) => r,
        };
        match answer {
            Ok(v) => {
                if lost_since.take().is_some() {
                    eprintln!("pgwarden: reached the daemon again");
                }
                op = parse(v, "operation")?;
            }
            // Lost contact: the operation goes on without us; keep asking
            // for a while before giving up.
            Err(e @ ApiError::Unreachable { .. }) | Err(e @ ApiError::BadBody { .. }) => {
                let since = *lost_since.get_or_insert_with(|| {
                    eprintln!("pgwarden: {e}; retrying");
                    Instant::now()
                });
                if since.elapsed() > GIVE_UP {
                    return Err(anyhow::Error::new(e).context(format!(
                        "lost the daemon for {}s; operation {id} may still be running: pgwarden operations {id}{flags}",
                        GIVE_UP.as_secs()
                    )));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The running step's progress as a follower shows it: a bar redrawn in
/// place on a terminal (indicatif), else a plain line now and then.
enum ProgressShown {
    Bar(Option<(String, indicatif::ProgressBar)>),
    Plain(ProgressThrottle, Instant),
}

impl ProgressShown {
    /// A plain follower prints at most one progress line every this often.
    const PLAIN_EVERY_S: f64 = 5.0;

    fn new(terminal: bool) -> ProgressShown {
        if terminal {
            ProgressShown::Bar(None)
        } else {
            ProgressShown::Plain(ProgressThrottle::new(Self::PLAIN_EVERY_S), Instant::now())
        }
    }

    /// Prints step lines above the bar.
    fn print(&mut self, lines: &[String]) {
        match self {
            ProgressShown::Bar(Some((_, bar))) if !lines.is_empty() => {
                bar.suspend(|| print_lines(lines))
            }
            _ => print_lines(lines),
        }
    }

    fn clear(&mut self) {
        if let ProgressShown::Bar(bar) = self {
            if let Some((_, b)) = bar.take() {
                b.finish_and_clear();
            }
        }
    }

    fn update(&mut self, op: &Operation) {
        let Some((step, p)) = running_progress(op) else {
            self.clear();
            return;
        };
        match self {
            ProgressShown::Plain(throttle, t0) => {
                if throttle.due(t0.elapsed().as_secs_f64(), &step.name, p) {
                    outln!("{}", progress_line(step, p));
                }
            }
            ProgressShown::Bar(bar) => {
                if bar.as_ref().is_some_and(|(name, _)| *name != step.name) {
                    self.clear();
                    return self.update(op);
                }
                let ProgressShown::Bar(bar) = self else {
                    return;
                };
                let (_, b) = bar.get_or_insert_with(|| {
                    let b = indicatif::ProgressBar::with_draw_target(
                        None,
                        indicatif::ProgressDrawTarget::stdout(),
                    );
                    // Under the step's start line: the time and name columns.
                    b.set_prefix(format!("{:12}  {:<23}", "", step.name));
                    (step.name.clone(), b)
                });
                // The daemon's figures (its rate and ETA over the source's
                // readings), not indicatif's own estimate of our polls.
                let template = if p.fraction().is_some() {
                    "{prefix}  [{bar:30}] {msg}"
                } else {
                    "{prefix}  {spinner} {msg}"
                };
                if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                    b.set_style(style.progress_chars("=> "));
                }
                b.set_length(p.bytes_total.unwrap_or(0));
                b.set_position(p.bytes_done.unwrap_or(0));
                b.set_message(p.line());
                b.tick();
            }
        }
    }
}

/// `pgwarden operations [ID] [--json] [--follow]`.
pub async fn run_operations(
    connect: Connect,
    id: Option<String>,
    json: bool,
    follow_it: bool,
) -> anyhow::Result<u8> {
    let client = connect.resolve(false)?.client;
    let flags = hint_flags(&connect);
    match id {
        None => {
            let v = client.get("/v1/operations").await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(0);
            }
            let ops: Vec<Operation> = parse(v["operations"].clone(), "operation list")?;
            out!("{}", render_operations(&ops));
            Ok(0)
        }
        Some(id) => {
            let v = client.get(&format!("/v1/operations/{id}")).await?;
            if json && !follow_it {
                outln!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(0);
            }
            let op: Operation = parse(v, "operation")?;
            if follow_it {
                print_header(&op);
                return follow(&client, op, Follower::new(), &flags).await;
            }
            out!("{}", render_operation(&op, &flags));
            Ok(0)
        }
    }
}

fn print_header(op: &Operation) {
    outln!(
        "Operation {}: {} to {}, {}",
        op.id,
        op.kind,
        op.request.target,
        op.state
    );
}

/// Fetches an operation and refuses early, before asking, when its state
/// does not allow `action` (the daemon would answer 409 anyway).
async fn open_operation(client: &Client, id: &str, action: &str) -> anyhow::Result<Operation> {
    let v = client.get(&format!("/v1/operations/{id}")).await?;
    let op: Operation = parse(v, "operation")?;
    if !matches!(op.state.as_str(), "failed" | "interrupted") {
        return Err(Refused(format!(
            "operation {id} is {}: only a failed or interrupted operation can be {action}",
            op.state
        ))
        .into());
    }
    Ok(op)
}

/// `pgwarden resume ID`.
pub async fn run_resume(connect: Connect, id: String, yes: bool) -> anyhow::Result<u8> {
    let client = connect.resolve(true)?.client;
    let flags = hint_flags(&connect);
    let op = open_operation(&client, &id, "resumed").await?;
    out!("{}", render_operation_steps(&op));
    let from = current_step(&op)
        .map(|s| s.name.clone())
        .unwrap_or_default();
    confirm(
        &format!(
            "Resume {} to {} (operation {id}) at step {from}? [y/N] ",
            op.kind, op.request.target
        ),
        yes,
    )?;
    let (_, v) = client
        .post(&format!("/v1/operations/{id}/resume"), &json!({}))
        .await?;
    let resumed: Operation = parse(v, "operation")?;
    outln!("Resumed operation {id}");
    let mut f = Follower::new();
    f.seed(&op);
    follow(&client, resumed, f, &flags).await
}

/// `pgwarden abort ID`.
pub async fn run_abort(connect: Connect, id: String, yes: bool) -> anyhow::Result<u8> {
    let client = connect.resolve(true)?.client;
    let op = open_operation(&client, &id, "aborted").await?;
    out!("{}", render_operation_steps(&op));
    confirm(
        &format!(
            "Abort {} to {} (operation {id})? The steps not run are marked skipped; nothing is undone. [y/N] ",
            op.kind, op.request.target
        ),
        yes,
    )?;
    let (_, v) = client
        .post(&format!("/v1/operations/{id}/abort"), &json!({}))
        .await?;
    let aborted: Operation = parse(v, "operation")?;
    outln!("Operation {} is {}.", aborted.id, aborted.state);
    Ok(0)
}

/// `pgwarden sync async|sync`: clear or set synchronous_standby_names on
/// the primary. Going async is a trade the operator must see and confirm.
pub async fn run_sync(
    connect: Connect,
    mode: &str,
    force: bool,
    confirm_fenced: Vec<String>,
    yes: bool,
) -> anyhow::Result<u8> {
    let client = connect.resolve(true)?.client;
    if mode == "async" {
        confirm(
            "Switch to asynchronous replication? Writes waiting for the standby are released and new commits\n\
             no longer wait for it: until a standby catches up they exist on the primary only and are LOST\n\
             if the primary dies. [y/N] ",
            yes,
        )?;
    } else if force {
        confirm(
            "Set synchronous replication although no standby may stream? Every commit waits until one does. [y/N] ",
            yes,
        )?;
    }
    let (_, v) = client
        .put(
            "/v1/sync",
            &json!({"mode": mode, "force": force, "fenced_hosts": confirm_fenced}),
        )
        .await?;
    outln!(
        "{} is now {}: synchronous_standby_names = '{}'",
        v["primary"].as_str().unwrap_or("the primary"),
        if mode == "sync" {
            "synchronous"
        } else {
            "asynchronous"
        },
        v["synchronous_standby_names"].as_str().unwrap_or("")
    );
    if let Some(list) = v["sync_standbys"].as_array().filter(|l| !l.is_empty()) {
        let names: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
        outln!("synchronous standby: {}", names.join(", "));
    }
    if mode == "async" {
        outln!(
            "released {} waiting write(s)",
            v["released_writes"].as_u64().unwrap_or(0)
        );
    }
    if let Some(w) = v["warning"].as_str() {
        outln!("WARNING: {w}");
    }
    Ok(0)
}

/// `pgwarden audit`.
pub async fn run_audit(connect: Connect, limit: usize, json: bool) -> anyhow::Result<u8> {
    let client = connect.resolve(false)?.client;
    let v = client.get(&format!("/v1/audit?limit={limit}")).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let entries: Vec<AuditEntry> = parse(v["entries"].clone(), "audit log")?;
    out!("{}", render_audit(&entries));
    Ok(0)
}
