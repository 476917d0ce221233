//! Preflight of a failover or switchover: a list of named checks, each with
//! a verdict and a sentence, computed from the config and the cluster view.
//!
//! Pure: what needs I/O (reading the application's other config files, the
//! environment of its service, the peer's answer to the lock request) is
//! gathered by the caller and passed in as [`PreflightInput`] fields.

use serde::Serialize;

use crate::config::Config;
use crate::operation::{OperationKind, Request};
use crate::view::{ClusterView, Role};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    /// Reported, does not block.
    Warn,
    /// Blocks the operation (unless `force` lifts this check).
    Fail,
}

/// One named check and its verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub message: String,
    /// `force` lifts this check (a `fail` it would turn into a `warn`), or
    /// lifted it (a `warn` ending in "(ignored: force)"): so the CLI can
    /// say exactly what `--force` changes before anyone asks for it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub forceable: bool,
}

/// Another place that sets the application's database host or port and so
/// could override the switch (inmanta reads every `*.cfg` of its directory in
/// name order, then `~/.inmanta.cfg`, and the environment wins over all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shadow {
    /// A file path, or `environment variable INMANTA_DATABASE_HOST`.
    pub source: String,
    pub key: String,
}

/// Everything preflight looks at.
pub struct PreflightInput<'a> {
    pub config: &'a Config,
    pub view: &'a ClusterView,
    pub kind: OperationKind,
    pub request: &'a Request,
    /// The id of an operation that still holds the lock, if any.
    pub open_operation: Option<&'a str>,
    /// Settings elsewhere that would override the rewritten config file.
    pub shadows: &'a [Shadow],
    /// Why the application's config file could not be rewritten (missing,
    /// no such section, directory not writable, owner not keepable), if so.
    /// Found before the fence: after promotion it would be too late.
    pub config_file_blocker: Option<&'a str>,
    /// Hosts (node names) whose daemon did not answer just now.
    pub silent_hosts: &'a [String],
}

fn pass(name: &'static str, message: impl Into<String>) -> Check {
    Check {
        name,
        verdict: Verdict::Pass,
        message: message.into(),
        forceable: false,
    }
}

fn fail(name: &'static str, message: impl Into<String>) -> Check {
    Check {
        name,
        verdict: Verdict::Fail,
        message: message.into(),
        forceable: false,
    }
}

/// A check that `force` may lift: it then passes with a warning.
fn forceable(force: bool, name: &'static str, message: String) -> Check {
    if force {
        Check {
            name,
            verdict: Verdict::Warn,
            message: format!("{message} (ignored: force)"),
            forceable: true,
        }
    } else {
        Check {
            forceable: true,
            ..fail(name, message)
        }
    }
}

