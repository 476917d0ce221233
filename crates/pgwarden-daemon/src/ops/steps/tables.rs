//! Decision tables of the failover and switchover steps, in the fake world.
//!
//! For each scenario and step: the steps before it run without a fault,
//! then the step runs once as it is, which lists every effect it calls
//! (on which node or host), and once more for each of those effects with
//! each [`Fault`]. Every such run must FAIL, with a message, unless the
//! table below says why going on is right; and after every run, whatever
//! its outcome, at most one node is writable and at most one application
//! instance runs. An effect a step newly calls is tabled by itself: it is
//! in the list the next time the test runs.

use std::collections::BTreeSet;
use std::sync::Arc;

use pgwarden_core::operation::{Operation, OperationKind, Request, StepName, StepOutcome};
use pgwarden_core::view::ClusterView;
use pgwarden_core::Config;

use super::{reverify, run_step, StepContext};
use crate::effects::fake::{FakeWorld, Fault, CONFIG};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    /// Both nodes and both daemons up, the application on pg-a.
    Switchover,
    /// PostgreSQL on pg-a died; its host, its daemon and the application
    /// there still run (the guide's case).
    FailoverPrimaryDied,
}

use Scenario::*;

impl Scenario {
    fn kind(self) -> OperationKind {
        match self {
            Switchover => OperationKind::Switchover,
            FailoverPrimaryDied => OperationKind::Failover,
        }
    }
}

/// A case where an effect going wrong must NOT stop the step, and why.
struct Proceeds {
    scenario: Scenario,
    step: StepName,
    effect: &'static str,
    /// The node or host the effect is on.
    at: &'static str,
    faults: &'static [Fault],
    why: &'static str,
}

const ALL: &[Fault] = &Fault::ALL;
/// Only "nothing listens there": a node that refuses connections runs no
/// server, so it serves no session.
const REFUSED: &[Fault] = &[Fault::Unreachable];

/// These faults of these effects let the step go on.
const PROCEEDS: &[Proceeds] = &[
    Proceeds {
        scenario: Switchover,
        step: StepName::FenceApplication,
        effect: "sessions_of",
        at: "pg-a",
        faults: REFUSED,
        why: "a node that refuses connections runs no server: no session of the application can be there",
    },
    Proceeds {
        scenario: Switchover,
        step: StepName::FenceApplication,
        effect: "sessions_of",
        at: "pg-b",
        faults: REFUSED,
        why: "a node that refuses connections runs no server: no session of the application can be there",
    },
    Proceeds {
        scenario: FailoverPrimaryDied,
        step: StepName::FenceApplication,
        effect: "sessions_of",
        at: "pg-b",
        faults: REFUSED,
        why: "a node that refuses connections runs no server: no session of the application can be there",
    },
    Proceeds {
        scenario: Switchover,
        step: StepName::StopOldPrimary,
        effect: "current_lsn",
        at: "pg-a",
        faults: ALL,
        why: "the final LSN is the shutdown checkpoint pg_controldata reads after the verified clean stop; the LSN before is only a fallback, and the CHECKPOINT only makes the shutdown quicker",
    },
    Proceeds {
        scenario: FailoverPrimaryDied,
        step: StepName::FenceApplication,
        effect: "sessions_of",
        at: "pg-a",
        faults: ALL,
        why: "a dead old primary's sessions cannot be counted; stop_old_primary verifies it stopped (or the operator confirms its host fenced) before anything is promoted",
    },
    Proceeds {
        scenario: FailoverPrimaryDied,
        step: StepName::StopOldPrimary,
        effect: "is_in_recovery",
        at: "pg-a",
        faults: ALL,
        why: "an old primary that does not answer over SQL is stopped through the daemon beside it, which verifies the stop",
    },
    Proceeds {
        scenario: FailoverPrimaryDied,
        step: StepName::FenceApplication,
        effect: "is_in_recovery",
        at: "pg-a",
        faults: ALL,
        why: "the old primary is only probed while the fence runs; a probe that verified nothing leaves stop_old_primary to decide as without one",
    },
    Proceeds {
        scenario: FailoverPrimaryDied,
        step: StepName::FenceApplication,
        effect: "node_stopped",
        at: "pg-a",
        faults: ALL,
        why: "the old primary is only probed while the fence runs; a probe that verified nothing leaves stop_old_primary to decide as without one",
    },
    Proceeds {
        scenario: Switchover,
        step: StepName::StartApplication,
        effect: "daemon_answers",
        at: "pg-a",
        faults: ALL,
        why: "the instance starts on the next host of runs_on whose daemon answers; that no other host runs one is verified after",
    },
    Proceeds {
        scenario: FailoverPrimaryDied,
        step: StepName::StartApplication,
        effect: "daemon_answers",
        at: "pg-a",
        faults: ALL,
        why: "the instance starts on the next host of runs_on whose daemon answers; that no other host runs one is verified after",
    },
];

