//! Pure logic of pgwarden: the configuration model and its validation, what one
//! poll of one node saw ([`snapshot::NodeSnapshot`]), the derived picture of the
//! whole cluster ([`view::ClusterView`]) and the health rules that find problems
//! in it.
//!
//! Nothing here does I/O or reads a clock: time and observations go in, a view
//! and a list of problems come out. That is what lets every rule be tested
//! exhaustively without PostgreSQL (see the unit tests in each module).

pub mod answer;
mod assess;
pub mod config;
pub mod conninfo;
// The fuzz targets' properties; public so `fuzz/` (cargo-fuzz) can call them.
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod ini;
pub mod last_primary;
pub mod listen;

pub mod operation;
pub mod pgbouncer_ini;
pub mod preflight;
pub mod problem;
pub mod progress;
pub mod routes;
pub mod secret;
pub mod snapshot;
pub mod units;
pub mod view;

pub use answer::Answer;
pub use config::{Config, ConfigError};
pub use health::{Problem, ProblemCode};
pub use secret::Secret;
pub use snapshot::NodeSnapshot;
pub use view::{ClusterView, NodeObservation, Role};
