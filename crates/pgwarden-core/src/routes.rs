//! The load-balancer routes' decisions: should a load balancer send writes,
//! reads, synchronous or asynchronous reads to the LOCAL node?
//!
//! These are Patroni's route names and meanings (`/read-write`, `/read-only`,
//! `/replica?lag=`, `/sync`, `/async`, next to pgwarden's `/primary` and
//! `/replica`), decided here from a [`ClusterView`] alone so that every route
//! is a pure function with unit tests, and so that `/primary` and
//! `/read-write` share ONE decision ([`is_writable_primary`]): a rule that
//! must take writes away from a node (such as an isolated primary) changes
//! both at once.

use serde::Serialize;

use crate::config::parse_byte_size;
use crate::view::{ClusterView, NodeView, Role};

/// Where a standby's lag was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LagSource {
    /// The primary's `pg_stat_replication` row for this standby: replay LSN
    /// behind the primary's current LSN. Preferred, because it measures what
    /// a reader misses compared with the primary, including WAL the standby
    /// has not even received yet.
    Primary,
    /// The standby's own `pg_last_wal_receive_lsn()` minus
    /// `pg_last_wal_replay_lsn()`, when the daemon does not see the primary's
    /// row for it. It cannot see WAL that was never received, so it can only
    /// under-estimate.
    Standby,
}

/// A standby's replay lag in bytes, and where it was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Lag {
    pub bytes: u64,
    pub source: LagSource,
}

/// The query parameters of a load-balancer route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteParams {
    /// `lag=`: the most replay lag, in bytes, a standby may have.
    pub max_lag: Option<u64>,
}

/// Parses the query string of a route that takes `lag=` (when `takes_lag`)
/// or nothing. An unknown parameter is refused, not ignored: a misspelt
/// `?lagg=1MB` silently ignored would route reads to a standby of any lag,
/// and the load balancer could never tell.
pub fn parse_params(query: Option<&str>, takes_lag: bool) -> Result<RouteParams, String> {
    let mut params = RouteParams::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)
            .ok_or_else(|| format!("the value of `{key}` is not valid percent-encoded UTF-8"))?;
        match key {
            "lag" if takes_lag => {
                if params.max_lag.is_some() {
                    return Err("`lag` is given twice".into());
                }
                let bytes = parse_byte_size(&value).map_err(|e| format!("lag: {e}"))?;
                params.max_lag = Some(bytes);
            }
            _ if takes_lag => {
                return Err(format!(
                    "unknown parameter `{key}`: this route takes only `lag` (a size such as 16MiB, or bytes)"
                ))
            }
            _ => {
                return Err(format!(
                    "unknown parameter `{key}`: this route takes no parameters"
                ))
            }
        }
    }
    Ok(params)
}

/// `%XX` and `+` decoding of one query value (HAProxy and curl send sizes
/// plainly, but `16%20MiB` from a form must not read as garbage).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `/primary` and `/read-write`: the local node is the primary clients
/// should write to (the reachable primary on the highest timeline, alone on
/// it). Both routes call this one function.
pub fn is_writable_primary(view: &ClusterView, local: &str) -> bool {
    view.writable_primary().is_some_and(|p| p.name == local) && isolation(view, local).is_none()
}

/// Why the local primary is isolated (`primary_isolated`), if it is: an
/// isolated primary is not an unchallenged one, since the other side may
/// have failed over, so no load balancer sends it writes (or reads).
pub fn isolation<'v>(view: &'v ClusterView, local: &str) -> Option<&'v str> {
    view.problems
        .iter()
        .find(|p| p.code == crate::ProblemCode::PrimaryIsolated && p.node.as_deref() == Some(local))
        .map(|p| p.message.as_str())
}

/// `/replica` (without `lag`): the local node is a standby, or a `role:
/// replica` node (reads are what it is for), whose WAL receiver streams, by
/// its own last poll.
pub fn is_streaming_standby(me: &NodeView) -> bool {
    matches!(me.role, Role::Standby | Role::Replica)
        && me
            .snapshot
            .as_ref()
            .and_then(|s| s.wal_receiver.as_ref())
            .is_some_and(|w| w.status == "streaming")
}

/// `/read-only`: reads may go to the local node: it is the writable primary,
/// or a streaming standby. A primary left on an older timeline is not: its
/// data is a past the cluster moved away from.
pub fn is_readable(view: &ClusterView, local: &str) -> bool {
    is_writable_primary(view, local) || view.node(local).is_some_and(is_streaming_standby)
}