/// Runs every check; the operation may proceed iff none is `Fail`.
pub fn preflight(input: &PreflightInput) -> Vec<Check> {
    let PreflightInput {
        config,
        view,
        kind,
        request,
        open_operation,
        shadows,
        config_file_blocker,
        silent_hosts,
    } = *input;
    let force = request.force;
    let target = request.target.as_str();
    let mut out = Vec::new();

    out.push(match open_operation {
        None => pass("no_other_operation", "no other operation is open"),
        Some(id) => fail(
            "no_other_operation",
            format!("operation {id} is still open: resume or abort it first"),
        ),
    });

    // Only with replicas: a pair-only cluster's config always names its roles.
    if config.replicas().next().is_some() {
        let promoted: Vec<&str> = view
            .nodes
            .iter()
            .filter(|n| config.is_replica(&n.name) && n.role == Role::Primary)
            .map(|n| n.name.as_str())
            .collect();
        out.push(match promoted.first() {
            None => pass(
                "roles_match_config",
                "no `role: replica` node runs as a primary",
            ),
            Some(name) => fail(
                "roles_match_config",
                crate::health::config_role_mismatch_message(name),
            ),
        });
    }

    if kind == OperationKind::Rejoin {
        rejoin_checks(config, view, target, &mut out);
        return out;
    }

    out.push(host_fenced_check(config, request, silent_hosts));

    out.push(match (&config.application, config.pgbouncer()) {
        (_, Some(pb)) => pass(
            "application_configured",
            format!(
                "the application keeps running: pgbouncer ({}) will be paused and re-pointed",
                pb.hosts(&config.nodes).join(", ")
            ),
        ),
        (Some(app), None) => pass("application_configured", format!("the application {} will be fenced", app.name)),
        (None, None) => fail(
            "application_configured",
            "no `application` (or `proxy.pgbouncer`) section in the config: pgwarden never promotes without fencing the application",
        ),
    });

    let Some(t) = view.node(target) else {
        let names: Vec<&str> = view.nodes.iter().map(|n| n.name.as_str()).collect();
        out.push(fail(
            "target_is_standby",
            format!(
                "{target} is not a node of this cluster ({})",
                names.join(", ")
            ),
        ));
        return out;
    };
    out.push(match (t.reachable, t.role) {
        (true, Role::Standby) => pass(
            "target_is_standby",
            format!("{target} is a reachable standby"),
        ),
        (true, Role::Replica) => pass(
            "target_is_standby",
            format!("{target} is a reachable replica"),
        ),
        (true, Role::Primary) => fail(
            "target_is_standby",
            format!("{target} is already a primary"),
        ),
        _ => fail(
            "target_is_standby",
            format!(
                "{target} does not answer: {}",
                t.last_error.as_deref().unwrap_or("not polled yet")
            ),
        ),
    });

    // An asynchronous replica lacks whatever it had not yet received: only
    // the operator, naming it and forcing, accepts that (Password Manager
    // Pro's last resort when the primary and the standby are both gone).
    if config.is_replica(target) {
        out.push(forceable(
            force,
            "target_not_replica",
            format!(
                "{target} is a `role: replica` node, an asynchronous replica: commits acknowledged by the pair may be missing on it; promote the standby, or force to accept the loss"
            ),
        ));
    }

    // The node(s) the target takes over from: the pair, never a replica.
    let others: Vec<_> = view
        .nodes
        .iter()
        .filter(|n| n.name != target && !config.is_replica(&n.name))
        .collect();
    let primary = others.iter().find(|n| n.role == Role::Primary);

    if let Some(ts) = &t.snapshot {
        let mismatched: Vec<&str> = view
            .nodes
            .iter()
            .filter(|n| n.name != target)
            .filter(|n| {
                n.snapshot
                    .as_ref()
                    .is_some_and(|s| s.system_identifier != ts.system_identifier)
            })
            .map(|n| n.name.as_str())
            .collect();
        out.push(if mismatched.is_empty() {
            pass(
                "same_system_identifier",
                "every reachable node is a copy of one cluster",
            )
        } else {
            fail(
                "same_system_identifier",
                format!(
                    "{} is not a copy of the same cluster as {target}",
                    mismatched.join(", ")
                ),
            )
        });
    }

    match kind {
        OperationKind::Failover => {
            match primary {
                Some(p) => out.push(forceable(
                    force,
                    "primary_down",
                    format!(
                        "{} is a reachable primary: use a switchover (zero data loss), or force",
                        p.name
                    ),
                )),
                None => {
                    let not_down: Vec<&str> = others
                        .iter()
                        .filter(|n| !n.down)
                        .map(|n| n.name.as_str())
                        .collect();
                    out.push(if not_down.is_empty() {
                        pass(
                            "primary_down",
                            format!(
                                "the primary has not answered for {} polls",
                                config.poll.failure_threshold
                            ),
                        )
                    } else {
                        forceable(
                            force,
                            "primary_down",
                            format!(
                                "{} has not yet missed {} polls in a row: wait, or force",
                                not_down.join(", "),
                                config.poll.failure_threshold
                            ),
                        )
                    });
                }
            }
            if let Some(ts) = &t.snapshot {
                // The target promotes only after replaying what it received.
                let backlog = match (ts.replay_lsn, ts.receive_lsn) {
                    (Some(replay), Some(recv)) => replay.bytes_until(recv),
                    _ => 0,
                };
                out.push(lag_check(
                    force,
                    config,
                    target,
                    backlog,
                    "not yet replayed",
                ));
            }
            out.push(primary_wal_check(force, config, view, target));
        }
        OperationKind::Switchover => {
            match primary {
                Some(p) if p.reachable => out.push(pass(
                    "primary_healthy",
                    format!("{} is a reachable primary", p.name),
                )),
                _ => out.push(fail(
                    "primary_healthy",
                    "no reachable primary: a switchover needs one; use a failover",
                )),
            }
            let link = primary.and_then(|p| p.replication.iter().find(|l| l.standby == target));
            out.push(match link {
                Some(l) if l.streaming && l.sync => pass(
                    "target_synchronous",
                    format!("{target} streams synchronously"),
                ),
                Some(l) if l.streaming => forceable(
                    force,
                    "target_synchronous",
                    format!("{target} streams but is not synchronous: commits could be lost"),
                ),
                _ => fail(
                    "target_synchronous",
                    format!("{target} does not stream from the primary"),
                ),
            });
            if let Some(l) = link {
                out.push(lag_check(
                    force,
                    config,
                    target,
                    l.lag_bytes.replay,
                    "behind the primary",
                ));
            }
            if let (Some(p), Some(ts)) = (primary.and_then(|p| p.snapshot.as_ref()), &t.snapshot) {
                out.push(if p.timeline == ts.timeline {
                    pass(
                        "same_timeline",
                        format!("both nodes are on timeline {}", p.timeline),
                    )
                } else {
                    fail(
                        "same_timeline",
                        format!(
                            "{target} is on timeline {} but the primary on {}",
                            ts.timeline, p.timeline
                        ),
                    )
                });
            }
        }
        OperationKind::Rejoin => {}
    }

    // With a proxy the application's own file is left alone (it points at
    // pgbouncer); pgbouncer.ini is checked on each host when it is paused.
    let rewritten_app = config
        .application
        .as_ref()
        .filter(|_| config.pgbouncer().is_none());
    if let (Some(app), OperationKind::Failover | OperationKind::Switchover) = (rewritten_app, kind)
    {
        out.push(match config_file_blocker {
            None => pass(
                "application_config_writable",
                format!(
                    "{} can be rewritten, keeping its owner and mode",
                    app.config_file.display()
                ),
            ),
            Some(why) => fail("application_config_writable", why.to_owned()),
        });
    }
    if let Some(app) = rewritten_app {
        out.push(if shadows.is_empty() {
            pass(
                "application_config_effective",
                format!(
                    "nothing overrides {} in {}",
                    app.host_key,
                    app.config_file.display()
                ),
            )
        } else {
            let list: Vec<String> = shadows
                .iter()
                .map(|s| format!("{} sets {}", s.source, s.key))
                .collect();
            Check {
                name: "application_config_effective",
                verdict: Verdict::Warn,
                message: format!(
                    "the switch of {} may not take effect: {}",
                    app.config_file.display(),
                    list.join("; ")
                ),
                forceable: false,
            }
        });
    }
    out
}

