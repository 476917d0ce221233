//! Operations as data: a failover, switchover or rejoin is a kind, an ordered
//! list of named steps, and the state of each, journaled as it changes.
//!
//! This module holds only the transitions; the daemon's operation manager (`ops/`)
//! persists the operation before and after every transition and performs the
//! side effects. The order it follows, which is what makes a crash at any
//! point safe, is:
//!
//! 1. [`Operation::start_step`] and persist (fsync, rename): intent is on disk.
//! 2. Check the real state; act only if the step's effect is not there yet
//!    (every step is idempotent: a promoted node is not promoted again).
//! 3. [`Operation::finish_step`] with the outcome, and persist.
//!
//! A daemon killed between 1 and 3 finds the step `running` on restart;
//! [`Operation::interrupt`] marks the operation `interrupted` and
//! [`Operation::resume`] runs that step again, where step 2 makes it safe.

use std::fmt;

use serde::{Deserialize, Serialize};

mod facts;
pub use facts::{Facts, ReplicaFacts};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// The primary is down: promote the standby.
    Failover,
    /// The primary is healthy: hand over with zero data loss.
    Switchover,
    /// Turn a former primary into the standby of the current one.
    Rejoin,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Failover => "failover",
            OperationKind::Switchover => "switchover",
            OperationKind::Rejoin => "rejoin",
        }
    }

    /// The steps of this kind, in order.
    pub fn steps(self) -> &'static [StepName] {
        use StepName::*;
        match self {
            OperationKind::Failover | OperationKind::Switchover => &[
                Preflight,
                FenceApplication,
                StopOldPrimary,
                Promote,
                ReconfigureNewPrimary,
                SwitchApplication,
                StartApplication,
                Done,
            ],
            OperationKind::Rejoin => &[
                Preflight,
                StopNode,
                RebuildDataDirectory,
                ConfigureStandby,
                StartStandby,
                WaitStreaming,
                EnableSynchronous,
                Done,
            ],
        }
    }
}

impl OperationKind {
    /// The steps of this kind for a cluster with (`replicas`) or without
    /// `role: replica` nodes: a failover or switchover then re-points them
    /// after the application is back (the pair comes first; a replica that
    /// cannot follow is reported, and fails nothing).
    pub fn plan(self, replicas: bool) -> Vec<StepName> {
        let mut steps = self.steps().to_vec();
        if replicas && self != OperationKind::Rejoin {
            steps.insert(steps.len() - 1, StepName::RepointReplicas);
        }
        steps
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The named steps of DESIGN.md's state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepName {
    Preflight,
    FenceApplication,
    StopOldPrimary,
    Promote,
    ReconfigureNewPrimary,
    SwitchApplication,
    StartApplication,
    StopNode,
    RebuildDataDirectory,
    ConfigureStandby,
    StartStandby,
    WaitStreaming,
    EnableSynchronous,
    /// Point every `role: replica` node at the new primary (failover and
    /// switchover of a cluster with replicas).
    RepointReplicas,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Running,
    Succeeded,
    Failed,
    /// Found `running` when a daemon started: it was killed mid-operation.
    Interrupted,
    Aborted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

/// One step and what happened to it. Times are RFC 3339 text from the caller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: StepName,
    pub state: StepState,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub message: Option<String>,
    /// How many times the step was started (more than 1 after a resume).
    #[serde(default)]
    pub attempts: u32,
    /// The long work of a running step (a pg_basebackup copy), updated in
    /// memory while it runs; a finished step keeps its final figure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::progress::Progress>,
}

/// What the operator asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The node to promote (failover, switchover) or to rejoin.
    pub target: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub force: bool,
    /// Hosts (node names) whose daemon does not answer and that the
    /// operator confirms are fenced (powered off, or PostgreSQL and the
    /// application stopped and disabled there): what pgwarden cannot verify.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fenced_hosts: Vec<String>,
}

/// One operation: the journal document of DESIGN.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    pub kind: OperationKind,
    pub state: OperationState,
    pub request: Request,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub steps: Vec<Step>,
    /// Facts recorded by steps for later steps and for resume (e.g. the
    /// old primary's final LSN, the new timeline); a map of strings on
    /// the wire.
    #[serde(default)]
    pub facts: Facts,
}

