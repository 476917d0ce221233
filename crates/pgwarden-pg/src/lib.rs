//! Everything pgwarden says to PostgreSQL. Today: the probe, which reads one
//! node's state in a single round trip over a persistent connection.

mod probe;

pub use probe::{ProbeError, Prober, Target};