fn proceeds(
    s: Scenario,
    step: StepName,
    effect: &str,
    at: &str,
    fault: Fault,
) -> Option<&'static str> {
    PROCEEDS
        .iter()
        .find(|r| {
            r.scenario == s
                && r.step == step
                && r.effect == effect
                && r.at == at
                && r.faults.contains(&fault)
        })
        .map(|r| r.why)
}

fn world(s: Scenario) -> Arc<FakeWorld> {
    let w = FakeWorld::new(Config::parse_str("fake.yaml", CONFIG).expect("the fake config parses"));
    if s == FailoverPrimaryDied {
        w.with(|w| {
            let a = w.nodes.get_mut("pg-a").unwrap();
            a.running = false;
            a.sessions.clear();
        });
    }
    w
}

/// Runs the steps of `op` before `step` without a fault, each of which must
/// not fail, and leaves `step` started: where a table row injects its fault.
pub(super) async fn run_up_to(ctx: &StepContext, op: &mut Operation, step: StepName, what: &str) {
    loop {
        let next = op.start_step("t").unwrap();
        if next == step {
            return;
        }
        let outcome = run_step(ctx, op, next).await;
        assert!(
            !matches!(outcome, StepOutcome::Failed(_)),
            "{what}: {next:?} before {step:?} failed without a fault: {outcome:?}"
        );
        op.finish_step(outcome, "t").unwrap();
    }
}

fn context(w: &Arc<FakeWorld>, fenced_hosts: &[&str]) -> StepContext {
    let config = w.config();
    StepContext {
        view: Arc::new(ClusterView::build(&config, &[])),
        config,
        effects: w.clone(),
        fenced_hosts: fenced_hosts.iter().map(|h| h.to_string()).collect(),
        progress: Default::default(),
    }
}

fn operation(s: Scenario, fenced_hosts: &[&str]) -> Operation {
    let request = Request {
        target: "pg-b".into(),
        reason: "table test".into(),
        force: false,
        fenced_hosts: fenced_hosts.iter().map(|h| h.to_string()).collect(),
    };
    let mut op = Operation::new("op-1".into(), s.kind(), request, "t0");
    // What preflight records (its checks are tabled in pgwarden-core).
    op.facts.old_primary = Some("pg-a".into());
    op
}

/// Runs every step before `step` (they must succeed), then `step`, with
/// `fault` on `(effect, at)` from the start of `step`. Returns its outcome
/// and the effects it called.
async fn run_until(
    w: &Arc<FakeWorld>,
    s: Scenario,
    step: StepName,
    fault: Option<(&(String, String), Fault)>,
) -> (StepOutcome, BTreeSet<(String, String)>) {
    let ctx = context(w, &[]);
    let mut op = operation(s, &[]);
    // Preflight's own decisions are tabled in pgwarden-core.
    op.start_step("t").unwrap();
    op.finish_step(StepOutcome::Succeeded("tabled elsewhere".into()), "t")
        .unwrap();
    run_up_to(&ctx, &mut op, step, &format!("{s:?}")).await;
    let before = w.call_count();
    if let Some(((effect, at), f)) = fault {
        w.fault(effect, at, f);
    }
    let outcome = run_step(&ctx, &mut op, step).await;
    (outcome, w.called_since(before))
}

/// At most one writable node, at most one application instance.
fn assert_invariants(w: &FakeWorld, what: &str) {
    w.with(|w| {
        let writable: Vec<_> = w
            .nodes
            .iter()
            .filter(|(_, n)| n.running && !n.in_recovery)
            .map(|(name, _)| name.clone())
            .collect();
        assert!(
            writable.len() <= 1,
            "{what}: two writable nodes {writable:?}"
        );
        let apps = w.hosts.values().filter(|h| h.app_running).count();
        assert!(apps <= 1, "{what}: {apps} application instances");
    });
}