/// A transition that the operation's state does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("operation {id} is {state:?}: cannot {action}")]
pub struct TransitionError {
    pub id: String,
    pub state: OperationState,
    pub action: &'static str,
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    Succeeded(String),
    /// Nothing to do: the effect was already there (e.g. after a resume).
    Skipped(String),
    Failed(String),
}

impl Operation {
    pub fn new(id: String, kind: OperationKind, request: Request, now: &str) -> Operation {
        Operation::planned(id, kind, request, now, kind.steps())
    }

    /// A new operation with the steps of `plan` (see [`OperationKind::plan`]).
    pub fn planned(
        id: String,
        kind: OperationKind,
        request: Request,
        now: &str,
        plan: &[StepName],
    ) -> Operation {
        let steps = plan
            .iter()
            .map(|&name| Step {
                name,
                state: StepState::Pending,
                started_at: None,
                finished_at: None,
                message: None,
                attempts: 0,
                progress: None,
            })
            .collect();
        Operation {
            id,
            kind,
            state: OperationState::Running,
            request,
            created_at: now.to_owned(),
            finished_at: None,
            steps,
            facts: Default::default(),
        }
    }

    fn refuse(&self, action: &'static str) -> TransitionError {
        TransitionError {
            id: self.id.clone(),
            state: self.state,
            action,
        }
    }

    /// The step to run now: the first that has not succeeded or been
    /// skipped, while the operation runs.
    pub fn next_step(&self) -> Option<usize> {
        if self.state != OperationState::Running {
            return None;
        }
        self.steps
            .iter()
            .position(|s| !matches!(s.state, StepState::Succeeded | StepState::Skipped))
    }

    /// Marks the next step running (persist before acting).
    pub fn start_step(&mut self, now: &str) -> Result<StepName, TransitionError> {
        let i = self
            .next_step()
            .ok_or_else(|| self.refuse("start a step"))?;
        let step = &mut self.steps[i];
        step.state = StepState::Running;
        step.started_at = Some(now.to_owned());
        step.finished_at = None;
        step.attempts += 1;
        step.progress = None;
        Ok(step.name)
    }

    /// Records how the running step ended. A failure stops the operation;
    /// the last step succeeding finishes it.
    pub fn finish_step(&mut self, outcome: StepOutcome, now: &str) -> Result<(), TransitionError> {
        let i = self
            .steps
            .iter()
            .position(|s| s.state == StepState::Running)
            .filter(|_| self.state == OperationState::Running)
            .ok_or_else(|| self.refuse("finish a step"))?;
        let step = &mut self.steps[i];
        step.finished_at = Some(now.to_owned());
        let (state, message) = match outcome {
            StepOutcome::Succeeded(m) => (StepState::Succeeded, m),
            StepOutcome::Skipped(m) => (StepState::Skipped, m),
            StepOutcome::Failed(m) => (StepState::Failed, m),
        };
        step.state = state;
        step.message = Some(message);
        if state == StepState::Failed {
            self.state = OperationState::Failed;
            self.finished_at = Some(now.to_owned());
        } else if self.next_step().is_none() {
            self.state = OperationState::Succeeded;
            self.finished_at = Some(now.to_owned());
        }
        Ok(())
    }

    /// On daemon start: an operation still `running` in the journal was cut
    /// off by a crash or kill. Returns whether anything changed.
    pub fn interrupt(&mut self) -> bool {
        if self.state == OperationState::Running {
            self.state = OperationState::Interrupted;
            true
        } else {
            false
        }
    }

    /// Continues an interrupted or failed operation from the step that did
    /// not finish. That step runs again; steps that succeeded do not.
    pub fn resume(&mut self) -> Result<(), TransitionError> {
        if !matches!(
            self.state,
            OperationState::Interrupted | OperationState::Failed
        ) {
            return Err(self.refuse("resume"));
        }
        for s in &mut self.steps {
            if matches!(s.state, StepState::Running | StepState::Failed) {
                s.state = StepState::Pending;
            }
        }
        self.state = OperationState::Running;
        self.finished_at = None;
        Ok(())
    }