/// `host_fenced`: a host whose daemon does not answer cannot be verified
/// (its application stopped, its PostgreSQL not writable). The operation
/// goes on only if the operator confirms that host is fenced: powered off,
/// or PostgreSQL and the application stopped and disabled there. `force`
/// does not lift this: it is a fact only the operator can state.
fn host_fenced_check(config: &Config, request: &Request, silent_hosts: &[String]) -> Check {
    const NAME: &str = "host_fenced";
    let unconfirmed: Vec<&str> = silent_hosts
        .iter()
        .filter(|h| !request.fenced_hosts.contains(h))
        .map(String::as_str)
        .collect();
    if !unconfirmed.is_empty() {
        let app = config
            .application
            .as_ref()
            .map(|a| a.name.as_str())
            .unwrap_or("the application");
        let list = unconfirmed
            .iter()
            .map(|h| format!("\"{h}\""))
            .collect::<Vec<_>>()
            .join(", ");
        return fail(
            NAME,
            format!(
                "the daemon on host {} does not answer: pgwarden cannot verify there that {app} is stopped and that PostgreSQL takes no writes. \
                 If that host is fenced (powered off, or PostgreSQL and {app} stopped and disabled on it), confirm it with \"fenced_hosts\": [{list}] \
                 (pgwarden --confirm-fenced {})",
                unconfirmed.join(", "),
                unconfirmed.join(" --confirm-fenced ")
            ),
        );
    }
    if silent_hosts.is_empty() {
        pass(
            NAME,
            "every host's daemon answers: pgwarden verifies each itself",
        )
    } else {
        Check {
            name: NAME,
            verdict: Verdict::Warn,
            message: format!(
                "the daemon on host {} does not answer; the operator confirms it is fenced",
                silent_hosts.join(", ")
            ),
            forceable: false,
        }
    }
}

