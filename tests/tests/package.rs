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

/// README's two commands are the whole set-up: its test command is
/// scripts/test.sh, which runs the workspace suite after
/// scripts/install-test-deps.sh, which CI (.ci/run) runs too; and every
/// Debian package a test asks for (`util::tool(name, package)`) is in it.
#[test]
fn readme_ci_and_the_install_script_agree_on_the_set_up() {
    let read = |p: &str| {
        std::fs::read_to_string(format!("{ROOT}/{p}")).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let readme = read("README.md");
    for cmd in ["```sh\nscripts/demo.sh\n```", "```sh\nscripts/test.sh\n```"] {
        assert!(readme.contains(cmd), "README should say {cmd:?}");
    }
    assert!(read("scripts/demo.sh").contains("cargo run -p pgwarden -- demo"));
    let test_sh = read("scripts/test.sh");
    assert!(test_sh.contains("scripts/install-test-deps.sh"));
    assert!(test_sh.contains("cargo build --workspace && cargo nextest run --workspace"));
    let ci = read(".ci/run");
    assert!(
        ci.contains("\nscripts/test.sh\n"),
        ".ci/run runs README's command"
    );
    assert!(ci.contains("\nscripts/install-test-deps.sh\n"));

    let deps = read("scripts/install-test-deps.sh");
    let mut wanted: Vec<String> = [
        "haproxy",
        "iproute2",
        "postgresql-15",
        "chromium",
        "nftables",
    ]
    .map(String::from)
    .to_vec();
    for entry in std::fs::read_dir(format!("{ROOT}/tests/tests"))
        .unwrap()
        .chain(std::fs::read_dir(format!("{ROOT}/tests/tests/util")).unwrap())
    {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        // tool("promtool", "prometheus"): the second string is the package.
        for call in src.split("tool(\"").skip(1) {
            if let Some(pkg) = call.split('"').nth(2) {
                if !pkg.is_empty() && pkg.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                    wanted.push(pkg.to_owned());
                }
            }
        }
    }
    assert!(
        wanted.contains(&"prometheus".to_owned()),
        "parsed: {wanted:?}"
    );
    for pkg in wanted {
        assert!(
            deps.contains(&format!("need+=({pkg})")),
            "scripts/install-test-deps.sh does not install {pkg}"
        );
    }
}
