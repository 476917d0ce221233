//! `pgwarden status`: a readable table of both nodes (like `patronictl
//! list`), from a daemon's `/v1/status`; `--watch` redraws it, and the exit
//! status says whether the cluster is healthy, so scripts need no JSON.
//!
//! The daemon is found as every client command finds it ([`Connect`]):
//! `--url`, else `PGWARDEN_URL`, else the `listen` of `--config`, else of
//! /etc/pgwarden/pgwarden.yaml when it exists. No token is read: an operator
//! without access to the secret files can still ask.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::Value;

use crate::client::{ApiError, Connect};

/// Exit status: the cluster is healthy and reports no problem.
pub const EXIT_HEALTHY: u8 = 0;
/// Exit status: unhealthy (a critical problem, `/health` answers 503) or
/// degraded (healthy, but a warning is listed).
pub const EXIT_UNHEALTHY: u8 = 1;
/// Exit status: the daemon could not be asked (unreachable, an error
/// answer, an unreadable config); clap's usage errors exit 2 as well.
pub const EXIT_CANNOT_ASK: u8 = 2;

/// How long one `/v1/status` may take: the daemon answers from its last
/// poll, so a slow answer means a daemon in trouble.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// One status, or with `watch` a redraw every interval until Ctrl-C; the
/// exit status is that of the last answer (see the `EXIT_*` constants).
pub async fn run(connect: Connect, json: bool, watch: Option<Duration>) -> u8 {
    let client = match connect.resolve(false) {
        Ok(r) => r.client,
        Err(e) => {
            eprintln!("pgwarden: {e}");
            return EXIT_CANNOT_ASK;
        }
    };
    let Some(every) = watch else {
        return match ask(&client).await {
            Ok(status) => {
                show(&status, json);
                exit_code(&status)
            }
            Err(e) => {
                eprintln!("pgwarden: {e}");
                EXIT_CANNOT_ASK
            }
        };
    };
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Clearing the screen only makes sense on a terminal; a pipe gets one
    // frame after the other, each starting with its header line.
    let redraw = std::io::stdout().is_terminal();
    let mut code = EXIT_CANNOT_ASK;
    loop {
        let answer = tokio::select! {
            _ = &mut ctrl_c => return code,
            a = ask(&client) => a,
        };
        let mut frame = String::new();
        if redraw {
            frame.push_str("\x1b[H\x1b[2J");
        }
        frame.push_str(&format!(
            "Every {}: pgwarden status, {}\n",
            humantime::format_duration(every),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        ));
        match answer {
            Ok(status) => {
                frame.push_str(&if json {
                    format!(
                        "{}\n",
                        serde_json::to_string_pretty(&status).unwrap_or_default()
                    )
                } else {
                    render(&status)
                });
                code = exit_code(&status);
            }
            // The daemon may come back (a restart): say so and keep watching.
            Err(e) => {
                frame.push_str(&format!("pgwarden: {e}\n"));
                code = EXIT_CANNOT_ASK;
            }
        }
        frame.push('\n');
        if !emit(&frame) {
            return code;
        }
        tokio::select! {
            _ = &mut ctrl_c => return code,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

async fn ask(client: &crate::client::Client) -> Result<Value, ApiError> {
    client.get_with_timeout("/v1/status", ASK_TIMEOUT).await
}

fn show(status: &Value, json: bool) {
    if json {
        emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(status).unwrap_or_default()
        ));
    } else {
        emit(&render(status));
    }
}

/// Writes to stdout; false when the reader has gone (`| head`).
fn emit(text: &str) -> bool {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())
        .and_then(|()| o.flush())
        .is_ok()
}

/// The exit status of a `/v1/status` answer: healthy with no problem is 0;
/// anything else, or an answer without `healthy`, is 1.
pub fn exit_code(status: &Value) -> u8 {
    let no_problem = status["problems"].as_array().is_some_and(|p| p.is_empty());
    if status["healthy"].as_bool() == Some(true) && no_problem {
        EXIT_HEALTHY
    } else {
        EXIT_UNHEALTHY
    }
}