const STEPS: [StepName; 6] = [
    StepName::FenceApplication,
    StepName::StopOldPrimary,
    StepName::Promote,
    StepName::ReconfigureNewPrimary,
    StepName::SwitchApplication,
    StepName::StartApplication,
];

#[tokio::test(start_paused = true)]
async fn every_fault_of_every_effect_stops_the_step_unless_tabled() {
    let mut tried = 0;
    let mut proceeded = Vec::new();
    for s in [Switchover, FailoverPrimaryDied] {
        for step in STEPS {
            let w = world(s);
            let (outcome, calls) = run_until(&w, s, step, None).await;
            assert!(
                !matches!(outcome, StepOutcome::Failed(_)),
                "{s:?} {step:?} fails without a fault: {outcome:?}"
            );
            assert!(!calls.is_empty(), "{s:?} {step:?} called no effect");
            for call in &calls {
                for fault in Fault::ALL {
                    let w = world(s);
                    let (outcome, _) = run_until(&w, s, step, Some((call, fault))).await;
                    let what = format!("{s:?} {step:?} with {fault:?} on {} {}", call.0, call.1);
                    tried += 1;
                    assert_invariants(&w, &what);
                    match (proceeds(s, step, &call.0, &call.1, fault), outcome) {
                        (None, StepOutcome::Failed(m)) => {
                            assert!(!m.is_empty(), "{what}: failed without a reason");
                        }
                        (None, other) => panic!(
                            "{what}: went on ({other:?}); fail the step, or table why going on is right"
                        ),
                        (Some(_), StepOutcome::Failed(m)) => {
                            panic!("{what}: tabled to go on, but failed: {m}")
                        }
                        (Some(why), _) => proceeded.push(format!("{what}: {why}")),
                    }
                }
            }
        }
    }
    // The table is not vacuous: every row was reached.
    for row in PROCEEDS {
        assert!(
            proceeded.iter().any(
                |p| p.starts_with(&format!("{:?} {:?}", row.scenario, row.step))
                    && p.contains(row.effect)
            ),
            "the table's row {:?} {:?} {} was never reached",
            row.scenario,
            row.step,
            row.effect
        );
    }
    assert!(tried > 100, "only {tried} faulty runs");
    eprintln!(
        "{tried} faulty runs; went on, as tabled, in {}",
        proceeded.len()
    );
}

#[tokio::test(start_paused = true)]
async fn a_whole_failover_and_switchover_end_with_one_primary_and_one_instance() {
    for s in [Switchover, FailoverPrimaryDied] {
        let w = world(s);
        let ctx = context(&w, &[]);
        let mut op = operation(s, &[]);
        while let Ok(step) = op.start_step("t") {
            let outcome = if step == StepName::Preflight {
                StepOutcome::Succeeded("tabled elsewhere".into())
            } else {
                run_step(&ctx, &mut op, step).await
            };
            assert!(
                !matches!(outcome, StepOutcome::Failed(_)),
                "{s:?} {step:?}: {outcome:?}"
            );
            op.finish_step(outcome, "t").unwrap();
            assert_invariants(&w, &format!("{s:?} after {step:?}"));
        }
        w.with(|w| {
            let b = &w.nodes["pg-b"];
            assert!(!b.in_recovery && b.timeline == 2, "{s:?}: {b:?}");
            assert!(!w.nodes["pg-a"].running, "{s:?}: pg-a still runs");
            let running: Vec<_> = w.hosts.iter().filter(|(_, h)| h.app_running).collect();
            assert_eq!(running.len(), 1, "{s:?}: {running:?}");
            for h in w.hosts.values() {
                assert_eq!(h.app_points_to, ("10.0.0.2".to_owned(), 5432), "{s:?}");
            }
        });
        assert_eq!(op.facts.new_timeline, Some(2));
    }
}

