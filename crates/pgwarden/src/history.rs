//! `pgwarden history`: the operations of every daemon of the cluster in one
//! list, oldest first, like `patronictl history`. Each daemon journals only
//! the operations it ran itself, so one daemon's `/v1/operations` is half
//! the story after a switchover back.
//!
//! The daemon asked first is found as for every client command; the others
//! are the `nodes[].api` of the config. A daemon that cannot be asked is
//! named with the reason, and the exit status says the list is incomplete.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::{Client, Connect};
use crate::render::{
    date_time, detail, human_duration, table, total_duration, truncate, Operation,
};

/// Exit status: every daemon answered.
pub const EXIT_COMPLETE: u8 = 0;
/// Exit status: some daemon did not answer or could not be asked: its
/// operations are missing.
pub const EXIT_INCOMPLETE: u8 = 1;
/// Exit status: no daemon answered.
pub const EXIT_NONE: u8 = 2;

const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// One daemon's answer.
pub struct Journal {
    /// The node the daemon runs beside (or, when that is not known, how it
    /// was addressed).
    pub node: String,
    pub url: String,
    /// Its operations, or why there are none to show.
    pub operations: Result<Vec<Operation>, String>,
}

pub async fn run(connect: Connect, json: bool) -> anyhow::Result<u8> {
    let config = connect.read_config()?;
    let first = connect.resolve(false)?.client;
    let ca_file = connect.ca_file(config.as_ref());

    // The first daemon says which node it runs beside: that is the one
    // journal not to ask for again through the config.
    let status = first.get_with_timeout("/v1/status", ASK_TIMEOUT).await;
    let first_node = match (&status, &config) {
        (Ok(s), _) => s["local_node"].as_str().map(str::to_owned),
        (Err(_), Some(c)) if connect.url.is_none() => Some(c.local_node.clone()),
        _ => None,
    };
    let mut journals = vec![Journal {
        node: first_node
            .clone()
            .unwrap_or_else(|| first.base().to_owned()),
        url: first.base().to_owned(),
        operations: match status {
            Ok(_) => operations_of(&first).await,
            Err(e) => Err(e.to_string()),
        },
    }];
    match &config {
        Some(c) => {
            for n in c
                .nodes
                .iter()
                .filter(|n| Some(&n.name) != first_node.as_ref())
            {
                let Some(api) = &n.api else {
                    journals.push(Journal {
                        node: n.name.clone(),
                        url: String::new(),
                        operations: Err(format!(
                            "not asked: nodes[{}].api is not set in the config",
                            n.name
                        )),
                    });
                    continue;
                };
                let base = api.trim_end_matches('/').to_owned();
                let operations = match Client::new(base.clone(), None, ca_file.as_deref()) {
                    Ok(client) => operations_of(&client).await,
                    Err(e) => Err(e.to_string()),
                };
                journals.push(Journal {
                    node: n.name.clone(),
                    url: base,
                    operations,
                });
            }
        }
        None => journals.push(Journal {
            node: "the other daemon".into(),
            url: String::new(),
            operations: Err(
                "not asked: its address is nodes[].api of the config: pass --config".into(),
            ),
        }),
    }

    let merged = merge(&journals);
    if json {
        let operations: Vec<Value> = merged
            .iter()
            .map(|(node, raw)| {
                let mut v = raw.clone();
                v["daemon"] = json!(node);
                v
            })
            .collect();
        let unanswered: Vec<Value> = journals
            .iter()
            .filter_map(|j| {
                j.operations
                    .as_ref()
                    .err()
                    .map(|e| json!({"node": j.node, "url": j.url, "error": e}))
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"operations": operations, "unanswered": unanswered})
            )?
        );
    } else {
        print!("{}", render(&journals));
    }
    Ok(exit_code(&journals))
}

/// `GET /v1/operations` of one daemon.
async fn operations_of(client: &Client) -> Result<Vec<Operation>, String> {
    let v = client
        .get_with_timeout("/v1/operations", ASK_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_value(v["operations"].clone())
        .map_err(|e| format!("its /v1/operations is not what this CLI expects: {e}"))
}

pub fn exit_code(journals: &[Journal]) -> u8 {
    let answered = journals.iter().filter(|j| j.operations.is_ok()).count();
    match answered {
        0 => EXIT_NONE,
        n if n == journals.len() => EXIT_COMPLETE,
        _ => EXIT_INCOMPLETE,
    }
}

/// Every answered journal's operations, each with the node of its daemon,
/// oldest first; an id seen twice is shown once.
fn sorted(journals: &[Journal]) -> Vec<(&str, &Operation)> {
    let mut seen = HashSet::new();
    let mut all: Vec<(&str, &Operation)> = Vec::new();
    for j in journals {
        for op in j.operations.iter().flatten() {
            if seen.insert(op.id.as_str()) {
                all.push((j.node.as_str(), op));
            }
        }
    }
    // RFC 3339 UTC times of one format sort as text; the id (which starts
    // with the start time) breaks ties.
    all.sort_by(|a, b| (&a.1.created_at, &a.1.id).cmp(&(&b.1.created_at, &b.1.id)));
    all
}

/// [`sorted`] as the JSON of `--json`.
pub fn merge(journals: &[Journal]) -> Vec<(String, Value)> {
    sorted(journals)
        .into_iter()
        .map(|(node, op)| (node.to_owned(), operation_json(op)))
        .collect()
}

/// The fields `--json` shows of an operation.
fn operation_json(op: &Operation) -> Value {
    json!({
        "id": op.id,
        "kind": op.kind,
        "state": op.state,
        "target": op.request.target,
        "created_at": op.created_at,
        "finished_at": op.finished_at,
        "from": from_node(op),
        "timeline_before": fact(&op.facts, "timeline_before"),
        "new_timeline": fact(&op.facts, "new_timeline"),
    })
}

fn fact(facts: &BTreeMap<String, Value>, key: &str) -> Option<String> {
    facts.get(key).and_then(|v| match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    })
}

