//! What the cluster benches share (`pgwarden-failover-bench`, `pgwarden-zero-loss`,
//! `pgwarden-soak`): a real two-node cluster with the stand-in application and a
//! `pgwarden run` beside each node ([`rig`]), a minimal HTTP client for the daemons'
//! API ([`http`]), a Ctrl-C flag and a median.

pub mod http;
pub mod rig;

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM only set a flag ([`interrupted`]): the bench stops at its next
/// check, and the destructors stop the daemons, the application and the cluster
/// instead of leaving them running.
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

/// Whether SIGINT or SIGTERM arrived since [`install_signal_handlers`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// What a bench's run says at the end: `()` (an error is the only failure) or a
/// verdict (`false`: the figures broke a promise).
pub trait Verdict {
    fn passed(&self) -> bool;
}

impl Verdict for () {
    fn passed(&self) -> bool {
        true
    }
}

impl Verdict for bool {
    fn passed(&self) -> bool {
        *self
    }
}

/// The `main` of every bench binary: parses the arguments (`Ok(None)`: print `usage`),
/// installs the Ctrl-C handlers and runs. Exit status 0 when the run passed, 1 when it
/// failed or its verdict is negative, 2 for bad arguments.
pub fn bench_main<O, V: Verdict>(
    name: &str,
    usage: &str,
    parse: impl FnOnce(std::env::Args) -> anyhow::Result<Option<O>>,
    run: impl FnOnce(&O) -> anyhow::Result<V>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let mut args = std::env::args();
    args.next();
    let opts = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{usage}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{name}: {e:#}");
            return ExitCode::from(2);
        }
    };
    install_signal_handlers();
    match run(&opts) {
        Ok(v) if v.passed() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The median (mean of the two middle values for an even count); 0 when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
