//! What ships: the binary built without the `demo` feature links no test
//! kit (checked with `cargo tree`, as an operator auditing it would), and
//! the workspace build, which the tests drive, keeps `demo` and the hidden
//! `standin-*` commands.

mod util;

use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The cargo that runs the tests (cargo and nextest set `CARGO`), else the
/// one on the PATH.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(ROOT);
    c
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_binary_without_default_features_links_no_test_kit() {
    // Exactly the command of the issue: normal (non-dev, non-build) edges.
    let out = cargo()
        .args([
            "tree",
            "-p",
            "pgwarden",
            "-e",
            "normal",
            "--no-default-features",
        ])
        .output()
        .expect("run cargo tree");
    let tree = text(&out);
    assert!(out.status.success(), "cargo tree failed:\n{tree}");
    assert!(
        tree.starts_with("pgwarden v") && tree.contains("pgwarden-daemon"),
        "not the tree of pgwarden:\n{tree}"
    );
    assert!(
        !tree.contains("pgwarden-testkit"),
        "the shipped binary links the test kit:\n{tree}"
    );
    // The same command with the default features does show it: the check
    // above would catch a regression, not pass by reading the wrong tree.
    let out = cargo()
        .args(["tree", "-p", "pgwarden", "-e", "normal"])
        .output()
        .expect("run cargo tree");
    assert!(
        text(&out).contains("pgwarden-testkit"),
        "the default build should have the demo:\n{}",
        text(&out)
    );
}

#[test]
fn the_workspace_build_keeps_demo_and_the_standin_commands() {
    let help = Command::new(util::pgwarden_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("demo"),
        "`pgwarden demo` missing from the default build:\n{}",
        text(&help)
    );
    // Hidden, but there: the tests' application commands call it.
    let ctl = Command::new(util::pgwarden_bin())
        .args(["standin-ctl", "--help"])
        .output()
        .unwrap();
    assert!(ctl.status.success(), "standin-ctl: {}", text(&ctl));
}