    /// Gives up an interrupted or failed operation; the steps not done are
    /// marked skipped so the journal says plainly what never happened.
    pub fn abort(&mut self, now: &str) -> Result<(), TransitionError> {
        if !matches!(
            self.state,
            OperationState::Interrupted | OperationState::Failed
        ) {
            return Err(self.refuse("abort"));
        }
        for s in &mut self.steps {
            if matches!(s.state, StepState::Pending | StepState::Running) {
                s.state = StepState::Skipped;
                s.message
                    .get_or_insert_with(|| "not run: the operation was aborted".into());
            }
        }
        self.state = OperationState::Aborted;
        self.finished_at = Some(now.to_owned());
        Ok(())
    }

    /// Still holds the operation lock: running, or stopped half-way and
    /// waiting for an operator to resume or abort it.
    pub fn is_open(&self) -> bool {
        matches!(
            self.state,
            OperationState::Running | OperationState::Interrupted | OperationState::Failed
        )
    }

    /// Whether a step already completed (succeeded or was skipped).
    pub fn completed(&self, name: StepName) -> bool {
        self.steps
            .iter()
            .any(|s| s.name == name && matches!(s.state, StepState::Succeeded | StepState::Skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OperationKind) -> Operation {
        let req = Request {
            target: "pg-b".into(),
            reason: "test".into(),
            force: false,
            fenced_hosts: Vec::new(),
        };
        Operation::new("op-1".into(), kind, req, "t0")
    }

    #[test]
    fn replicas_are_re_pointed_after_the_application_is_back() {
        use StepName::*;
        let plan = OperationKind::Switchover.plan(true);
        assert_eq!(
            &plan[plan.len() - 3..],
            [StartApplication, RepointReplicas, Done]
        );
        assert_eq!(
            OperationKind::Failover.plan(false),
            OperationKind::Failover.steps()
        );
        assert_eq!(
            OperationKind::Rejoin.plan(true),
            OperationKind::Rejoin.steps()
        );
        let req = Request {
            target: "pg-b".into(),
            reason: String::new(),
            force: false,
            fenced_hosts: Vec::new(),
        };
        let o = Operation::planned("op-1".into(), OperationKind::Failover, req, "t0", &plan);
        assert_eq!(o.steps.len(), plan.len());
    }

    fn run_all(o: &mut Operation) {
        while o.next_step().is_some() {
            o.start_step("t").unwrap();
            o.finish_step(StepOutcome::Succeeded("ok".into()), "t")
                .unwrap();
        }
    }

    #[test]
    fn every_step_succeeding_finishes_the_operation() {
        for kind in [
            OperationKind::Failover,
            OperationKind::Switchover,
            OperationKind::Rejoin,
        ] {
            let mut o = op(kind);
            assert_eq!(o.steps.len(), kind.steps().len());
            run_all(&mut o);
            assert_eq!(o.state, OperationState::Succeeded, "{kind}");
            assert!(o
                .steps
                .iter()
                .all(|s| s.state == StepState::Succeeded && s.attempts == 1));
            assert_eq!(o.finished_at.as_deref(), Some("t"));
            assert!(!o.is_open());
        }
    }

    #[test]
    fn a_failing_step_stops_everything_after_it() {
        let kind = OperationKind::Failover;
        for fail_at in 0..kind.steps().len() {
            let mut o = op(kind);
            for i in 0..=fail_at {
                let name = o.start_step("t").unwrap();
                assert_eq!(name, kind.steps()[i]);
                let outcome = if i == fail_at {
                    StepOutcome::Failed("boom".into())
                } else {
                    StepOutcome::Succeeded("ok".into())
                };
                o.finish_step(outcome, "t").unwrap();
            }
            assert_eq!(o.state, OperationState::Failed);
            assert_eq!(o.next_step(), None, "nothing runs after a failure");
            assert!(o.start_step("t").is_err());
            assert_eq!(o.steps[fail_at].state, StepState::Failed);
            assert_eq!(o.steps[fail_at].message.as_deref(), Some("boom"));
            assert!(o.steps[fail_at + 1..]
                .iter()
                .all(|s| s.state == StepState::Pending));
            assert!(
                o.is_open(),
                "a failed operation holds the lock until resumed or aborted"
            );
        }
    }

    /// A crash at every point: after `start_step` was journaled but before
    /// `finish_step`. Resume re-runs exactly that step, and no completed one.
    #[test]
    fn a_crash_in_any_step_resumes_at_that_step_only() {
        for kind in [
            OperationKind::Failover,
            OperationKind::Switchover,
            OperationKind::Rejoin,
        ] {
            for crash_at in 0..kind.steps().len() {
                let mut o = op(kind);
                for _ in 0..crash_at {
                    o.start_step("t").unwrap();
                    o.finish_step(StepOutcome::Succeeded("ok".into()), "t")
                        .unwrap();
                }
                o.start_step("t").unwrap();
                // The journal as written before the crash, read back on restart.
                let text = serde_json::to_string(&o).unwrap();
                let mut back: Operation = serde_json::from_str(&text).unwrap();
                assert_eq!(back, o);
                assert!(back.interrupt());
                assert_eq!(back.state, OperationState::Interrupted);
                assert_eq!(
                    back.next_step(),
                    None,
                    "nothing runs until an operator resumes"
                );
                back.resume().unwrap();
                assert_eq!(back.next_step(), Some(crash_at));
                run_all(&mut back);
                assert_eq!(back.state, OperationState::Succeeded);
                for (i, s) in back.steps.iter().enumerate() {
                    let want = if i == crash_at { 2 } else { 1 };
                    assert_eq!(s.attempts, want, "{kind} crash at {crash_at}: step {i}");
                }
            }
        }
    }

    #[test]
    fn a_failed_operation_resumes_at_the_failed_step() {
        let mut o = op(OperationKind::Switchover);
        o.start_step("t").unwrap();
        o.finish_step(StepOutcome::Succeeded("ok".into()), "t")
            .unwrap();
        o.start_step("t").unwrap();
        o.finish_step(StepOutcome::Failed("app still has sessions".into()), "t")
            .unwrap();
        o.resume().unwrap();
        assert_eq!(o.next_step(), Some(1));
        assert!(o.completed(StepName::Preflight));
        assert!(!o.completed(StepName::FenceApplication));
    }

    #[test]
    fn skipped_steps_count_as_done() {
        let mut o = op(OperationKind::Failover);
        o.start_step("t").unwrap();
        o.finish_step(StepOutcome::Skipped("already".into()), "t")
            .unwrap();
        assert_eq!(o.next_step(), Some(1));
        assert!(o.completed(StepName::Preflight));
    }

    #[test]
    fn abort_marks_what_never_happened() {
        let mut o = op(OperationKind::Failover);
        o.start_step("t").unwrap();
        o.interrupt();
        o.abort("t9").unwrap();
        assert_eq!(o.state, OperationState::Aborted);
        assert!(o.steps.iter().all(|s| s.state == StepState::Skipped));
        assert!(!o.is_open());
        assert!(o.resume().is_err(), "an aborted operation stays aborted");
    }

    #[test]
    fn transitions_refuse_the_wrong_state() {
        let mut o = op(OperationKind::Failover);
        assert!(o.resume().is_err(), "a running operation is not resumed");
        assert!(
            o.abort("t").is_err(),
            "a running operation is not aborted from outside"
        );
        assert!(
            o.finish_step(StepOutcome::Succeeded("x".into()), "t")
                .is_err(),
            "no step runs"
        );
        run_all(&mut o);
        assert!(
            !o.interrupt(),
            "a finished operation is not interrupted by a restart"
        );
        let e = o.resume().unwrap_err();
        assert_eq!(e.to_string(), "operation op-1 is Succeeded: cannot resume");
    }

    #[test]
    fn the_journal_uses_the_names_of_the_contract() {
        let o = op(OperationKind::Failover);
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["kind"], "failover");
        assert_eq!(v["state"], "running");
        assert_eq!(v["steps"][1]["name"], "fence_application");
        assert_eq!(v["steps"][1]["state"], "pending");
        assert_eq!(v["steps"][7]["name"], "done");
    }
}