/// A failover whose old primary's host is silent (power lost): without the
/// operator's confirmation nothing is promoted; with it, the step goes on.
#[tokio::test(start_paused = true)]
async fn a_silent_old_primary_host_needs_the_operators_confirmation() {
    for confirmed in [false, true] {
        let w = world(FailoverPrimaryDied);
        w.with(|w| {
            w.hosts.get_mut("pg-a").unwrap().daemon_up = false;
        });
        let fenced: &[&str] = if confirmed { &["pg-a"] } else { &[] };
        let ctx = context(&w, fenced);
        let mut op = operation(FailoverPrimaryDied, fenced);
        let fence = run_step(&ctx, &mut op, StepName::FenceApplication).await;
        let stop = run_step(&ctx, &mut op, StepName::StopOldPrimary).await;
        match (confirmed, &fence, &stop) {
            (false, StepOutcome::Failed(m), _) => {
                assert!(m.contains("fenced_hosts"), "{m}");
            }
            (true, StepOutcome::Succeeded(_), StepOutcome::Succeeded(m)) => {
                assert!(m.contains("confirmed"), "{m}");
            }
            other => panic!("confirmed={confirmed}: {other:?}"),
        }
    }
}

/// A switchover killed after its stop of the old primary, before the
/// journal said so: the resume finds the old primary refusing connections,
/// which is what the interrupted step did, and goes on to repeat it.
#[tokio::test(start_paused = true)]
async fn a_resume_after_the_old_primary_was_stopped_goes_on() {
    let s = Switchover;
    let w = world(s);
    let ctx = context(&w, &[]);
    let mut op = operation(s, &[]);
    for step in [StepName::Preflight, StepName::FenceApplication] {
        op.start_step("t").unwrap();
        let outcome = if step == StepName::Preflight {
            StepOutcome::Succeeded("tabled elsewhere".into())
        } else {
            run_step(&ctx, &mut op, step).await
        };
        op.finish_step(outcome, "t").unwrap();
    }
    assert_eq!(op.start_step("t").unwrap(), StepName::StopOldPrimary);
    w.with(|w| w.nodes.get_mut("pg-a").unwrap().running = false);
    let held = reverify(&ctx, &op)
        .await
        .expect("the stop is what the step does");
    assert!(held.iter().any(|h| h.contains("fenced")), "{held:?}");
    // Even a count that times out there is no reason to stop: the step
    // that runs next verifies the stop before anything is promoted...
    w.fault("sessions_of", "pg-a", Fault::Timeout);
    assert!(reverify(&ctx, &op).await.is_ok());
    // ...but before the stop began, the old primary's count must be known.
    let mut before = operation(s, &[]);
    before.steps = op.steps.clone();
    before.steps[2].attempts = 0;
    assert!(reverify(&ctx, &before).await.is_err());
}

/// Resume trusts nothing done before the crash: each guard is asked again.
#[tokio::test(start_paused = true)]
async fn resume_re_verifies_the_fence_the_stop_and_the_target() {
    let s = Switchover;
    let w = world(s);
    let ctx = context(&w, &[]);
    let mut op = operation(s, &[]);
    for step in [
        StepName::Preflight,
        StepName::FenceApplication,
        StepName::StopOldPrimary,
    ] {
        op.start_step("t").unwrap();
        let outcome = if step == StepName::Preflight {
            StepOutcome::Succeeded("tabled elsewhere".into())
        } else {
            run_step(&ctx, &mut op, step).await
        };
        op.finish_step(outcome, "t").unwrap();
    }
    let held = reverify(&ctx, &op).await.expect("nothing changed");
    assert_eq!(held.len(), 3, "{held:?}");
    // Someone started the application by hand meanwhile.
    w.with(|w| w.hosts.get_mut("pg-a").unwrap().app_running = true);
    let e = reverify(&ctx, &op).await.unwrap_err();
    assert!(e.contains("runs again"), "{e}");
    w.with(|w| w.hosts.get_mut("pg-a").unwrap().app_running = false);
    // The old primary came back as a primary.
    w.with(|w| w.nodes.get_mut("pg-a").unwrap().running = true);
    let e = reverify(&ctx, &op).await.unwrap_err();
    assert!(e.contains("answers as a primary again"), "{e}");
    w.with(|w| w.nodes.get_mut("pg-a").unwrap().running = false);
    // Each guard's own answer going wrong stops the resume too, unless it
    // is the old primary not answering (that is what "stopped" looks like).
    for (effect, at) in [
        ("app_status", "pg-a"),
        ("app_status", "pg-b"),
        ("is_in_recovery", "pg-b"),
        ("sessions_of", "pg-b"),
    ] {
        for fault in Fault::ALL {
            let w2 = world(s);
            w2.with(|x| {
                w.with(|y| {
                    x.nodes = y.nodes.clone();
                    x.hosts = y.hosts.clone();
                })
            });
            if effect == "sessions_of" && fault == Fault::Unreachable {
                continue; // nothing listens: no session there (tabled above)
            }
            w2.fault(effect, at, fault);
            let ctx2 = context(&w2, &[]);
            assert!(
                reverify(&ctx2, &op).await.is_err(),
                "resume went on with {fault:?} on {effect} {at}"
            );
        }
    }
}

