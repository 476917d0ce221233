//! Man pages and shell completions generated from the clap definition, so
//! they never drift from the real arguments: `pgwarden generate-man DIR` and
//! `pgwarden generate-completions DIR` (hidden; scripts/build-deb.sh runs
//! them on the binary it packages, which is why they are not build steps:
//! the pages then describe exactly the shipped command, without `demo`).

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

/// `pgwarden.1` and one `pgwarden-SUBCOMMAND.1` per visible subcommand.
pub fn man(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = crate::Cli::command();
    write_page(dir, "pgwarden", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // The page's NAME and SYNOPSIS say `pgwarden-run`, as git's do.
        // clap takes a &'static str here (without its `string` feature);
        // this process writes a dozen pages and exits.
        let name: &'static str = format!("pgwarden-{}", sub.get_name()).leak();
        write_page(dir, name, sub.clone().name(name).bin_name(name))?;
    }
    Ok(())
}

fn write_page(dir: &Path, name: &str, cmd: clap::Command) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut buf)
        .context("cannot render the man page")?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))
}

/// `pgwarden.bash`, `_pgwarden` (zsh) and `pgwarden.fish`.
pub fn completions(dir: &Path) -> anyhow::Result<()> {
    use clap_complete::Shell;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = crate::Cli::command();
        let path = clap_complete::generate_to(shell, &mut cmd, "pgwarden", dir)
            .with_context(|| format!("cannot write the {shell} completions"))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
