//! Stamps the git commit into the build (`pgwarden_build_info{revision}`),
//! so a scrape says exactly which code runs, not only the version. Outside a
//! git checkout (a source tarball, a vendored crate) it is "unknown", or
//! what `PGWARDEN_GIT_REVISION` says (packagers building from a tarball).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PGWARDEN_GIT_REVISION");
    let revision = std::env::var("PGWARDEN_GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    // Rebuild when HEAD moves (a commit, a checkout), also in a worktree,
    // whose HEAD and reflog live under its own git dir.
    for path in ["HEAD", "logs/HEAD"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            if std::path::Path::new(&p).exists() {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    println!("cargo:rustc-env=PGWARDEN_GIT_REVISION={revision}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !s.is_empty()).then_some(s)
}