/// The effects a step may call that change the world, as the fake names
/// them: the ones `effects/guarded.rs` checks the lock before.
const MUTATING: &[&str] = &[
    "alter_system",
    "app_config",
    "checkpoint",
    "ensure_slot",
    "reload",
    "request_promotion",
    "stop_local_node",
    "terminate_sessions_of",
    "follow",
    "forward",
    "post",
    "pgbouncer",
    "stop_within",
    "node_stop",
    "node_start",
    "app_stop",
    "app_start",
    "app_disable",
    "app_enable",
];

/// A lock that holds for its first `holds` checks, then is lost.
struct LostAfter {
    holds: usize,
    checks: std::sync::Mutex<Vec<usize>>,
    world: Arc<FakeWorld>,
}

#[async_trait::async_trait]
impl crate::effects::guarded::LockCheck for LostAfter {
    async fn check(&self) -> Result<(), String> {
        let mut c = self.checks.lock().unwrap();
        c.push(self.world.call_count());
        if c.len() > self.holds {
            Err("the etcd lock (token 7) is gone: its lease expired".into())
        } else {
            Ok(())
        }
    }
    fn held_until(&self) -> Option<std::time::Instant> {
        None
    }
}

/// Runs the steps before `step` unguarded, then `step` with its effects
/// behind the guard of a lock that holds for `holds` checks. The outcome,
/// the world's call count at each check, and the calls after the step began.
async fn run_guarded(
    s: Scenario,
    step: StepName,
    holds: usize,
) -> (StepOutcome, Vec<usize>, Vec<(String, String)>) {
    let w = world(s);
    let plain = context(&w, &[]);
    let mut op = operation(s, &[]);
    op.start_step("t").unwrap();
    op.finish_step(StepOutcome::Succeeded("tabled elsewhere".into()), "t")
        .unwrap();
    run_up_to(&plain, &mut op, step, &format!("{s:?}")).await;
    let lock = Arc::new(LostAfter {
        holds,
        checks: Default::default(),
        world: w.clone(),
    });
    let guarded = Arc::new(crate::effects::guarded::Guarded::new(
        w.clone(),
        lock.clone(),
    ));
    let ctx = StepContext {
        effects: guarded.clone(),
        ..context(&w, &[])
    };
    let before = w.call_count();
    let mut outcome = run_step(&ctx, &mut op, step).await;
    // What the run loop does (ops/mod.rs): a refused effect fails the step.
    if let Some(why) = guarded.refused() {
        if !matches!(outcome, StepOutcome::Failed(_)) {
            outcome = StepOutcome::Failed(why);
        }
    }
    let calls = w.with(|w| w.calls[before..].to_vec());
    let checks = lock
        .checks
        .lock()
        .unwrap()
        .iter()
        .map(|c| c - before)
        .collect();
    assert_invariants(&w, &format!("{s:?} {step:?} lock lost after {holds}"));
    (outcome, checks, calls)
}