/// A rejoin turns `target` into the standby of the current primary: the
/// target must not be that primary, and a primary must answer.
fn rejoin_checks(config: &Config, view: &ClusterView, target: &str, out: &mut Vec<Check>) {
    let Some(node) = config.node(target) else {
        out.push(fail(
            "target_known",
            format!("{target} is not a node of this cluster"),
        ));
        return;
    };
    match view.writable_primary() {
        Some(p) if p.name == target => out.push(fail(
            "target_not_primary",
            format!("{target} is the current primary: rejoin turns a former primary into a standby; use a switchover first"),
        )),
        Some(p) if p.reachable => {
            out.push(pass("target_not_primary", format!("{target} is not the primary")));
            out.push(pass("primary_available", format!("{} is the primary to follow", p.name)));
        }
        _ => out.push(fail("primary_available", "no reachable primary to follow: fail over first")),
    }
    out.push(match (&node.data_dir, &node.start, &node.stop) {
        (Some(_), Some(_), Some(_)) => pass(
            "node_configured",
            format!("{target} has data_dir, start and stop"),
        ),
        _ => fail(
            "node_configured",
            format!("nodes[{target}] needs data_dir, start and stop for pgwarden to rebuild it"),
        ),
    });
}

/// How far the target is behind what the primary had at its last sight,
/// in bytes, when both positions are known (what a forced failover may lose).
pub fn bytes_possibly_lost(view: &ClusterView, target: &str) -> Option<u64> {
    let last = view.last_primary.as_ref()?;
    let had = last.current_lsn?;
    let t = view.node(target)?.snapshot.as_ref()?;
    let got = t.receive_lsn.max(t.replay_lsn)?;
    Some(got.bytes_until(had))
}

/// `target_has_primary_wal`: the target holds what the primary acknowledged.
/// Refused (unless forced) when the target was not the synchronous standby
/// while `synchronous_standby_names` was set at the primary's last sight (a
/// commit acknowledged then may exist on the primary only), when the target
/// is behind the primary's last known LSN by more than
/// `max_lag_on_failover`, or when either position is unknown.
fn primary_wal_check(force: bool, config: &Config, view: &ClusterView, target: &str) -> Check {
    const NAME: &str = "target_has_primary_wal";
    let human = crate::health::human_bytes;
    let Some(last) = &view.last_primary else {
        return forceable(
            force,
            NAME,
            "pgwarden has no record of the primary (never seen answering by this daemon): what the target lacks cannot be told".into(),
        );
    };
    if last.node == target {
        return pass(
            NAME,
            format!("{target} was itself the primary at its last sight"),
        );
    }
    let sync_required = !last.synchronous_standby_names.trim().is_empty();
    let link = last.standbys.iter().find(|s| s.name == target);
    let was_sync = link.is_some_and(|l| l.sync_state.as_deref() == Some("sync"));
    // Not connected at all while synchronous_standby_names was set, and no
    // other standby synchronous: every commit since it left waited for it
    // and was not acknowledged (a primary dying under SIGKILL is often last
    // seen so, its walsender gone first). Only the LSN rule below applies.
    let others_sync = last
        .standbys
        .iter()
        .any(|s| s.name != target && s.sync_state.as_deref() == Some("sync"));
    let commits_waited = link.is_none() && !others_sync;
    if sync_required && !was_sync && !commits_waited {
        return forceable(
            force,
            NAME,
            format!(
                "when {} was last seen ({}), synchronous_standby_names was set and {target} was not its synchronous standby ({}): commits acknowledged then may exist on {} only",
                last.node,
                last.seen_at,
                link.and_then(|l| l.sync_state.clone()).map(|s| format!("sync_state {s}")).unwrap_or_else(|| "not connected".into()),
                last.node
            ),
        );
    }
    let Some(gap) = bytes_possibly_lost(view, target) else {
        return forceable(
            force,
            NAME,
            format!(
                "the primary's last LSN or {target}'s received LSN is unknown: what {target} lacks cannot be told"
            ),
        );
    };
    let limit = config.replication.max_lag_on_failover;
    let how = format!(
        "{target} is {} behind what {} had at its last sight ({}, {})",
        human(gap),
        last.node,
        last.current_lsn.map(|l| l.to_string()).unwrap_or_default(),
        last.seen_at
    );
    if gap > limit {
        forceable(
            force,
            NAME,
            format!(
                "{how}, more than max_lag_on_failover ({}): those commits would be lost",
                human(limit)
            ),
        )
    } else {
        pass(
            NAME,
            format!(
                "{how}, within max_lag_on_failover ({}){}",
                human(limit),
                if was_sync {
                    "; it was the synchronous standby"
                } else {
                    ""
                }
            ),
        )
    }
}