/// The table: one line per node, then the problems.
pub fn render(s: &Value) -> String {
    let str_of = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
    let mut out = String::new();
    let health = if s["healthy"].as_bool() == Some(true) {
        "healthy"
    } else {
        "UNHEALTHY"
    };
    out.push_str(&format!(
        "Cluster {} ({}), seen from {}: {}\n",
        str_of(&s["cluster"]),
        s["primary"]
            .as_str()
            .map(|p| format!("primary {p}"))
            .unwrap_or_else(|| "no single primary".into()),
        str_of(&s["local_node"]),
        health
    ));
    let mut rows = vec![[
        "NODE",
        "ADDRESS",
        "ROLE",
        "STATE",
        "SESSIONS",
        "TL",
        "WAL LSN",
        "REPLAY LAG",
        "SYNC",
    ]
    .map(String::from)];
    let nodes = s["nodes"].as_array().cloned().unwrap_or_default();
    let primary = nodes.iter().find(|n| n["role"] == "primary");
    for n in &nodes {
        let snap = &n["snapshot"];
        let name = str_of(&n["name"]);
        let role = str_of(&n["role"]);
        let state = if n["reachable"] != true {
            if n["down"] == true {
                "down".into()
            } else {
                "unreachable".to_string()
            }
        } else if role == "standby" || role == "replica" {
            snap["wal_receiver"]["status"]
                .as_str()
                .unwrap_or("not receiving")
                .to_owned()
        } else {
            "running".into()
        };
        let lsn = if role == "primary" {
            str_of(&snap["current_lsn"])
        } else {
            str_of(&snap["replay_lsn"])
        };
        let link = primary.and_then(|p| {
            p["replication"]
                .as_array()
                .and_then(|r| r.iter().find(|l| l["standby"] == n["name"]).cloned())
        });
        let (lag, sync) = match &link {
            Some(l) => (
                human(l["lag_bytes"]["replay"].as_u64().unwrap_or(0)),
                str_of(&l["sync_state"]),
            ),
            None if role == "standby" || role == "replica" || n["reachable"] != true => {
                ("-".into(), "not streaming".into())
            }
            None => ("-".into(), "-".into()),
        };
        let tl = snap["timeline"]
            .as_u64()
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into());
        let addr = format!("{}:{}", str_of(&n["host"]), n["port"]);
        // Client sessions of every role, as an HA dashboard lists them.
        let sessions = snap["sessions_by_role"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(Value::as_u64)
                    .sum::<u64>()
                    .to_string()
            })
            .unwrap_or_else(|| "-".into());
        rows.push([name, addr, role, state, sessions, tl, lsn, lag, sync]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&last_sight(s, &nodes));
    let problems = s["problems"].as_array().cloned().unwrap_or_default();
    if !problems.is_empty() {
        out.push_str("Problems:\n");
        for p in problems {
            out.push_str(&format!(
                "  {:<8} {:<26} {}\n",
                str_of(&p["severity"]),
                str_of(&p["code"]),
                str_of(&p["message"])
            ));
        }
    }
    out
}

/// For a primary that no longer answers: when it was last seen, what it
/// had written then, and how far each standby was behind at that moment
/// (what a failover to it may lose).
fn last_sight(s: &Value, nodes: &[Value]) -> String {
    let last = &s["last_primary"];
    let Some(name) = last["node"].as_str() else {
        return String::new();
    };
    let answers = nodes
        .iter()
        .any(|n| n["name"] == name && n["role"] == "primary" && n["reachable"] == true);
    if answers {
        return String::new();
    }
    let lsn = |v: &Value| {
        v.as_str().and_then(|t| {
            let (hi, lo) = t.split_once('/')?;
            Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
        })
    };
    let mut out = format!(
        "Primary {name} last seen {} at {} (synchronous_standby_names '{}')\n",
        last["seen_at"].as_str().unwrap_or("?"),
        last["current_lsn"].as_str().unwrap_or("?"),
        last["synchronous_standby_names"].as_str().unwrap_or("")
    );
    for sb in last["standbys"].as_array().cloned().unwrap_or_default() {
        let behind = match (lsn(&last["current_lsn"]), lsn(&sb["flush_lsn"])) {
            (Some(had), Some(got)) => human(had.saturating_sub(got)),
            _ => "?".into(),
        };
        out.push_str(&format!(
            "  then {}: {}, {}, flushed {} behind\n",
            sb["name"].as_str().unwrap_or("?"),
            sb["state"].as_str().unwrap_or("?"),
            sb["sync_state"].as_str().unwrap_or("?"),
            behind
        ));
    }
    out
}