/// The local standby's replay lag: from the primary's row for it when this
/// daemon sees one, else from the standby's own receive and replay LSNs.
/// `None` when neither is known (the node is not a standby, or has not
/// received anything yet).
pub fn standby_lag(view: &ClusterView, local: &str) -> Option<Lag> {
    let me = view.node(local)?;
    if !matches!(me.role, Role::Standby | Role::Replica) {
        return None;
    }
    if let Some(link) = view.link_to(local) {
        return Some(Lag {
            bytes: link.lag_bytes.replay,
            source: LagSource::Primary,
        });
    }
    let s = me.snapshot.as_ref()?;
    let (received, replayed) = (s.receive_lsn?, s.replay_lsn?);
    Some(Lag {
        bytes: replayed.bytes_until(received),
        source: LagSource::Standby,
    })
}

/// `/replica?lag=N`: a streaming standby whose lag is known and at most N.
/// Without `lag`, [`is_streaming_standby`]. An unknown lag with a limit is
/// not "within": the route cannot vouch for it.
pub fn is_replica_within(view: &ClusterView, local: &str, max_lag: Option<u64>) -> bool {
    let streaming = view.node(local).is_some_and(is_streaming_standby);
    match max_lag {
        None => streaming,
        Some(max) => streaming && standby_lag(view, local).is_some_and(|l| l.bytes <= max),
    }
}

/// The `sync_state` the primary's `pg_stat_replication` shows for the
/// local node, as this daemon last saw it (`None` when it sees no row).
pub fn sync_state<'v>(view: &'v ClusterView, local: &str) -> Option<&'v str> {
    view.link_to(local)?.row.sync_state.as_deref()
}

/// `/sync`: a streaming standby that the primary lists with
/// `sync_state = sync`. Only the primary knows that, so a standby whose
/// primary this daemon does not see is never `/sync`.
pub fn is_sync_standby(view: &ClusterView, local: &str) -> bool {
    view.node(local).is_some_and(is_streaming_standby) && sync_state(view, local) == Some("sync")
}

