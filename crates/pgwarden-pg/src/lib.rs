//! Everything pgwarden says to PostgreSQL: the probe, which reads one node's
//! state in a single round trip over a persistent connection, and the SQL
//! actions of an operation (promote, ALTER SYSTEM, slots, sessions) over a
//! small pool per node; TLS to the nodes (`sslmode`, `sslrootcert`); and
//! pgbouncer's admin console, which speaks the same protocol.

mod admin;
pub mod pgbouncer;
mod probe;
mod tls;

pub use admin::{quote_ident, quote_literal, AdminError, Node};
pub use probe::{ProbeError, Prober, Target};
pub use tls::PgTls;
