//! Decision tables of the rejoin steps, in the fake world, with what each
//! run leaves in the data directories.
//!
//! As in tables.rs: for each scenario and step, the steps before it run
//! without a fault, then the step runs once as it is, which lists every
//! effect it calls (SQL on a node, a look at or a change to a path, a
//! tool), and once more for each of those effects with each [`Fault`].
//! Every such run must FAIL, with a message naming where it went wrong,
//! unless [`PROCEEDS`] says why going on is right. After every run,
//! whatever its outcome, the disk must hold what the rejoin promises:
//!
//! - the node's own data is never deleted before its replacement works
//!   (it is in the data directory, or kept aside at `.pgwarden-old-<op>`);
//! - a data directory is in place (none only on a first clone);
//! - no half-made copy is left behind (a whole one may wait for a resume);
//! - once the rebuild is done, the node's own postgresql.conf, pg_hba.conf
//!   and pg_ident.conf are back, with their mode, owner and group;
//! - at most one node is writable.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use pgwarden_core::operation::{Operation, OperationKind, Request, StepName, StepOutcome};
use pgwarden_core::Config;

use super::{run_step, StepContext};
use crate::effects::fake::fs::{Entry, POSTGRES};
use crate::effects::fake::{FakeWorld, Fault, CONFIG};

const DIR: &str = "/var/lib/postgresql/15/main";
const OLD: &str = "/var/lib/postgresql/15/main.pgwarden-old-op-1";
const NEW: &str = "/var/lib/postgresql/15/main.pgwarden-new-op-1";
const KEEP: &str = "/tmp/pgwarden-fake/rejoin-op-1";
/// What the files of pg-b's own data say.
const ORIGIN: &str = "pg-b's own data";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    /// pg-b, a former primary, stopped; wal_log_hints on; `auto`.
    Rewind,
    /// The same with wal_log_hints and checksums off: a fresh copy.
    Basebackup,
    /// pg-b has no data directory yet.
    FirstClone,
    /// As Rewind, with pg_rewind asked for: no fallback to a copy.
    AskedRewind,
}

use Scenario::*;

const SCENARIOS: [Scenario; 4] = [Rewind, Basebackup, FirstClone, AskedRewind];

const STEPS: [StepName; 7] = [
    StepName::Preflight,
    StepName::StopNode,
    StepName::RebuildDataDirectory,
    StepName::ConfigureStandby,
    StepName::StartStandby,
    StepName::WaitStreaming,
    StepName::EnableSynchronous,
];

/// A case where an effect going wrong must NOT stop the step, and why.
struct Proceeds {
    scenarios: &'static [Scenario],
    step: StepName,
    effect: &'static str,
    /// The node, path or tool the effect is on.
    at: &'static str,
    why: &'static str,
}

const AUTO_REWIND: &[Scenario] = &[Rewind];
const ALL_SCENARIOS: &[Scenario] = &SCENARIOS;
const LEFTOVER: &str = "the standby is synchronous, so the rejoin is done: a directory left over is said in the message, never a reason to undo a working rejoin";

/// These effects may go wrong (any [`Fault`]) and the step goes on.
const PROCEEDS: &[Proceeds] = &[
    Proceeds {
        scenarios: &[Rewind, Basebackup],
        step: StepName::Preflight,
        effect: "pg_control",
        at: DIR,
        why: "a control file that cannot be read rules pg_rewind out: the copy chosen instead goes into a new directory and keeps the old one",
    },
    Proceeds {
        scenarios: AUTO_REWIND,
        step: StepName::Preflight,
        effect: "may_read_files_for_rewind",
        at: "pg-a",
        why: "rewind privileges that cannot be checked rule pg_rewind out: the copy chosen instead keeps the old directory",
    },
    Proceeds {
        scenarios: AUTO_REWIND,
        step: StepName::RebuildDataDirectory,
        effect: "run_tool",
        at: "pg_rewind",
        why: "a failed pg_rewind falls back to a fresh copy into a new directory (method `auto`); the old one is kept aside",
    },
    Proceeds {
        scenarios: &[Basebackup, FirstClone],
        step: StepName::RebuildDataDirectory,
        effect: "basebackup_progress",
        at: "pg-a",
        why: "the copy's progress is only shown: a reading that fails is shown as unknown and the copy goes on",
    },
    Proceeds {
        scenarios: ALL_SCENARIOS,
        step: StepName::StartStandby,
        effect: "is_in_recovery",
        at: "pg-b",
        why: "a node that does not answer is started; the start is verified (and fails where a server already runs)",
    },
    Proceeds {
        scenarios: ALL_SCENARIOS,
        step: StepName::WaitStreaming,
        effect: "replay_lsn",
        at: "pg-b",
        why: "the replayed LSN is only reported (`?`); streaming on the primary's timeline is what the step verifies",
    },
    Proceeds {
        scenarios: &[Basebackup],
        step: StepName::EnableSynchronous,
        effect: "exists",
        at: OLD,
        why: LEFTOVER,
    },
    Proceeds {
        scenarios: &[Basebackup],
        step: StepName::EnableSynchronous,
        effect: "remove_all",
        at: OLD,
        why: LEFTOVER,
    },
    Proceeds {
        scenarios: ALL_SCENARIOS,
        step: StepName::EnableSynchronous,
        effect: "remove_all",
        at: KEEP,
        why: LEFTOVER,
    },
];

