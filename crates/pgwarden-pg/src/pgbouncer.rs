//! pgbouncer's admin console (the `pgbouncer` database): PAUSE, RESUME,
//! RELOAD, RECONNECT, SHOW DATABASES and SHOW SERVERS, over the simple-query
//! protocol (the only one the console speaks).
//!
//! Each command opens its own connection: a PAUSE holds its connection until
//! every server connection is released, and the RESUME that undoes a PAUSE
//! which took too long must not queue behind it. A login to a local pooler
//! costs a millisecond or two. Every command is bounded by a timeout.

use std::time::Duration;

use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::probe::Target;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("pgbouncer at {at} does not answer: {detail}")]
    Connect { at: String, detail: String },
    #[error("pgbouncer at {at}: `{command}` got no answer within {after:?}")]
    Timeout {
        at: String,
        command: String,
        after: Duration,
    },
    #[error("pgbouncer at {at}: `{command}` failed: {detail}")]
    Command {
        at: String,
        command: String,
        detail: String,
    },
}

/// One pgbouncer admin console.
#[derive(Clone, Debug)]
pub struct Console {
    /// `dbname` is ignored: the console is always the `pgbouncer` database.
    pub target: Target,
    /// Budget of one command other than PAUSE (connect included).
    pub timeout: Duration,
}

/// A row of a SHOW command, by column name.
pub type Row = std::collections::BTreeMap<String, Option<String>>;

/// One entry of `SHOW DATABASES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseEntry {
    pub name: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub paused: bool,
}

/// One server connection of `SHOW SERVERS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConnection {
    pub user: String,
    pub database: String,
    pub state: String,
    pub addr: String,
    pub port: Option<u16>,
}

/// The console's name for a database in a command: an identifier, quoted
/// as pgbouncer's admin parser reads one.
fn ident(db: &str) -> String {
    format!("\"{}\"", db.replace('"', "\"\""))
}

impl Console {
    fn at(&self) -> String {
        format!("{}:{}", self.target.host, self.target.port)
    }

    /// Runs one console command within `budget`, on a new connection.
    async fn run(&self, command: &str, budget: Duration) -> Result<Vec<Row>, ConsoleError> {
        let work = async {
            let mut cfg = self.target.config(budget);
            cfg.dbname("pgbouncer");
            let (client, connection) =
                cfg.connect(NoTls)
                    .await
                    .map_err(|e| ConsoleError::Connect {
                        at: self.at(),
                        detail: crate::probe::chain(&e),
                    })?;
            let driver = tokio::spawn(async move {
                let _ = connection.await;
            });
            let result = client.simple_query(command).await;
            drop(client);
            let _ = driver.await;
            let messages = result.map_err(|e| ConsoleError::Command {
                at: self.at(),
                command: command.to_owned(),
                detail: crate::probe::chain(&e),
            })?;
            Ok(messages
                .into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(
                        r.columns()
                            .iter()
                            .enumerate()
                            .map(|(i, c)| (c.name().to_owned(), r.get(i).map(str::to_owned)))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect())
        };
        tokio::time::timeout(budget, work)
            .await
            .map_err(|_| ConsoleError::Timeout {
                at: self.at(),
                command: command.to_owned(),
                after: budget,
            })?
    }

    /// PAUSE `db`: answers once every server connection of `db` is back in
    /// the pool (each transaction in flight finished, in transaction
    /// pooling). One that takes longer than `pause_timeout` is a transaction
    /// that did not finish: the pause is undone (RESUME) and the error says
    /// so. A pause pgbouncer already holds (a resumed step) counts as done.
    pub async fn pause(&self, db: &str, pause_timeout: Duration) -> Result<(), ConsoleError> {
        let command = format!("PAUSE {}", ident(db));
        match self.run(&command, pause_timeout).await {
            Ok(_) => Ok(()),
            Err(ConsoleError::Command { detail, .. }) if detail.contains("already paused") => {
                Ok(())
            }
            Err(ConsoleError::Timeout { .. }) => {
                let undone = match self.resume(db).await {
                    Ok(()) => "resumed again".to_owned(),
                    Err(e) => format!("and the RESUME that should undo it failed too: {e}"),
                };
                Err(ConsoleError::Command {
                    at: self.at(),
                    command,
                    detail: format!(
                        "a transaction did not finish within {pause_timeout:?} (pause_timeout); pgbouncer {undone}"
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// RESUME `db`; one that is not paused counts as resumed.
    pub async fn resume(&self, db: &str) -> Result<(), ConsoleError> {
        match self
            .run(&format!("RESUME {}", ident(db)), self.timeout)
            .await
        {
            Ok(_) => Ok(()),
            Err(ConsoleError::Command { detail, .. }) if detail.contains("not paused") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// RELOAD: pgbouncer re-reads pgbouncer.ini.
    pub async fn reload(&self) -> Result<(), ConsoleError> {
        self.run("RELOAD", self.timeout).await.map(|_| ())
    }

    /// RECONNECT `db`: every server connection of `db` is closed once
    /// released, so none stays on the old primary.
    pub async fn reconnect(&self, db: &str) -> Result<(), ConsoleError> {
        self.run(&format!("RECONNECT {}", ident(db)), self.timeout)
            .await
            .map(|_| ())
    }

    pub async fn databases(&self) -> Result<Vec<DatabaseEntry>, ConsoleError> {
        let rows = self.run("SHOW DATABASES", self.timeout).await?;
        Ok(rows
            .iter()
            .map(|r| DatabaseEntry {
                name: text(r, "name"),
                host: r.get("host").cloned().flatten(),
                port: text(r, "port").parse().ok(),
                paused: text(r, "paused") == "1",
            })
            .collect())
    }

    pub async fn servers(&self) -> Result<Vec<ServerConnection>, ConsoleError> {
        let rows = self.run("SHOW SERVERS", self.timeout).await?;
        Ok(rows
            .iter()
            .map(|r| ServerConnection {
                user: text(r, "user"),
                database: text(r, "database"),
                state: text(r, "state"),
                addr: text(r, "addr"),
                port: text(r, "port").parse().ok(),
            })
            .collect())
    }
}

fn text(r: &Row, column: &str) -> String {
    r.get(column).cloned().flatten().unwrap_or_default()
}