#[tokio::test(start_paused = true)]
async fn the_lock_lost_between_two_effects_of_a_step_stops_before_the_second() {
    let mut stopped = 0;
    for s in [Switchover, FailoverPrimaryDied] {
        for step in STEPS {
            // Held throughout: the guard checks before each mutating effect
            // and changes nothing else.
            let (outcome, checks, calls) = run_guarded(s, step, usize::MAX).await;
            assert!(
                !matches!(outcome, StepOutcome::Failed(_)),
                "{s:?} {step:?} fails behind a held lock: {outcome:?}"
            );
            let mutating = calls
                .iter()
                .filter(|(e, _)| MUTATING.contains(&e.as_str()))
                .count();
            assert_eq!(
                checks.len(),
                mutating,
                "{s:?} {step:?}: one check per mutating effect: {calls:?}"
            );
            // Lost after each check in turn: nothing mutating reaches the
            // world after the refused check, and the step fails saying why.
            for holds in 0..checks.len() {
                let (outcome, checks, calls) = run_guarded(s, step, holds).await;
                let what = format!("{s:?} {step:?} lock lost after {holds} effects");
                let StepOutcome::Failed(m) = outcome else {
                    panic!("{what}: went on: {outcome:?}")
                };
                assert!(
                    m.contains("was not done") && m.contains("token 7"),
                    "{what}: {m}"
                );
                let refused_at = *checks.last().unwrap();
                let after: Vec<_> = calls[refused_at..]
                    .iter()
                    .filter(|(e, _)| MUTATING.contains(&e.as_str()))
                    .collect();
                assert!(after.is_empty(), "{what}: acted after the loss: {after:?}");
                assert_eq!(
                    checks.len(),
                    holds + 1,
                    "{what}: asked again after a refusal"
                );
                stopped += 1;
            }
        }
    }
    assert!(stopped > 10, "only {stopped} runs lost the lock mid-step");
    eprintln!("{stopped} runs lost the lock before a side effect; each stopped there");
}

/// Runs `steps` of `op` in order until one fails; their outcomes.
async fn run_steps(ctx: &StepContext, op: &mut Operation, steps: &[StepName]) -> Vec<StepOutcome> {
    let mut out = Vec::new();
    for &step in steps {
        assert_eq!(op.start_step("t").unwrap(), step);
        let outcome = if step == StepName::Preflight {
            StepOutcome::Succeeded("tabled elsewhere".into())
        } else {
            run_step(ctx, op, step).await
        };
        let failed = matches!(outcome, StepOutcome::Failed(_));
        op.finish_step(outcome.clone(), "t").unwrap();
        out.push(outcome);
        if failed {
            break;
        }
    }
    out
}