fn human(b: u64) -> String {
    pgwarden_core::health::human_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_code_is_healthy_only_without_any_problem() {
        let ok = serde_json::json!({"healthy": true, "problems": []});
        assert_eq!(exit_code(&ok), EXIT_HEALTHY);
        let warned = serde_json::json!({"healthy": true, "problems": [{"code": "lag_high", "severity": "warning"}]});
        assert_eq!(exit_code(&warned), EXIT_UNHEALTHY);
        let bad = serde_json::json!({"healthy": false, "problems": [{"code": "node_down", "severity": "critical"}]});
        assert_eq!(exit_code(&bad), EXIT_UNHEALTHY);
        // An answer this CLI does not understand is no proof of health.
        assert_eq!(exit_code(&serde_json::json!({})), EXIT_UNHEALTHY);
    }

    #[test]
    fn a_down_primary_is_shown_as_last_seen() {
        let s = serde_json::json!({
            "cluster": "inmanta", "primary": null, "local_node": "pg-b", "healthy": false,
            "nodes": [
                {"name": "pg-a", "host": "10.0.0.1", "port": 5432, "role": "unknown", "reachable": false, "down": true, "snapshot": null, "replication": []},
                {"name": "pg-b", "host": "10.0.0.2", "port": 5432, "role": "standby", "reachable": true, "down": false,
                 "snapshot": {"timeline": 1, "replay_lsn": "0/3000000", "wal_receiver": null}, "replication": []}
            ],
            "problems": [],
            "last_primary": {
                "node": "pg-a", "seen_at": "2026-12-04T04:00:00.000Z", "timeline": 1,
                "current_lsn": "0/3100000", "synchronous_standby_names": "\"inmanta\"",
                "standbys": [{"name": "pg-b", "state": "streaming", "sync_state": "sync", "flush_lsn": "0/3000000"}]
            }
        });
        let text = render(&s);
        assert!(
            text.contains("Primary pg-a last seen 2026-12-04T04:00:00.000Z at 0/3100000"),
            "{text}"
        );
        assert!(
            text.contains("then pg-b: streaming, sync, flushed 1.0 MiB behind"),
            "{text}"
        );
        // A primary that answers is not "last seen".
        let mut up = s.clone();
        up["nodes"][0]["role"] = "primary".into();
        up["nodes"][0]["reachable"] = true.into();
        assert!(!render(&up).contains("last seen"));
    }

    #[test]
    fn a_replica_is_listed_with_its_role_lag_and_sessions() {
        let s = serde_json::json!({
            "cluster": "inmanta", "primary": "pg-a", "local_node": "pg-a", "healthy": true,
            "nodes": [
                {"name": "pg-a", "host": "127.0.0.1", "port": 5432, "role": "primary", "reachable": true, "down": false,
                 "snapshot": {"timeline": 1, "current_lsn": "0/3000000", "sessions_by_role": {"inmanta": 2, "pgwarden": 1}},
                 "replication": [
                    {"standby": "pg-b", "sync_state": "sync", "lag_bytes": {"replay": 0}},
                    {"standby": "ro-1", "sync_state": "async", "lag_bytes": {"replay": 2048}}
                 ]},
                {"name": "pg-b", "host": "127.0.0.1", "port": 5433, "role": "standby", "reachable": true, "down": false,
                 "snapshot": {"timeline": 1, "replay_lsn": "0/3000000", "wal_receiver": {"status": "streaming"}, "sessions_by_role": {}}, "replication": []},
                {"name": "ro-1", "host": "127.0.0.1", "port": 5434, "role": "replica", "reachable": true, "down": false,
                 "snapshot": {"timeline": 1, "replay_lsn": "0/2FFF800", "wal_receiver": {"status": "streaming"}, "sessions_by_role": {"reports": 4}}, "replication": []}
            ],
            "problems": []
        });
        let text = render(&s);
        let ro = text
            .lines()
            .find(|l| l.starts_with("ro-1"))
            .expect("ro-1 listed");
        let cols: Vec<&str> = ro.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "ro-1",
                "127.0.0.1:5434",
                "replica",
                "streaming",
                "4",
                "1",
                "0/2FFF800",
                "2.0",
                "KiB",
                "async"
            ],
            "{text}"
        );
        let a = text.lines().find(|l| l.starts_with("pg-a")).unwrap();
        assert!(a.split_whitespace().nth(4) == Some("3"), "{text}");
    }
}
