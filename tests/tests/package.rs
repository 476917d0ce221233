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
    assert!(
        test_sh.contains("cargo build --release --locked -p pgwarden --no-default-features"),
        "scripts/test.sh builds the package's binary before the suite"
    );
    assert!(read("scripts/build-deb.sh")
        .contains("cargo build --release --locked -p pgwarden --no-default-features"));
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

// ------------------------------------------------------- the Debian package

/// What the machine had before the test, restored by [`Machine::drop`]
/// also when an assertion fails: the package purged, and /etc/pgwarden
/// back as it was (the testbed of tests/tests/testbed.rs keeps it as an
/// empty mount point and may be using it right now).
struct Machine {
    etc_before: Option<(u32, u32, u32)>,
}

const PKG: &str = "pgwarden";
const ETC: &str = "/etc/pgwarden";
/// Put into a pre-existing /etc/pgwarden before a purge, so that neither
/// dpkg nor postrm removes the directory: removing it would detach the
/// bind mounts a running testbed holds on it in other mount namespaces.
const KEEP: &str = "/etc/pgwarden/.kept-by-package-test";

fn sh(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn sh_ok(program: &str, args: &[&str]) -> String {
    let out = sh(program, args);
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}):\n{}",
        args.join(" "),
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// dpkg's status of the package: "installed", "config-files", or None.
fn package_state() -> Option<String> {
    let out = sh("dpkg-query", &["-W", "-f=${db:Status-Status}", PKG]);
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !s.is_empty() && s != "not-installed").then_some(s)
}

fn owner(path: &str) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    (m.uid(), m.gid())
}

fn postgres_ids() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: a valid C string; the record is read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "no postgres user after installing the package"
    );
    // SAFETY: non-null means a valid passwd record.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

impl Machine {
    fn take() -> Machine {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            panic!(
                "this test installs, upgrades and purges the pgwarden .deb on this machine with \
                 dpkg, so it needs root (CI runs as root: .ci/run); run the suite as root"
            );
        }
        if let Some(state) = package_state() {
            // A run killed before its clean-up (nextest's timeout): start over.
            eprintln!("pgwarden package left {state} by an earlier run: purging it first");
            purge();
        }
        for path in [
            "/usr/bin/pgwarden",
            "/var/lib/pgwarden",
            "/etc/pgwarden/api.token",
        ] {
            assert!(
                !std::path::Path::new(path).exists(),
                "{path} exists but belongs to no package (deploy/install.sh?): this test would \
                 replace or purge it; remove it first"
            );
        }
        let etc_before = std::fs::metadata(ETC).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.mode() & 0o7777, m.uid(), m.gid())
        });
        Machine { etc_before }
    }
}

fn purge() {
    sh_ok("dpkg", &["--purge", PKG]);
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.etc_before.is_some() && std::path::Path::new(ETC).is_dir() {
            let _ = std::fs::write(KEEP, "");
        }
        if package_state().is_some() {
            let out = sh("dpkg", &["--purge", PKG]);
            if !out.status.success() {
                eprintln!("clean-up: dpkg --purge {PKG} failed:\n{}", text(&out));
            }
        }
        let _ = std::fs::remove_file(KEEP);
        if let Some((mode, uid, gid)) = self.etc_before {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::create_dir_all(ETC);
            let _ = std::os::unix::fs::chown(ETC, Some(uid), Some(gid));
            let _ = std::fs::set_permissions(ETC, std::fs::Permissions::from_mode(mode));
        }
    }
}