/// A failover's fence and its probe of the old primary run at the same
/// time. Each row: the old primary dead or alive, what goes wrong, and
/// what must follow. In every row: nothing is promoted unless both the
/// fence and the old primary were verified, and an old primary that was
/// alive is never stopped unless the fence was verified first.
#[tokio::test(start_paused = true)]
async fn the_fence_and_the_old_primary_probe_of_a_failover_interleave_safely() {
    struct Row {
        what: &'static str,
        old_alive: bool,
        faults: &'static [(&'static str, &'static str, Fault)],
        probe: &'static str,
        /// The first step that fails, or None: the promotion happens.
        fails_at: Option<StepName>,
        /// stop_old_primary must ask the daemon beside pg-a to stop it.
        asks_stop: bool,
    }
    const FENCE_FAILS: (&str, &str, Fault) = ("app_stop", "pg-a", Fault::Error);
    let rows = [
        Row {
            what: "both verified: dead old primary, fence ok",
            old_alive: false,
            faults: &[],
            probe: "stopped",
            fails_at: None,
            asks_stop: false,
        },
        Row {
            what: "fence fails while the probe verified the old primary stopped",
            old_alive: false,
            faults: &[FENCE_FAILS],
            probe: "stopped",
            fails_at: Some(StepName::FenceApplication),
            asks_stop: false,
        },
        Row {
            what: "fence fails while the old primary is alive (forced failover)",
            old_alive: true,
            faults: &[FENCE_FAILS],
            probe: "alive",
            fails_at: Some(StepName::FenceApplication),
            asks_stop: false,
        },
        Row {
            what: "fence ok, old primary alive: stopped after the fence",
            old_alive: true,
            faults: &[],
            probe: "alive",
            fails_at: None,
            asks_stop: false,
        },
        Row {
            what: "fence ok, probe unknown: stop_old_primary asks the daemon to stop it",
            old_alive: false,
            faults: &[("node_stopped", "pg-a", Fault::Unknown)],
            probe: "unknown",
            fails_at: None,
            asks_stop: true,
        },
        Row {
            what: "fence ok, probe unknown, the stop not confirmed either",
            old_alive: false,
            faults: &[
                ("node_stopped", "pg-a", Fault::Timeout),
                ("stop_within", "pg-a", Fault::Timeout),
            ],
            probe: "unknown",
            fails_at: Some(StepName::StopOldPrimary),
            asks_stop: true,
        },
        Row {
            what: "both fail",
            old_alive: false,
            faults: &[FENCE_FAILS, ("node_stopped", "pg-a", Fault::Error)],
            probe: "unknown",
            fails_at: Some(StepName::FenceApplication),
            asks_stop: false,
        },
        Row {
            what: "both fail while the old primary is alive (the probe hangs: cut off after the fence)",
            old_alive: true,
            faults: &[FENCE_FAILS, ("is_in_recovery", "pg-a", Fault::Timeout)],
            probe: "unknown",
            fails_at: Some(StepName::FenceApplication),
            asks_stop: false,
        },
    ];
    let steps = [
        StepName::Preflight,
        StepName::FenceApplication,
        StepName::StopOldPrimary,
        StepName::Promote,
    ];
    for row in rows {
        let w = world(if row.old_alive {
            Switchover
        } else {
            FailoverPrimaryDied
        });
        for (effect, at, fault) in row.faults {
            w.fault(effect, at, *fault);
        }
        let ctx = context(&w, &[]);
        let mut op = operation(FailoverPrimaryDied, &[]);
        let before = w.call_count();
        let outcomes = run_steps(&ctx, &mut op, &steps).await;
        let what = row.what;
        assert_invariants(&w, what);
        let failed_at = outcomes
            .iter()
            .position(|o| matches!(o, StepOutcome::Failed(_)))
            .map(|i| steps[i]);
        assert_eq!(failed_at, row.fails_at, "{what}: {outcomes:?}");
        let probe = op.facts.old_primary_probe.as_deref();
        assert_eq!(probe, Some(row.probe), "{what}: {:?}", op.facts);
        assert!(op.facts.old_primary_probe_at.is_some(), "{what}");
        assert_eq!(
            op.facts.fence_verified_at.is_some(),
            row.fails_at != Some(StepName::FenceApplication),
            "{what}: the fence's verification is journaled only when it held"
        );
        let calls = w.called_since(before);
        let asked_stop = calls.contains(&("stop_within".into(), "pg-a".into()));
        assert_eq!(asked_stop, row.asks_stop, "{what}: {calls:?}");
        w.with(|w| {
            let (a, b) = (&w.nodes["pg-a"], &w.nodes["pg-b"]);
            if row.fails_at.is_some() {
                assert!(b.in_recovery, "{what}: pg-b promoted");
            } else {
                assert!(!b.in_recovery, "{what}: pg-b not promoted");
                assert!(!a.running, "{what}: pg-a runs beside the new primary");
            }
            if row.old_alive && row.fails_at == Some(StepName::FenceApplication) {
                assert!(
                    a.running,
                    "{what}: a live old primary was stopped before the fence was verified"
                );
            }
        });
    }
}

/// The probe's "stopped" is trusted for a short while only: a stale one
/// (a fence that took long, a resume) makes stop_old_primary ask again.
#[tokio::test(start_paused = true)]
async fn a_stale_probe_is_asked_again() {
    let w = world(FailoverPrimaryDied);
    let ctx = context(&w, &[]);
    let mut op = operation(FailoverPrimaryDied, &[]);
    let done = run_steps(
        &ctx,
        &mut op,
        &[StepName::Preflight, StepName::FenceApplication],
    )
    .await;
    assert!(
        matches!(done.last(), Some(StepOutcome::Succeeded(_))),
        "{done:?}"
    );
    assert_eq!(op.facts.old_primary_probe.as_deref(), Some("stopped"));
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    op.facts.old_primary_probe_at = Some(humantime::format_rfc3339_millis(long_ago).to_string());
    let before = w.call_count();
    let stop = run_steps(&ctx, &mut op, &[StepName::StopOldPrimary]).await;
    assert!(matches!(stop[0], StepOutcome::Succeeded(_)), "{stop:?}");
    assert!(
        w.called_since(before)
            .contains(&("stop_within".into(), "pg-a".into())),
        "a probe a minute old was trusted"
    );
}