fn proceeds(s: Scenario, step: StepName, effect: &str, at: &str) -> Option<&'static str> {
    PROCEEDS
        .iter()
        .find(|r| r.scenarios.contains(&s) && r.step == step && r.effect == effect && r.at == at)
        .map(|r| r.why)
}

/// pg-b's own configuration files: modes and a group that a tool's copy
/// (0600, postgres:postgres) would not have.
fn own_files() -> Vec<(&'static str, Entry)> {
    let entry = |name: &str, mode, owner| Entry {
        text: Some(format!("# pg-b's own {name}\n")),
        mode,
        owner,
    };
    vec![
        ("postgresql.conf", entry("postgresql.conf", 0o644, POSTGRES)),
        ("pg_hba.conf", entry("pg_hba.conf", 0o640, (POSTGRES.0, 4))),
        ("pg_ident.conf", entry("pg_ident.conf", 0o600, POSTGRES)),
    ]
}

fn config() -> Config {
    let text = CONFIG.replace(
        r#"{name: pg-b, host: 10.0.0.2, port: 5432, api: "http://10.0.0.2:8008"}"#,
        r#"{name: pg-b, host: 10.0.0.2, port: 5432, api: "http://10.0.0.2:8008", data_dir: /var/lib/postgresql/15/main, start: [pg_ctlcluster, "15", main, start], stop: [pg_ctlcluster, "15", main, stop]}"#,
    );
    assert_ne!(text, CONFIG, "the fake config names pg-b as expected");
    Config::parse_str("fake.yaml", &text).expect("the rejoin config parses")
}

/// After a failover to pg-a: pg-a primary on timeline 2, pg-b (this host)
/// a stopped former primary on timeline 1.
fn world(s: Scenario) -> Arc<FakeWorld> {
    let w = FakeWorld::new(config());
    w.with(|w| {
        let a = w.nodes.get_mut("pg-a").unwrap();
        a.timeline = 2;
        let b = w.nodes.get_mut("pg-b").unwrap();
        b.running = false;
        b.in_recovery = false;
        b.cluster_state = "shut down".into();
        let fs = &mut w.fs;
        for d in ["/", "/var", "/var/lib"] {
            fs.dir(d, 0o755, (0, 0));
        }
        fs.dir("/var/lib/postgresql", 0o755, POSTGRES);
        fs.dir("/var/lib/postgresql/15", 0o755, POSTGRES);
        fs.dir("/tmp", 0o1777, (0, 0));
        fs.dir("/tmp/pgwarden-fake", 0o700, (0, 0));
        fs.free.insert("/".into(), 100 << 30);
        if s != FirstClone {
            fs.data_dir(Path::new(DIR), ORIGIN, s != Basebackup);
            for (name, e) in own_files() {
                fs.entries.insert(Path::new(DIR).join(name), e);
            }
        }
    });
    w
}

fn context(w: &Arc<FakeWorld>) -> StepContext {
    StepContext {
        view: Arc::new(w.view()),
        config: w.config(),
        effects: w.clone(),
        fenced_hosts: Vec::new(),
        progress: Default::default(),
    }
}

/// The rejoin as the API starts it: the method asked and keep_old_data.
fn operation(s: Scenario) -> Operation {
    let request = Request {
        target: "pg-b".into(),
        reason: "table test".into(),
        force: false,
        fenced_hosts: Vec::new(),
    };
    let mut op = Operation::new("op-1".into(), OperationKind::Rejoin, request, "t0");
    let method = if s == AskedRewind { "rewind" } else { "auto" };
    op.facts.method = Some(method.into());
    op.facts.keep_old_data = Some(false);
    op
}

