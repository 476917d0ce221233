//! Real two-node PostgreSQL clusters (primary + synchronous standby) on loopback for
//! pgwarden's integration tests and `pgwarden demo`, plus a stand-in application.
//!
//! Nothing is mocked: [`TestCluster::start`] runs initdb, pg_basebackup and pg_ctl, and
//! dropping the cluster stops the servers again. As root, server commands run as the
//! `postgres` user through `runuser`.
//!
//! [`standin`] is the stand-in application itself; [`service`] wraps it in
//! `start`/`stop`/`is-running` commands (`pgwarden standin-ctl`) for pgwarden's
//! `application:` section.
//!
//! [`pgbouncer`] runs a real pgbouncer in front of a cluster (transaction pooling).
//! [`etcd`] runs a real etcd member for the tests of the etcd operation lock.
//!
//! [`testbed`] puts the two nodes on separate simulated hosts (network namespaces with
//! their own addresses and `/etc`), with an operator host and network cuts between them.

mod bins;
mod cluster;
mod error;
pub mod etcd;
pub mod pgbouncer;
mod pgwarden_config;
mod procs;
pub mod service;
mod slots;
pub mod standin;
pub mod testbed;
mod testbed_config;
mod testbed_etcd;
mod util;

pub use bins::{find_pg_bin_dir, find_pg_bin_dir_in, DEBIAN_PG_ROOT};
pub use cluster::{ClusterOptions, Credentials, PgNode, Secret, StopMode, TestCluster};
pub use error::{CommandFailure, KitError};
pub use pgwarden_config::{pgwarden_config, state_dir, write_pgwarden_config, DaemonLayout};
pub use procs::{pid_alive, postgres_processes_in};
pub use service::standin_application_yaml;
pub use slots::{MAX_CLUSTERS_ENV, SLOT_DIR};
pub use testbed::{DaemonUser, Footprint, Host, Partition, Testbed, TestbedOptions, Writer};
pub use util::{free_port, poll_until};