/// The node an operation moved away from: a failover's or switchover's old
/// primary, the primary a rejoined node follows.
fn from_node(op: &Operation) -> Option<String> {
    match op.kind.as_str() {
        "rejoin" => fact(&op.facts, "primary"),
        _ => fact(&op.facts, "old_primary"),
    }
}

/// The table, then one line per daemon that did not answer.
pub fn render(journals: &[Journal]) -> String {
    let ops = sorted(journals);
    let mut out = String::new();
    if ops.is_empty() {
        out.push_str("No operations.\n");
    } else {
        let mut rows = vec![[
            "CREATED", "DAEMON", "KIND", "FROM", "TO", "TL", "STATE", "DURATION", "ID", "DETAIL",
        ]
        .map(String::from)
        .to_vec()];
        for (node, op) in ops {
            // The timeline the promoted node writes on. Not "before -> after":
            // a standby whose walreceiver has stopped (a switchover stops the
            // primary first) reports the timeline of its last restartpoint,
            // so `timeline_before` can be older than the one it replayed.
            let tl = fact(&op.facts, "new_timeline").unwrap_or_else(|| "-".into());
            rows.push(vec![
                op.created_at.as_deref().map(date_time).unwrap_or_default(),
                node.to_owned(),
                op.kind.clone(),
                from_node(op).unwrap_or_else(|| "-".into()),
                op.request.target.clone(),
                tl,
                op.state.clone(),
                total_duration(op)
                    .map(human_duration)
                    .unwrap_or_else(|| "-".into()),
                op.id.clone(),
                if op.state == "succeeded" {
                    String::new()
                } else {
                    truncate(&detail(op), 60)
                },
            ]);
        }
        out.push_str(&table(&rows));
    }
    for j in journals {
        if let Err(e) = &j.operations {
            let at = if j.url.is_empty() {
                String::new()
            } else {
                format!(" ({})", j.url)
            };
            out.push_str(&format!(
                "Missing: the operations of the daemon beside {}{at}: {e}\n",
                j.node
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: &str, kind: &str, created: &str, facts: Value) -> Operation {
        serde_json::from_value(json!({
            "id": id, "kind": kind, "state": "succeeded",
            "request": {"target": "pg-b"}, "created_at": created,
            "finished_at": created, "steps": [], "facts": facts,
        }))
        .unwrap()
    }

    #[test]
    fn both_journals_merge_oldest_first_with_timelines_and_the_silent_one_is_named() {
        let journals = vec![
            Journal {
                node: "pg-a".into(),
                url: "http://10.0.0.1:8008".into(),
                operations: Ok(vec![op(
                    "20261204T100000Z-switchover-aaaaaa",
                    "switchover",
                    "2026-12-04T10:00:00.000Z",
                    json!({"old_primary": "pg-a", "timeline_before": "1", "new_timeline": "2"}),
                )]),
            },
            Journal {
                node: "pg-b".into(),
                url: "http://10.0.0.2:8008".into(),
                operations: Ok(vec![op(
                    "20261204T090000Z-rejoin-bbbbbb",
                    "rejoin",
                    "2026-12-04T09:00:00.000Z",
                    json!({"primary": "pg-a"}),
                )]),
            },
        ];
        let text = render(&journals);
        let rejoin = text.find("rejoin").unwrap();
        let switchover = text.find("switchover").unwrap();
        assert!(rejoin < switchover, "oldest first:\n{text}");
        let tl = |kind: &str| {
            text.lines()
                .find(|l| l.contains(kind))
                .and_then(|l| l.split_whitespace().nth(6).map(str::to_owned))
        };
        assert_eq!(tl("switchover").as_deref(), Some("2"), "{text}");
        assert_eq!(tl("rejoin").as_deref(), Some("-"), "{text}");
        assert_eq!(exit_code(&journals), EXIT_COMPLETE);
        assert_eq!(merge(&journals)[1].1["new_timeline"], "2");

        let mut partial = journals;
        partial[1].operations = Err("cannot reach the pgwarden daemon".into());
        let text = render(&partial);
        assert!(
            text.contains("Missing: the operations of the daemon beside pg-b (http://10.0.0.2:8008): cannot reach"),
            "{text}"
        );
        assert_eq!(exit_code(&partial), EXIT_INCOMPLETE);
        partial[0].operations = Err("no".into());
        assert_eq!(exit_code(&partial), EXIT_NONE);
    }
}