/// Runs every step before `step` (none may fail), then `step` with `fault`
/// on `(effect, at)`. Returns its outcome, the effects it called and the
/// operation.
async fn run_until(
    w: &Arc<FakeWorld>,
    s: Scenario,
    step: StepName,
    fault: Option<(&(String, String), Fault)>,
) -> (StepOutcome, BTreeSet<(String, String)>, Operation) {
    let ctx = context(w);
    let mut op = operation(s);
    super::tables::run_up_to(&ctx, &mut op, step, &format!("{s:?}")).await;
    let before = w.call_count();
    if let Some(((effect, at), f)) = fault {
        w.fault(effect, at, f);
    }
    let outcome = run_step(&ctx, &mut op, step).await;
    let calls = w.called_since(before);
    op.finish_step(outcome.clone(), "t").unwrap();
    (outcome, calls, op)
}

/// What the rejoin promises about the disk (the module's list).
fn assert_disk(w: &FakeWorld, s: Scenario, op: &Operation, what: &str) {
    let done = op.completed(StepName::EnableSynchronous);
    w.with(|w| {
        let fs = &w.fs;
        let writable = w
            .nodes
            .values()
            .filter(|n| n.running && !n.in_recovery)
            .count();
        assert!(writable <= 1, "{what}: {writable} writable nodes");
        if s != FirstClone && !done {
            let own = [DIR, OLD].iter().any(|d| {
                fs.get(Path::new(d).join("base/ORIGIN"))
                    .is_some_and(|e| e.text.as_deref() == Some(ORIGIN))
            });
            assert!(
                own,
                "{what}: pg-b's own data is gone before its replacement works"
            );
        }
        if s != FirstClone || op.completed(StepName::RebuildDataDirectory) {
            assert!(
                fs.exists(Path::new(DIR).join("PG_VERSION")),
                "{what}: no data directory in place"
            );
        }
        // A whole copy may wait there for the swap's retry (a resume copies
        // again); a partial one must be gone.
        let whole = fs.exists(Path::new(NEW).join("base/ORIGIN"));
        assert!(
            !fs.exists(NEW) || whole,
            "{what}: a half-made copy is left at {NEW}"
        );
        if s != FirstClone && op.completed(StepName::RebuildDataDirectory) {
            for (name, want) in own_files() {
                let got = fs.get(Path::new(DIR).join(name));
                assert_eq!(
                    got,
                    Some(&want),
                    "{what}: {name} is not pg-b's own, as it was"
                );
            }
        }
    });
}

#[tokio::test(start_paused = true)]
async fn every_fault_of_every_effect_of_a_rejoin_stops_the_step_unless_tabled() {
    let started = std::time::Instant::now();
    let mut tried = 0;
    let mut proceeded = Vec::new();
    for s in SCENARIOS {
        for step in STEPS {
            let w = world(s);
            let (outcome, calls, op) = run_until(&w, s, step, None).await;
            let what = format!("{s:?} {step:?} without a fault");
            assert!(
                !matches!(outcome, StepOutcome::Failed(_)),
                "{what}: {outcome:?}"
            );
            assert_disk(&w, s, &op, &what);
            assert!(!calls.is_empty(), "{what}: called no effect");
            for call in &calls {
                for fault in Fault::ALL {
                    let w = world(s);
                    let (outcome, _, op) = run_until(&w, s, step, Some((call, fault))).await;
                    let what = format!("{s:?} {step:?} with {fault:?} on {} {}", call.0, call.1);
                    tried += 1;
                    assert_disk(&w, s, &op, &what);
                    match (proceeds(s, step, &call.0, &call.1), outcome) {
                        (None, StepOutcome::Failed(m)) => assert!(
                            m.contains(&call.1) || m.contains(&call.0),
                            "{what}: the message does not say where it went wrong: {m}"
                        ),
                        (None, other) => panic!(
                            "{what}: went on ({other:?}); fail the step, or table why going on is right"
                        ),
                        (Some(_), StepOutcome::Failed(m)) => {
                            panic!("{what}: tabled to go on, but failed: {m}")
                        }
                        (Some(why), _) => proceeded.push(format!("{s:?} {step:?} {} {}: {why}", call.0, call.1)),
                    }
                }
            }
        }
    }
    for row in PROCEEDS {
        for s in row.scenarios {
            let key = format!("{s:?} {:?} {} {}", row.step, row.effect, row.at);
            assert!(
                proceeded.iter().any(|p| p.starts_with(&key)),
                "the table's row {key} was never reached"
            );
        }
    }
    assert!(tried > 200, "only {tried} faulty runs");
    eprintln!(
        "rejoin tables: {tried} faulty runs ({} went on, as tabled) in {} ms",
        proceeded.len(),
        started.elapsed().as_millis()
    );
}

