//! pgbouncer's admin console (the `pgbouncer` database): PAUSE, RESUME,
//! RELOAD, RECONNECT, SHOW DATABASES and SHOW SERVERS, over the simple-query
//! protocol (the only one the console speaks).
//!
//! Each call opens its own connection (and runs its commands on it): a PAUSE
//! holds its connection until every server connection is released, and the
//! RESUME that undoes a PAUSE which took too long must not queue behind it.
//! Every command is bounded by a timeout.

use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;

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

    /// Runs console commands one after the other on ONE new connection
    /// (a login costs more than a command), each within its own budget;
    /// stops at the first that fails.
    async fn run_all(&self, commands: &[(&str, Duration)]) -> Result<Vec<Vec<Row>>, ConsoleError> {
        let first = commands.first().map_or("", |c| c.0);
        let mut cfg = self.target.config(self.timeout);
        cfg.dbname("pgbouncer");
        let (client, connection) =
            tokio::time::timeout(self.timeout, cfg.connect(self.target.tls.clone()))
                .await
                .map_err(|_| ConsoleError::Timeout {
                    at: self.at(),
                    command: first.to_owned(),
                    after: self.timeout,
                })?
                .map_err(|e| ConsoleError::Connect {
                    at: self.at(),
                    detail: crate::probe::chain(&e),
                })?;
        // The connection ends when the client is dropped (also on a timeout).
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut out = Vec::with_capacity(commands.len());
        for &(command, budget) in commands {
            let messages = tokio::time::timeout(budget, client.simple_query(command))
                .await
                .map_err(|_| ConsoleError::Timeout {
                    at: self.at(),
                    command: command.to_owned(),
                    after: budget,
                })?
                .map_err(|e| ConsoleError::Command {
                    at: self.at(),
                    command: command.to_owned(),
                    detail: crate::probe::chain(&e),
                })?;
            out.push(
                messages
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
                    .collect(),
            );
        }
        Ok(out)
    }

    async fn run(&self, command: &str) -> Result<Vec<Row>, ConsoleError> {
        let mut rows = self.run_all(&[(command, self.timeout)]).await?;
        Ok(rows.pop().unwrap_or_default())
    }

    /// PAUSE `db`: answers once every server connection of `db` is closed,
    /// each transaction in flight finished (transaction pooling). One that
    /// takes longer than `pause_timeout` is a transaction that did not
    /// finish: the pause is undone (RESUME) and the error says so. PAUSE of
    /// a paused database answers as done (a resumed step).
    pub async fn pause(&self, db: &str, pause_timeout: Duration) -> Result<(), ConsoleError> {
        let command = format!("PAUSE {}", ident(db));
        match self.run_all(&[(&command, pause_timeout)]).await {
            Ok(_) => Ok(()),
            Err(ConsoleError::Timeout { command: c, .. }) if c == command => {
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
        match self.run(&format!("RESUME {}", ident(db))).await {
            Ok(_) => Ok(()),
            Err(ConsoleError::Command { detail, .. }) if detail.contains("not paused") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// RELOAD (pgbouncer re-reads pgbouncer.ini; NB: 1.18 answers it
    /// without an error when it refuses the file), then RECONNECT `reconnect`
    /// if given (every server connection of it closed once released, so none
    /// stays on the old address), then SHOW DATABASES: where the entries
    /// point now, which is how a RELOAD is verified.
    pub async fn reload(
        &self,
        reconnect: Option<&str>,
    ) -> Result<Vec<DatabaseEntry>, ConsoleError> {
        let reconnect = reconnect.map(|db| format!("RECONNECT {}", ident(db)));
        let mut commands = vec![("RELOAD", self.timeout)];
        if let Some(r) = &reconnect {
            commands.push((r.as_str(), self.timeout));
        }
        commands.push(("SHOW DATABASES", self.timeout));
        let rows = self.run_all(&commands).await?;
        Ok(rows.last().map(|r| databases(r)).unwrap_or_default())
    }

    /// SHOW DATABASES and SHOW SERVERS, on one connection.
    pub async fn status(
        &self,
    ) -> Result<(Vec<DatabaseEntry>, Vec<ServerConnection>), ConsoleError> {
        let rows = self
            .run_all(&[
                ("SHOW DATABASES", self.timeout),
                ("SHOW SERVERS", self.timeout),
            ])
            .await?;
        Ok((databases(&rows[0]), servers(&rows[1])))
    }
}

fn databases(rows: &[Row]) -> Vec<DatabaseEntry> {
    rows.iter()
        .map(|r| DatabaseEntry {
            name: text(r, "name"),
            host: r.get("host").cloned().flatten(),
            port: text(r, "port").parse().ok(),
            paused: text(r, "paused") == "1",
        })
        .collect()
}

fn servers(rows: &[Row]) -> Vec<ServerConnection> {
    rows.iter()
        .map(|r| ServerConnection {
            user: text(r, "user"),
            database: text(r, "database"),
            state: text(r, "state"),
            addr: text(r, "addr"),
            port: text(r, "port").parse().ok(),
        })
        .collect()
}

fn text(r: &Row, column: &str) -> String {
    r.get(column).cloned().flatten().unwrap_or_default()
}