/// scripts/build-deb.sh with `args` for cargo deb; the .deb's path.
fn build_deb(args: &[&str]) -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("build.log");
    let file = std::fs::File::create(&log).unwrap();
    // Its own process group: on a timeout the whole build (cargo, rustc)
    // is killed, not only the script.
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("bash");
    // Without what cargo and nextest set for this test process: with
    // CARGO_MANIFEST_DIR of pgwarden-tests, cargo sees ring's environment
    // changed and rebuilds the whole TLS stack that scripts/test.sh built
    // beforehand (minutes). The script then runs as from a shell.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let test_only = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_BIN_",
            "CARGO_RUSTC_CURRENT_DIR",
            "NEXTEST",
            "OUT_DIR",
            "LD_LIBRARY_PATH",
            "RUST_RECURSION_COUNT",
        ]
        .iter()
        .any(|p| key.starts_with(p));
        if test_only || key == "CARGO" {
            cmd.env_remove(key.as_ref());
        }
    }
    let mut child = cmd
        .arg(format!("{ROOT}/scripts/build-deb.sh"))
        .args(args)
        .current_dir(ROOT)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("run scripts/build-deb.sh");
    // The release build from scratch takes longer than nextest lets a test
    // run; scripts/test.sh builds it before the suite. Say so instead of
    // being killed without a word.
    let status = pgwarden_testkit::poll_until(
        std::time::Duration::from_secs(180),
        "scripts/build-deb.sh to finish",
        || child.try_wait().unwrap(),
    )
    .unwrap_or_else(|e| {
        // SAFETY: kill(2) of the group this test made (its pgid is the pid).
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
        panic!(
            "{e}: the release build of pgwarden was not ready; build it first with \
             `cargo build --release --locked -p pgwarden --no-default-features` (scripts/test.sh \
             does)\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "build-deb.sh failed:\n{output}");
    let path = std::path::PathBuf::from(output.lines().last().unwrap_or("").trim());
    assert!(
        path.extension().is_some_and(|e| e == "deb") && path.is_file(),
        "build-deb.sh should print the .deb's path last:\n{output}"
    );
    path
}

fn dpkg_install(deb: &std::path::Path) {
    sh_ok("dpkg", &["-i", deb.to_str().unwrap()]);
    assert_eq!(package_state().as_deref(), Some("installed"));
}

fn installed_version() -> String {
    sh_ok("dpkg-query", &["-W", "-f=${Version}", PKG])
}

#[test]
fn the_debian_package_installs_upgrades_keeping_the_operators_files_and_purges_clean() {
    let machine = Machine::take();
    let version = env!("CARGO_PKG_VERSION");
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let v1 = build_deb(&[
        "--deb-version",
        &format!("{version}-1"),
        "--output",
        &out("v1.deb"),
    ]);
    let v2 = build_deb(&[
        "--deb-version",
        &format!("{version}-2"),
        "--output",
        &out("v2.deb"),
    ]);

    // What is in it: no test kit's demo, the sudoers file only as an example.
    let listing = sh_ok("dpkg-deb", &["-c", v1.to_str().unwrap()]);
    for want in [
        "./usr/bin/pgwarden",
        "./usr/lib/systemd/system/pgwarden.service",
        "./usr/share/polkit-1/rules.d/49-pgwarden.rules",
        "./usr/share/doc/pgwarden/examples/pgwarden.sudoers",
        // docs/install.md runs these two; the alerts' runbook_url opens runbook.md.
        "./usr/share/doc/pgwarden/examples/grants.sql",
        "./usr/share/doc/pgwarden/examples/pgwarden.nft",
        "./usr/share/doc/pgwarden/install.md",
        "./usr/share/doc/pgwarden/design.md",
        "./usr/share/doc/pgwarden/runbook.md",
        "./etc/pgwarden/pgwarden.yaml",
        "./usr/share/man/man1/pgwarden.1.gz",
        "./usr/share/man/man1/pgwarden-run.1.gz",
        "./usr/share/bash-completion/completions/pgwarden",
        "./usr/share/zsh/vendor-completions/_pgwarden",
        "./usr/share/fish/vendor_completions.d/pgwarden.fish",
    ] {
        assert!(
            listing.contains(want),
            "{want} missing from the .deb:\n{listing}"
        );
    }
    for never in ["sudoers.d", "pgwarden-demo", "api.token", "standin"] {
        assert!(!listing.contains(never), "{never} in the .deb:\n{listing}");
    }
    let conffiles = sh_ok("dpkg-deb", &["-I", v1.to_str().unwrap(), "conffiles"]);
    assert_eq!(conffiles.trim(), "/etc/pgwarden/pgwarden.yaml");

    dpkg_install(&v1);
    assert_eq!(installed_version(), format!("{version}-1"));
    let (pg_uid, pg_gid) = postgres_ids();
    let expect = [
        ("/usr/bin/pgwarden", 0o755, (0, 0)),
        ("/usr/lib/systemd/system/pgwarden.service", 0o644, (0, 0)),
        (
            "/usr/share/polkit-1/rules.d/49-pgwarden.rules",
            0o644,
            (0, 0),
        ),
        (
            "/usr/share/doc/pgwarden/examples/pgwarden.sudoers",
            0o644,
            (0, 0),
        ),
        ("/usr/share/man/man1/pgwarden.1.gz", 0o644, (0, 0)),
        (
            "/usr/share/bash-completion/completions/pgwarden",
            0o644,
            (0, 0),
        ),
        (ETC, 0o750, (0, pg_gid)),
        ("/etc/pgwarden/pgwarden.yaml", 0o640, (0, pg_gid)),
        ("/etc/pgwarden/api.token", 0o640, (0, pg_gid)),
        ("/var/lib/pgwarden", 0o700, (pg_uid, pg_gid)),
    ];
    for (path, want_mode, want_owner) in expect {
        let p = std::path::Path::new(path);
        assert_eq!(util::mode(p), want_mode, "mode of {path}");
        assert_eq!(owner(path), want_owner, "owner (uid, gid) of {path}");
    }
    assert!(!std::path::Path::new("/etc/sudoers.d/pgwarden").exists());
    assert_eq!(
        std::fs::read_to_string("/etc/pgwarden/pgwarden.yaml").unwrap(),
        std::fs::read_to_string(format!("{ROOT}/config/pgwarden.example.yaml")).unwrap()
    );
    let token = std::fs::read_to_string("/etc/pgwarden/api.token").unwrap();
    assert_eq!(token.len(), 64, "32 random bytes in hex: {token:?}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));

    // The binary runs, and is the one without the test kit.
    let v = sh_ok("/usr/bin/pgwarden", &["--version"]);
    assert_eq!(v.trim(), format!("pgwarden {version}"));
    let demo = sh("/usr/bin/pgwarden", &["demo"]);
    assert!(!demo.status.success(), "the packaged binary has `demo`");
    assert!(
        text(&demo).contains("unrecognized subcommand"),
        "{}",
        text(&demo)
    );
    let check = sh(
        "/usr/bin/pgwarden",
        &["check-config", "--config", "/etc/pgwarden/pgwarden.yaml"],
    );
    assert!(
        check.status.code() == Some(0) || check.status.code() == Some(2),
        "check-config of the shipped config crashed: {}",
        text(&check)
    );

    // The man page: a gzip file (magic 1f 8b) holding roff of pgwarden.
    let gz = std::fs::read("/usr/share/man/man1/pgwarden.1.gz").unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "not gzip");
    let page = sh_ok("gzip", &["-dc", "/usr/share/man/man1/pgwarden.1.gz"]);
    assert!(
        page.contains(".TH pgwarden") && page.contains("switchover"),
        "{page}"
    );
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/pgwarden").unwrap();
    assert!(
        bash.contains("switchover") && !bash.contains("standin"),
        "{bash}"
    );

    // A reinstall of the same version changes nothing the operator has.
    dpkg_install(&v1);
    assert_eq!(
        std::fs::read_to_string("/etc/pgwarden/api.token").unwrap(),
        token
    );

    // The operator edits the config; an upgrade keeps it and the token.
    std::fs::write("/etc/pgwarden/pgwarden.yaml", "cluster: mine\n").unwrap();
    dpkg_install(&v2);
    assert_eq!(installed_version(), format!("{version}-2"));
    assert_eq!(
        std::fs::read_to_string("/etc/pgwarden/pgwarden.yaml").unwrap(),
        "cluster: mine\n"
    );
    assert_eq!(
        std::fs::read_to_string("/etc/pgwarden/api.token").unwrap(),
        token
    );
    assert_eq!(owner("/etc/pgwarden/pgwarden.yaml"), (0, pg_gid));
    assert_eq!(util::mode(std::path::Path::new("/var/lib/pgwarden")), 0o700);

    // Remove keeps the configuration; purge takes everything.
    sh_ok("dpkg", &["-r", PKG]);
    assert_eq!(package_state().as_deref(), Some("config-files"));
    assert!(!std::path::Path::new("/usr/bin/pgwarden").exists());
    assert_eq!(
        std::fs::read_to_string("/etc/pgwarden/api.token").unwrap(),
        token
    );
    assert!(std::path::Path::new("/etc/pgwarden/pgwarden.yaml").exists());
    if machine.etc_before.is_some() {
        std::fs::write(KEEP, "").unwrap();
    }
    purge();
    assert_eq!(package_state(), None);
    for gone in [
        "/etc/pgwarden/pgwarden.yaml",
        "/etc/pgwarden/api.token",
        "/var/lib/pgwarden",
        "/usr/lib/systemd/system/pgwarden.service",
        "/usr/share/man/man1/pgwarden.1.gz",
        "/usr/share/doc/pgwarden",
    ] {
        assert!(
            !std::path::Path::new(gone).exists(),
            "{gone} left after purge"
        );
    }
    if machine.etc_before.is_none() {
        assert!(
            !std::path::Path::new(ETC).exists(),
            "{ETC} left after purge"
        );
    }
    drop(machine);
}