/// Runs the whole rejoin from its next step; the outcome of each step.
async fn run_all(w: &Arc<FakeWorld>, op: &mut Operation) -> Vec<(StepName, StepOutcome)> {
    let ctx = context(w);
    let mut out = Vec::new();
    while let Ok(step) = op.start_step("t") {
        let outcome = run_step(&ctx, op, step).await;
        op.finish_step(outcome.clone(), "t").unwrap();
        out.push((step, outcome));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_whole_rejoin_ends_streaming_with_the_nodes_own_files_back() {
    for (s, keep_old) in [
        (Rewind, false),
        (Basebackup, false),
        (Basebackup, true),
        (FirstClone, false),
        (AskedRewind, false),
    ] {
        let w = world(s);
        let mut op = operation(s);
        op.facts.keep_old_data = Some(keep_old);
        for (step, outcome) in run_all(&w, &mut op).await {
            assert!(
                !matches!(outcome, StepOutcome::Failed(_)),
                "{s:?} {step:?}: {outcome:?}"
            );
            assert_disk(&w, s, &op, &format!("{s:?} after {step:?}"));
        }
        assert_eq!(
            op.state,
            pgwarden_core::operation::OperationState::Succeeded
        );
        let method = if s == Rewind || s == AskedRewind {
            "rewind"
        } else {
            "basebackup"
        };
        assert_eq!(op.facts.method.as_deref(), Some(method), "{s:?}");
        w.with(|w| {
            let b = &w.nodes["pg-b"];
            assert!(
                b.running && b.in_recovery && b.timeline == 2,
                "{s:?}: {b:?}"
            );
            let fs = &w.fs;
            let dir = Path::new(DIR);
            assert!(fs.exists(dir.join("standby.signal")), "{s:?}");
            let auto = fs.get(dir.join("postgresql.auto.conf")).unwrap();
            assert!(
                auto.text
                    .as_deref()
                    .unwrap()
                    .contains("primary_conninfo = 'host=10.0.0.1 port=5432"),
                "{s:?}: {auto:?}"
            );
            assert_eq!((auto.mode, auto.owner), (0o600, POSTGRES), "{s:?}");
            let data = fs
                .get(dir.join("base/ORIGIN"))
                .unwrap()
                .text
                .clone()
                .unwrap();
            assert_eq!(data == ORIGIN, method == "rewind", "{s:?}: {data}");
            assert_eq!(
                fs.exists(OLD),
                keep_old,
                "{s:?}: the old directory after the rejoin"
            );
            if keep_old {
                assert_eq!(
                    fs.get(Path::new(OLD).join("base/ORIGIN"))
                        .unwrap()
                        .text
                        .as_deref(),
                    Some(ORIGIN)
                );
            }
            assert!(!fs.exists(KEEP), "{s:?}: the kept files are cleaned up");
            if s == FirstClone {
                let conf = fs.get(dir.join("pg_hba.conf")).unwrap();
                assert_eq!(
                    conf.text.as_deref(),
                    Some("# a copy of the primary: pg_hba.conf\n")
                );
            }
        });
    }
}

/// pg_basebackup failing in any way (an error, a timeout, a tool that
/// cannot run, a kill) leaves the old data directory exactly as it was,
/// and no partial copy; the step says so.
#[tokio::test(start_paused = true)]
async fn a_failed_copy_leaves_the_old_data_directory_as_it_was() {
    for fault in Fault::ALL {
        let w = world(Basebackup);
        let before = w.with(|w| w.fs.tree(Path::new(DIR)));
        let call = ("run_tool".to_owned(), "pg_basebackup".to_owned());
        let (outcome, _, _) = run_until(
            &w,
            Basebackup,
            StepName::RebuildDataDirectory,
            Some((&call, fault)),
        )
        .await;
        let StepOutcome::Failed(m) = outcome else {
            panic!("{fault:?}: {outcome:?}")
        };
        assert!(
            m.contains("the old data directory is untouched"),
            "{fault:?}: {m}"
        );
        w.with(|w| {
            assert_eq!(
                w.fs.tree(Path::new(DIR)),
                before,
                "{fault:?}: the old directory changed"
            );
            assert!(!w.fs.exists(NEW) && !w.fs.exists(OLD), "{fault:?}");
        });
    }
}

/// A rebuild that failed after the swap (the node's own files could not be
/// put back) is resumed: the copy in place is kept, not made again, and
/// the own files come back with their mode and owner.
#[tokio::test(start_paused = true)]
async fn a_rebuild_resumed_after_the_swap_keeps_the_copy_and_restores_the_own_files() {
    let w = world(Basebackup);
    let call = ("restore".to_owned(), DIR.to_owned());
    let (outcome, _, mut op) = run_until(
        &w,
        Basebackup,
        StepName::RebuildDataDirectory,
        Some((&call, Fault::Error)),
    )
    .await;
    assert!(matches!(outcome, StepOutcome::Failed(_)), "{outcome:?}");
    assert!(
        w.with(|w| w.fs.exists(OLD)),
        "the old directory is kept aside"
    );
    w.with(|w| w.faults.clear());
    op.resume().unwrap();
    let copies = |w: &FakeWorld| w.with(|w| w.calls.iter().filter(|c| c.0 == "run_tool").count());
    let before = copies(&w);
    let steps = run_all(&w, &mut op).await;
    let (_, rebuilt) = &steps[0];
    assert!(
        matches!(rebuilt, StepOutcome::Succeeded(m) if m.contains("already in place")),
        "{rebuilt:?}"
    );
    assert_eq!(copies(&w), before, "no second copy");
    assert_eq!(
        op.state,
        pgwarden_core::operation::OperationState::Succeeded,
        "{steps:?}"
    );
    assert_disk(&w, Basebackup, &op, "after the resume");
    w.with(|w| {
        for (name, want) in own_files() {
            assert_eq!(w.fs.get(Path::new(DIR).join(name)), Some(&want), "{name}");
        }
        assert!(
            !w.fs.exists(OLD),
            "the old directory goes once the standby is synchronous"
        );
    });
}

/// Preflight refuses a rejoin with no primary to follow, before any effect
/// on the disk.
#[tokio::test(start_paused = true)]
async fn a_rejoin_without_a_primary_is_refused_before_touching_the_disk() {
    let w = world(Rewind);
    w.with(|w| w.nodes.get_mut("pg-a").unwrap().running = false);
    let (outcome, calls, _) = run_until(&w, Rewind, StepName::Preflight, None).await;
    assert!(
        matches!(&outcome, StepOutcome::Failed(m) if m.starts_with("refused:") && m.contains("primary_available")),
        "{outcome:?}"
    );
    assert!(calls.is_empty(), "{calls:?}");
}

/// A daemon killed half-way through the swap (the old directory moved
/// aside, the copy not yet in its place): the resumed rebuild copies again,
/// knows the old directory is there, and removes it only at the end.
#[tokio::test(start_paused = true)]
async fn a_rebuild_killed_half_way_through_the_swap_keeps_the_old_directory_until_the_end() {
    let w = world(Basebackup);
    let ctx = context(&w);
    let mut op = operation(Basebackup);
    for _ in 0..2 {
        let step = op.start_step("t").unwrap();
        let outcome = run_step(&ctx, &mut op, step).await;
        op.finish_step(outcome, "t").unwrap();
    }
    // What the killed attempt left: the own files kept, a copy made, the
    // old directory moved aside.
    let own = ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"];
    use crate::effects::Effects as _;
    w.data_dirs()
        .keep(Path::new(DIR), Path::new(KEEP), &own)
        .unwrap();
    w.with(|w| {
        w.fs.data_dir(Path::new(NEW), "a copy of the primary", true);
        w.fs.move_tree(Path::new(DIR), Path::new(OLD)).unwrap();
    });
    assert_eq!(op.start_step("t").unwrap(), StepName::RebuildDataDirectory);
    let outcome = run_step(&ctx, &mut op, StepName::RebuildDataDirectory).await;
    assert!(
        matches!(&outcome, StepOutcome::Succeeded(m) if m.contains("kept at")),
        "{outcome:?}"
    );
    op.finish_step(outcome, "t").unwrap();
    assert_eq!(op.facts.old_data_dir.as_deref(), Some(Path::new(OLD)));
    assert_disk(&w, Basebackup, &op, "after the resumed rebuild");
    for (step, outcome) in run_all(&w, &mut op).await {
        assert!(
            !matches!(outcome, StepOutcome::Failed(_)),
            "{step:?}: {outcome:?}"
        );
    }
    w.with(|w| {
        assert!(
            !w.fs.exists(OLD),
            "the old directory goes once the standby is synchronous"
        )
    });
}