/// `/async`: a streaming standby that is not `/sync` (`async`, `potential`,
/// `quorum`, or the primary's row not seen), within `max_lag` when given. A
/// streaming standby is exactly one of `/sync` and `/async`.
pub fn is_async_standby(view: &ClusterView, local: &str, max_lag: Option<u64>) -> bool {
    is_replica_within(view, local, max_lag) && sync_state(view, local) != Some("sync")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::{primary, standby};
    use crate::snapshot::Lsn;
    use crate::view::tests::{config, failed, ok};

    fn pair() -> ClusterView {
        ClusterView::build(&config(), &[ok(primary()), ok(standby())])
    }

    #[test]
    fn a_healthy_pair_routes_writes_to_the_primary_and_sync_reads_to_the_standby() {
        let v = pair();
        // (route, primary's answer, standby's answer)
        let cases: [(&str, bool, bool); 6] = [
            ("read-write", true, false),
            ("read-only", true, true),
            ("replica", false, true),
            ("replica?lag=0", false, false),
            ("sync", false, true),
            ("async", false, false),
        ];
        for (route, on_a, on_b) in cases {
            let answer = |local: &str| match route {
                "read-write" => is_writable_primary(&v, local),
                "read-only" => is_readable(&v, local),
                "replica" => is_replica_within(&v, local, None),
                "replica?lag=0" => is_replica_within(&v, local, Some(0)),
                "sync" => is_sync_standby(&v, local),
                "async" => is_async_standby(&v, local, None),
                _ => unreachable!(),
            };
            assert_eq!(answer("pg-a"), on_a, "{route} on the primary");
            assert_eq!(answer("pg-b"), on_b, "{route} on the standby");
        }
    }

    #[test]
    fn lag_is_the_primarys_replay_lag_within_inclusive() {
        let v = pair();
        // The fixture's row: replay 0/3000100, primary at 0/3000148.
        let lag = standby_lag(&v, "pg-b").unwrap();
        assert_eq!(
            lag,
            Lag {
                bytes: 0x48,
                source: LagSource::Primary
            }
        );
        assert!(is_replica_within(&v, "pg-b", Some(0x48)), "equal is within");
        assert!(!is_replica_within(&v, "pg-b", Some(0x47)));
        assert!(
            !is_async_standby(&v, "pg-b", Some(1 << 20)),
            "a sync standby"
        );
        assert_eq!(standby_lag(&v, "pg-a"), None, "a primary has no lag");
    }

    #[test]
    fn without_the_primary_the_standby_measures_its_own_lag() {
        let mut s = standby();
        s.receive_lsn = Lsn::parse("0/3001000");
        s.replay_lsn = Lsn::parse("0/3000000");
        let v = ClusterView::build(&config(), &[failed(3), ok(s.clone())]);
        assert_eq!(
            standby_lag(&v, "pg-b"),
            Some(Lag {
                bytes: 0x1000,
                source: LagSource::Standby
            })
        );
        assert!(is_replica_within(&v, "pg-b", Some(4096)));
        assert!(!is_replica_within(&v, "pg-b", Some(4095)));
        // The primary's sync_state is not visible: async, never sync.
        assert!(!is_sync_standby(&v, "pg-b"));
        assert!(is_async_standby(&v, "pg-b", None));
        // Nothing received yet: unknown lag is not within any limit.
        s.receive_lsn = None;
        let v = ClusterView::build(&config(), &[failed(3), ok(s)]);
        assert_eq!(standby_lag(&v, "pg-b"), None);
        assert!(is_replica_within(&v, "pg-b", None));
        assert!(!is_replica_within(&v, "pg-b", Some(u64::MAX)));
    }

    #[test]
    fn an_async_standby_is_async_not_sync() {
        let mut p = primary();
        p.replication[0].sync_state = Some("async".into());
        let v = ClusterView::build(&config(), &[ok(p.clone()), ok(standby())]);
        assert!(!is_sync_standby(&v, "pg-b"));
        assert!(is_async_standby(&v, "pg-b", None));
        assert!(!is_async_standby(&v, "pg-a", None), "a primary is neither");
        p.replication[0].sync_state = Some("potential".into());
        let v = ClusterView::build(&config(), &[ok(p), ok(standby())]);
        assert!(is_async_standby(&v, "pg-b", None));
    }

    #[test]
    fn a_standby_that_does_not_stream_gets_no_reads() {
        let mut s = standby();
        s.wal_receiver.as_mut().unwrap().status = "waiting".into();
        let v = ClusterView::build(&config(), &[ok(primary()), ok(s)]);
        for (route, got) in [
            ("read-only", is_readable(&v, "pg-b")),
            ("replica", is_replica_within(&v, "pg-b", None)),
            ("sync", is_sync_standby(&v, "pg-b")),
            ("async", is_async_standby(&v, "pg-b", None)),
        ] {
            assert!(!got, "{route}");
        }
        let v = ClusterView::build(&config(), &[ok(primary()), failed(3)]);
        assert!(!is_readable(&v, "pg-b"), "a down node gets nothing");
    }

    #[test]
    fn a_stale_primary_gets_neither_writes_nor_reads() {
        let mut newer = standby();
        newer.in_recovery = false;
        newer.wal_receiver = None;
        newer.timeline = 2;
        newer.current_lsn = Lsn::parse("0/4000000");
        let v = ClusterView::build(&config(), &[ok(primary()), ok(newer)]);
        assert!(!is_writable_primary(&v, "pg-a"));
        assert!(!is_readable(&v, "pg-a"));
        assert!(is_writable_primary(&v, "pg-b"));
        assert!(is_readable(&v, "pg-b"));
    }

    #[test]
    fn params() {
        let p = |q: &str, lag| parse_params(Some(q), lag);
        assert_eq!(p("", true), Ok(RouteParams::default()));
        assert_eq!(parse_params(None, false), Ok(RouteParams::default()));
        assert_eq!(p("lag=16MiB", true).unwrap().max_lag, Some(16 << 20));
        assert_eq!(p("lag=1kB", true).unwrap().max_lag, Some(1024));
        assert_eq!(p("lag=1048576", true).unwrap().max_lag, Some(1 << 20));
        assert_eq!(p("lag=16%20MiB", true).unwrap().max_lag, Some(16 << 20));
        for bad in ["lag=", "lag=lots", "lag=-1", "lag=1PB", "lag=%zz", "lagg=1"] {
            assert!(p(bad, true).is_err(), "{bad}");
        }
        assert!(p("lag=1&lag=2", true).unwrap_err().contains("twice"));
        assert!(p("lag=1", false).unwrap_err().contains("no parameters"));
        assert!(p("lagg=1", true).unwrap_err().contains("`lagg`"));
    }
}
