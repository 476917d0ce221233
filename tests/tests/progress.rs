//! Progress of a rejoin's copy on a real cluster: while pg_basebackup
//! copies a few hundred MB (held to `rejoin.basebackup_max_rate`, so it
//! lasts long enough to be watched), `/v1/operations` shows the bytes done
//! and total, the rate and the ETA on the running step, `/metrics` the same
//! figures, and the step keeps its final figure once the copy is in place.

mod util;

use std::time::{Duration, Instant};

use pgwarden_testkit::{poll_until, StopMode};
use util::{metric, Env, Options};

/// The copy's cap: 200 MiB take about 12 s.
const MAX_RATE: u64 = 16 << 20;

#[test]
fn a_rejoin_copy_shows_its_bytes_rate_and_eta_while_it_runs() {
    let (env, app) = Env::start_with_app(Options {
        config_extra: format!("rejoin:\n  basebackup_max_rate: {}MiB\n", MAX_RATE >> 20),
        ..Options::default()
    });
    env.wait_health(0, "healthy first", env.within_polls(3), |c, _| c == 200);
    // About 200 MiB that the copy must move: rows of ~1 kB, under the size
    // at which PostgreSQL would compress them.
    env.cluster
        .psql(
            0,
            "CREATE TABLE progress_ballast AS \
             SELECT g, repeat(md5(g::text), 30) AS pad FROM generate_series(1, 190000) g",
        )
        .unwrap();
    let db_bytes: u64 = env
        .cluster
        .psql(
            0,
            "SELECT sum(pg_database_size(oid))::bigint FROM pg_database",
        )
        .unwrap()
        .parse()
        .unwrap();

    // pg-b loses its data directory: the rejoin clones it afresh from pg-a.
    env.cluster.stop_node(1, StopMode::Fast).unwrap();
    std::fs::remove_dir_all(&env.cluster.node(1).data_dir).unwrap();
    let started = Instant::now();
    let r = env.daemons[1].post("/v1/rejoin", r#"{"node": "pg-b"}"#, &env.token());
    assert!(matches!(r.status, 200 | 202), "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/operations/{id}");
    // The CLI follows it without a terminal: plain progress lines.
    let follower = std::process::Command::new(util::pgwarden_bin())
        .args(["operations", &id, "--follow", "--url", &env.daemons[1].url])
        .env_remove("PGWARDEN_URL")
        .env_remove("PGWARDEN_TOKEN_FILE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rebuild = |op: &serde_json::Value| {
        op["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "rebuild_data_directory")
            .cloned()
            .unwrap()
    };

    // Half-way: bytes done and total, and once two readings are a second
    // apart, a rate and an ETA.
    let seen = poll_until(
        Duration::from_secs(60),
        "a copy half-way with a rate",
        || {
            let op = env.daemons[1].get(&path).json();
            assert_eq!(op["state"], "running", "{op}");
            let step = rebuild(&op);
            let p = &step["progress"];
            let (done, total) = (p["bytes_done"].as_u64()?, p["bytes_total"].as_u64()?);
            (step["state"] == "running"
                && p["phase"] == "streaming database files"
                && 0 < done
                && done < total
                && p["rate_bytes_per_s"].as_f64().is_some()
                && p["eta_s"].as_f64().is_some())
            .then(|| p.clone())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", env.daemons[1].log_text()));
    println!(
        "seen after {:.1}s: {} (the databases: {db_bytes} bytes)",
        started.elapsed().as_secs_f64(),
        serde_json::to_string(&seen).unwrap()
    );
    let total = seen["bytes_total"].as_u64().unwrap();
    // pg_basebackup's estimate is the source's data directory without its
    // WAL: the databases plus a few MB of catalogs and state files.
    assert!(
        total.abs_diff(db_bytes) < db_bytes / 20 + (16 << 20),
        "total {total} vs the databases' {db_bytes}"
    );
    let rate = seen["rate_bytes_per_s"].as_f64().unwrap();
    assert!(
        rate > 0.0 && rate < 2.0 * MAX_RATE as f64,
        "the rate {rate} respects --max-rate {MAX_RATE}"
    );
    let eta = seen["eta_s"].as_f64().unwrap();
    assert!(eta > 0.0 && eta < 120.0, "eta {eta}");

    // The same figures as metrics, while the copy runs.
    let labels = [("operation", "rejoin"), ("step", "rebuild_data_directory")];
    poll_until(env.within_polls(3), "the progress metrics", || {
        let text = env.daemons[1].metrics();
        let with = |kind| {
            let mut l = labels.to_vec();
            l.push(("kind", kind));
            metric(&text, "pgwarden_operation_progress_bytes", &l)
        };
        let (done, total) = (with("done")?, with("total")?);
        let rate = metric(
            &text,
            "pgwarden_operation_progress_rate_bytes_per_second",
            &labels,
        )?;
        (done > 0.0 && done < total && rate > 0.0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", env.daemons[1].metrics()));

    // The operation ends well, the step keeping its final figure.
    let op = poll_until(Duration::from_secs(120), "the rejoin to end", || {
        let op = env.daemons[1].get(&path).json();
        (op["state"] != "running").then_some(op)
    })
    .unwrap();
    assert_eq!(op["state"], "succeeded", "{op}");
    println!(
        "rejoin took {:.1}s; rebuild_data_directory: {}",
        started.elapsed().as_secs_f64(),
        rebuild(&op)["message"]
    );
    let followed = follower.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&followed.stdout);
    println!("pgwarden operations {id} --follow (no terminal):\n{out}");
    assert!(
        followed.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&followed.stderr)
    );
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("rebuild_data_directory   streaming database files: "))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("MiB/s, about ") && l.contains(" left")),
        "{out}"
    );
    // At most one line every 5 s of a phase (and one per phase change).
    let copy_s = started.elapsed().as_secs_f64();
    assert!(lines.len() as f64 <= copy_s / 5.0 + 2.0, "{out}");
    let step = rebuild(&op);
    assert_eq!(step["progress"]["phase"], "done", "{step}");
    assert!(
        step["progress"]["bytes_done"].as_u64().unwrap() >= seen["bytes_done"].as_u64().unwrap()
    );
    assert!(
        step["message"].as_str().unwrap().contains("/s)"),
        "the message says the copy's size and rate: {step}"
    );
    // No progress series once no step runs.
    poll_until(env.within_polls(3), "the progress series gone", || {
        let text = env.daemons[1].metrics();
        (!text.contains("pgwarden_operation_progress_bytes{")).then_some(())
    })
    .unwrap();
    // The row was ours: nothing else copies pg-a.
    assert_eq!(
        env.cluster
            .psql(0, "SELECT count(*) FROM pg_stat_progress_basebackup")
            .unwrap(),
        "0"
    );
    for i in 0..2 {
        env.wait_health(i, "healthy", env.within_polls(4), |c, _| c == 200);
    }
    env.assert_invariants(&app, 0);
}
