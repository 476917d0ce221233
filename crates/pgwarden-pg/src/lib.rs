//! Everything pgwarden says to PostgreSQL: the probe, which reads one node's
//! state in a single round trip over a persistent connection, and the SQL
//! actions of an operation (promote, ALTER SYSTEM, slots, sessions).

mod admin;
mod probe;

pub use admin::{quote_ident, quote_literal, AdminError, Node};
pub use probe::{ProbeError, Prober, Target};
