//! `pgwarden status`: a readable table of both nodes (like `patronictl
//! list`), from a daemon's `/v1/status`.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

pub async fn run(
    url: Option<String>,
    config: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    // Only `listen` and `tls` are needed: no secret file is read, so an
    // operator without access to them can still ask.
    let config = match &config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some(
                pgwarden_core::Config::parse_str(&path.display().to_string(), &text)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            )
        }
        None => None,
    };
    let base = match (url, &config) {
        (Some(u), _) => u,
        (None, Some(c)) => crate::client::url_of_config(c),
        (None, None) => crate::client::DEFAULT_URL.to_owned(),
    };
    let ca_file = ca_file.or_else(|| {
        config
            .as_ref()
            .and_then(|c| c.tls.as_ref())
            .map(|t| pgwarden_daemon::tls::trust_file(t).to_owned())
    });
    let http = crate::client::http_client(reqwest::Client::builder(), ca_file.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let url = format!("{}/v1/status", base.trim_end_matches('/'));
    let status: Value = http
        .get(&url)
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .with_context(|| {
            format!("cannot reach the pgwarden daemon at {url} (is it running? pass --url)")
        })?
        .error_for_status()
        .with_context(|| format!("{url} answered with an error"))?
        .json()
        .await
        .with_context(|| format!("{url} did not answer with status JSON"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(())
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