fn lag_check(force: bool, config: &Config, target: &str, bytes: u64, what: &str) -> Check {
    let limit = config.replication.max_lag_on_failover;
    let human = crate::health::human_bytes;
    if bytes <= limit {
        pass(
            "lag_within_limit",
            format!(
                "{target} has {} {what} (limit {})",
                human(bytes),
                human(limit)
            ),
        )
    } else {
        forceable(
            force,
            "lag_within_limit",
            format!(
                "{target} has {} {what}, over max_lag_on_failover = {}",
                human(bytes),
                human(limit)
            ),
        )
    }
}

/// True when no check blocks.
pub fn passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.verdict != Verdict::Fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::last_primary::LastPrimary;
    use crate::snapshot::tests::{primary, standby};
    use crate::snapshot::Lsn;
    use crate::view::tests::{failed, ok};
    use crate::view::NodeObservation;

    fn check_of(c: &Config, view: &ClusterView, force: bool) -> Check {
        let request = Request {
            target: "pg-b".into(),
            reason: String::new(),
            force,
            fenced_hosts: Vec::new(),
        };
        let checks = preflight(&PreflightInput {
            config: c,
            view,
            kind: OperationKind::Failover,
            request: &request,
            open_operation: None,
            shadows: &[],
            config_file_blocker: None,
            silent_hosts: &[],
        });
        checks
            .into_iter()
            .find(|c| c.name == "target_has_primary_wal")
            .expect("a failover checks what the target lacks")
    }

    #[test]
    fn a_failover_compares_the_target_with_the_primary_last_seen() {
        let c = config();
        // Seen healthy (pg-b sync, 0x48 behind), then pg-a gone: passes.
        let view = seen(&c, &[failed(3), ok(standby())]);
        let ok_check = check_of(&c, &view, false);
        assert_eq!(ok_check.verdict, Verdict::Pass, "{ok_check:?}");
        assert!(
            ok_check.message.contains("synchronous standby"),
            "{ok_check:?}"
        );
        assert_eq!(bytes_possibly_lost(&view, "pg-b"), Some(0));

        // Never seen: unknown is not "nothing lost".
        let mut unseen = view.clone();
        unseen.last_primary = None;
        assert_eq!(check_of(&c, &unseen, false).verdict, Verdict::Fail);
        assert_eq!(check_of(&c, &unseen, true).verdict, Verdict::Warn);

        // Not connected while synchronous_standby_names was set, no other
        // sync standby: commits waited for it, the LSN rule decides.
        let mut gone = view.clone();
        gone.last_primary.as_mut().unwrap().standbys.clear();
        assert_eq!(check_of(&c, &gone, false).verdict, Verdict::Pass);

        // Not the sync standby while synchronous_standby_names was set.
        let mut not_sync = view.clone();
        not_sync.last_primary.as_mut().unwrap().standbys[0].sync_state = Some("async".into());
        let refused = check_of(&c, &not_sync, false);
        assert_eq!(refused.verdict, Verdict::Fail);
        assert!(
            refused.message.contains("was not its synchronous standby"),
            "{refused:?}"
        );

        // `sync async` was run, the standby fell behind, the primary went on.
        let mut behind = view.clone();
        let last = behind.last_primary.as_mut().unwrap();
        last.synchronous_standby_names.clear();
        last.standbys.clear();
        last.current_lsn = Some(Lsn(Lsn::parse("0/3000148").unwrap().0 + 32 * 1024 * 1024));
        let refused = check_of(&c, &behind, false);
        assert_eq!(refused.verdict, Verdict::Fail, "{refused:?}");
        assert!(refused.message.contains("32.0 MiB behind"), "{refused:?}");
        assert_eq!(check_of(&c, &behind, true).verdict, Verdict::Warn);
        assert_eq!(bytes_possibly_lost(&behind, "pg-b"), Some(32 * 1024 * 1024));
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
application:
  name: inmanta-server
  stop: [systemctl, stop, inmanta-server]
  start: [systemctl, start, inmanta-server]
  is_running: [systemctl, is-active, inmanta-server]
  db_user: inmanta
  config_file: /etc/inmanta/inmanta.d/database.cfg
"#;
        Config::parse_str("t.yaml", text).unwrap()
    }

    /// The view a daemon has after it saw the healthy pair, then `obs`.
    fn seen(c: &Config, obs: &[NodeObservation]) -> ClusterView {
        let before = ClusterView::build(c, &[ok(primary()), ok(standby())]);
        let mut view = ClusterView::build(c, obs);
        view.last_primary = LastPrimary::from_view(&before, "t0");
        view
    }

    fn run(kind: OperationKind, obs: &[NodeObservation], target: &str, force: bool) -> Vec<Check> {
        let c = config();
        let view = seen(&c, obs);
        let request = Request {
            target: target.into(),
            reason: String::new(),
            force,
            fenced_hosts: Vec::new(),
        };
        preflight(&PreflightInput {
            config: &c,
            view: &view,
            kind,
            request: &request,
            open_operation: None,
            shadows: &[],
            config_file_blocker: None,
            silent_hosts: &[],
        })
    }

    fn verdict(checks: &[Check], name: &str) -> Verdict {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}: {checks:#?}"))
            .verdict
    }

    #[test]
    fn a_failover_of_a_dead_primary_passes() {
        let checks = run(
            OperationKind::Failover,
            &[failed(3), ok(standby())],
            "pg-b",
            false,
        );
        assert!(passed(&checks), "{checks:#?}");
        assert_eq!(verdict(&checks, "primary_down"), Verdict::Pass);
    }

    #[test]
    fn a_failover_waits_for_the_failure_threshold_unless_forced() {
        let checks = run(
            OperationKind::Failover,
            &[failed(1), ok(standby())],
            "pg-b",
            false,
        );
        assert_eq!(verdict(&checks, "primary_down"), Verdict::Fail);
        let forced = run(
            OperationKind::Failover,
            &[failed(1), ok(standby())],
            "pg-b",
            true,
        );
        assert_eq!(verdict(&forced, "primary_down"), Verdict::Warn);
        assert!(passed(&forced));
    }

    /// `forceable` marks exactly the checks force lifts, before and after
    /// it is given; a check force cannot lift is never marked.
    #[test]
    fn forceable_marks_what_force_lifts() {
        let marked = |checks: &[Check]| -> Vec<&str> {
            checks
                .iter()
                .filter(|c| c.forceable)
                .map(|c| c.name)
                .collect()
        };
        let obs = [failed(1), ok(standby())];
        let checks = run(OperationKind::Failover, &obs, "pg-b", false);
        assert_eq!(marked(&checks), ["primary_down"], "{checks:#?}");
        let forced = run(OperationKind::Failover, &obs, "pg-b", true);
        assert_eq!(marked(&forced), ["primary_down"], "{forced:#?}");
        let json = serde_json::to_value(&checks).unwrap();
        assert_eq!(json[0].get("forceable"), None, "false is left out: {json}");
        // A switchover with no primary fails even forced: nothing is marked.
        let switch = run(
            OperationKind::Switchover,
            &[failed(3), ok(standby())],
            "pg-b",
            false,
        );
        assert!(switch.iter().any(|c| c.verdict == Verdict::Fail));
        assert!(marked(&switch).is_empty(), "{switch:#?}");
    }

    #[test]
    fn a_failover_with_a_live_primary_says_use_switchover() {
        let checks = run(
            OperationKind::Failover,
            &[ok(primary()), ok(standby())],
            "pg-b",
            false,
        );
        let c = checks.iter().find(|c| c.name == "primary_down").unwrap();
        assert_eq!(c.verdict, Verdict::Fail);
        assert!(c.message.contains("use a switchover"), "{}", c.message);
    }

    #[test]
    fn a_target_that_is_not_a_standby_fails() {
        for (obs, target, phrase) in [
            (
                vec![ok(primary()), ok(standby())],
                "pg-a",
                "already a primary",
            ),
            (vec![failed(3), failed(3)], "pg-b", "does not answer"),
            (
                vec![ok(primary()), ok(standby())],
                "pg-z",
                "not a node of this cluster",
            ),
        ] {
            let checks = run(OperationKind::Switchover, &obs, target, false);
            let c = checks
                .iter()
                .find(|c| c.name == "target_is_standby")
                .unwrap();
            assert_eq!(c.verdict, Verdict::Fail);
            assert!(c.message.contains(phrase), "{}", c.message);
        }
    }

    #[test]
    fn a_switchover_of_a_healthy_pair_passes() {
        let checks = run(
            OperationKind::Switchover,
            &[ok(primary()), ok(standby())],
            "pg-b",
            false,
        );
        assert!(passed(&checks), "{checks:#?}");
    }

    #[test]
    fn a_switchover_needs_a_synchronous_target_within_the_lag_limit() {
        let mut p = primary();
        p.replication[0].sync_state = Some("async".into());
        let checks = run(
            OperationKind::Switchover,
            &[ok(p.clone()), ok(standby())],
            "pg-b",
            false,
        );
        assert_eq!(verdict(&checks, "target_synchronous"), Verdict::Fail);
        p.replication[0].sync_state = Some("sync".into());
        p.current_lsn = Lsn::parse("1/0");
        let checks = run(
            OperationKind::Switchover,
            &[ok(p.clone()), ok(standby())],
            "pg-b",
            false,
        );
        assert_eq!(verdict(&checks, "lag_within_limit"), Verdict::Fail);
        let checks = run(
            OperationKind::Switchover,
            &[ok(p), ok(standby())],
            "pg-b",
            true,
        );
        assert_eq!(verdict(&checks, "lag_within_limit"), Verdict::Warn);
    }

    #[test]
    fn a_switchover_without_a_primary_fails_even_forced() {
        let checks = run(
            OperationKind::Switchover,
            &[failed(3), ok(standby())],
            "pg-b",
            true,
        );
        assert_eq!(verdict(&checks, "primary_healthy"), Verdict::Fail);
        assert!(!passed(&checks));
    }

    #[test]
    fn another_cluster_is_never_a_target() {
        let mut s = standby();
        s.system_identifier = 1;
        let checks = run(
            OperationKind::Switchover,
            &[ok(primary()), ok(s)],
            "pg-b",
            true,
        );
        assert_eq!(verdict(&checks, "same_system_identifier"), Verdict::Fail);
    }

    #[test]
    fn an_open_operation_and_a_missing_application_block() {
        let c = Config {
            application: None,
            ..config()
        };
        let view = ClusterView::build(&c, &[failed(3), ok(standby())]);
        let request = Request {
            target: "pg-b".into(),
            reason: String::new(),
            force: true,
            fenced_hosts: Vec::new(),
        };
        let checks = preflight(&PreflightInput {
            config: &c,
            view: &view,
            kind: OperationKind::Failover,
            request: &request,
            open_operation: Some("op-7"),
            shadows: &[],
            config_file_blocker: None,
            silent_hosts: &[],
        });
        assert_eq!(verdict(&checks, "no_other_operation"), Verdict::Fail);
        assert_eq!(verdict(&checks, "application_configured"), Verdict::Fail);
        assert!(checks[0].message.contains("op-7"));
    }

    #[test]
    fn a_shadowing_setting_is_a_warning() {
        let c = config();
        let view = seen(&c, &[failed(3), ok(standby())]);
        let request = Request {
            target: "pg-b".into(),
            reason: String::new(),
            force: false,
            fenced_hosts: Vec::new(),
        };
        let shadows = [Shadow {
            source: "/etc/inmanta/inmanta.d/zz-local.cfg".into(),
            key: "host".into(),
        }];
        let checks = preflight(&PreflightInput {
            config: &c,
            view: &view,
            kind: OperationKind::Failover,
            request: &request,
            open_operation: None,
            shadows: &shadows,
            config_file_blocker: None,
            silent_hosts: &[],
        });
        let check = checks
            .iter()
            .find(|c| c.name == "application_config_effective")
            .unwrap();
        assert_eq!(check.verdict, Verdict::Warn);
        assert!(
            check.message.contains("zz-local.cfg sets host"),
            "{}",
            check.message
        );
        assert!(passed(&checks));
    }

    fn with_replica() -> Config {
        let text = crate::view::tests::config_with_replica();
        let mut c = config();
        c.nodes = text.nodes;
        c
    }

    fn run_on(
        c: &Config,
        kind: OperationKind,
        obs: &[NodeObservation],
        target: &str,
        force: bool,
    ) -> Vec<Check> {
        let mut p = primary();
        let mut row = p.replication[0].clone();
        row.application_name = "ro-1".into();
        row.sync_state = Some("async".into());
        p.replication.push(row);
        let before = ClusterView::build(c, &[ok(p), ok(standby()), ok(standby())]);
        let mut view = ClusterView::build(c, obs);
        view.last_primary = LastPrimary::from_view(&before, "t0");
        let request = Request {
            target: target.into(),
            reason: String::new(),
            force,
            fenced_hosts: Vec::new(),
        };
        preflight(&PreflightInput {
            config: c,
            view: &view,
            kind,
            request: &request,
            open_operation: None,
            shadows: &[],
            config_file_blocker: None,
            silent_hosts: &[],
        })
    }

    #[test]
    fn a_replica_beside_the_pair_changes_nothing_for_the_standby() {
        let c = with_replica();
        let checks = run_on(
            &c,
            OperationKind::Failover,
            &[failed(3), ok(standby()), ok(standby())],
            "pg-b",
            false,
        );
        assert!(
            passed(&checks),
            "the live replica is not an old primary to wait for: {checks:#?}"
        );
        assert!(checks.iter().all(|c| c.name != "target_not_replica"));
        let mut p = primary();
        let mut row = p.replication[0].clone();
        row.application_name = "ro-1".into();
        row.sync_state = Some("async".into());
        p.replication.push(row);
        let checks = run_on(
            &c,
            OperationKind::Switchover,
            &[ok(p), ok(standby()), ok(standby())],
            "pg-b",
            false,
        );
        assert!(passed(&checks), "{checks:#?}");
    }

    #[test]
    fn every_operation_is_refused_while_a_replica_runs_as_the_primary() {
        let c = with_replica();
        let mut promoted = standby();
        promoted.in_recovery = false;
        promoted.timeline += 1;
        promoted.wal_receiver = None;
        let after_last_resort = [failed(3), failed(3), ok(promoted)];
        for (kind, target) in [
            (OperationKind::Failover, "pg-b"),
            (OperationKind::Switchover, "pg-b"),
            (OperationKind::Rejoin, "pg-a"),
        ] {
            let checks = run_on(&c, kind, &after_last_resort, target, true);
            let check = checks
                .iter()
                .find(|c| c.name == "roles_match_config")
                .unwrap_or_else(|| panic!("{kind}: {checks:#?}"));
            assert_eq!(check.verdict, Verdict::Fail, "{kind}: not forceable");
            assert!(
                check.message.contains("ro-1 is configured `role: replica`")
                    && check.message.contains("edit nodes[]"),
                "{check:?}"
            );
        }
        // As configured: the check passes, and a pair-only config has none.
        let checks = run_on(
            &c,
            OperationKind::Failover,
            &[failed(3), ok(standby()), ok(standby())],
            "pg-b",
            false,
        );
        assert_eq!(verdict(&checks, "roles_match_config"), Verdict::Pass);
        let pair = config();
        let view = ClusterView::build(&pair, &[failed(3), ok(standby())]);
        let request = Request {
            target: "pg-b".into(),
            reason: String::new(),
            force: false,
            fenced_hosts: Vec::new(),
        };
        let checks = preflight(&PreflightInput {
            config: &pair,
            view: &view,
            kind: OperationKind::Failover,
            request: &request,
            open_operation: None,
            shadows: &[],
            config_file_blocker: None,
            silent_hosts: &[],
        });
        assert!(checks.iter().all(|c| c.name != "roles_match_config"));
    }

    #[test]
    fn a_replica_is_a_target_only_when_named_and_forced() {
        let c = with_replica();
        let both_gone = [failed(3), failed(3), ok(standby())];
        let refused = run_on(&c, OperationKind::Failover, &both_gone, "ro-1", false);
        assert_eq!(verdict(&refused, "target_not_replica"), Verdict::Fail);
        assert_eq!(
            verdict(&refused, "target_has_primary_wal"),
            Verdict::Fail,
            "it was not the synchronous standby"
        );
        assert!(!passed(&refused));
        let forced = run_on(&c, OperationKind::Failover, &both_gone, "ro-1", true);
        assert_eq!(verdict(&forced, "target_not_replica"), Verdict::Warn);
        assert_eq!(verdict(&forced, "target_is_standby"), Verdict::Pass);
        assert!(passed(&forced), "{forced:#?}");
        let view = ClusterView::build(&c, &both_gone);
        let mut view = view;
        let mut p = primary();
        p.current_lsn = Lsn::parse("0/3000248");
        view.last_primary = LastPrimary::from_view(
            &ClusterView::build(&c, &[ok(p), ok(standby()), ok(standby())]),
            "t0",
        );
        assert_eq!(
            bytes_possibly_lost(&view, "ro-1"),
            Some(0x100),
            "the loss report applies as for a standby"
        );

        let mut p = primary();
        let mut row = p.replication[0].clone();
        row.application_name = "ro-1".into();
        row.sync_state = Some("async".into());
        p.replication.push(row);
        let live = [ok(p), ok(standby()), ok(standby())];
        let refused = run_on(&c, OperationKind::Switchover, &live, "ro-1", false);
        assert_eq!(verdict(&refused, "target_not_replica"), Verdict::Fail);
        assert_eq!(verdict(&refused, "target_synchronous"), Verdict::Fail);
        assert!(passed(&run_on(
            &c,
            OperationKind::Switchover,
            &live,
            "ro-1",
            true
        )));
    }
}
