//! The application on THIS host: its `is_running`, `stop`, `start`,
//! `disable` and `enable` commands run here, for this host's instance only.
//! An operation reaches the instance of another host through that host's
//! daemon (`POST /v1/node/application/{action}`), which lands here.
//!
//! `is_running` has three outcomes, like `systemctl is-active` and the LSB
//! status convention: exit 0 running; exit 1, 2 or 3 not running; anything
//! else (exit 4 "unknown", a signal, a timeout, a command that cannot run)
//! unknown.

use std::time::Duration;

use pgwarden_core::config::ApplicationConfig;
use pgwarden_core::Answer;
use serde::{Deserialize, Serialize};

use super::command;

/// Budget of one `is_running` check.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);

/// A command of the application's section of the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppCommand {
    Stop,
    Start,
    Disable,
    Enable,
}

impl AppCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            AppCommand::Stop => "stop",
            AppCommand::Start => "start",
            AppCommand::Disable => "disable",
            AppCommand::Enable => "enable",
        }
    }

    pub fn parse(s: &str) -> Option<AppCommand> {
        [
            AppCommand::Stop,
            AppCommand::Start,
            AppCommand::Disable,
            AppCommand::Enable,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// Whether this host's instance runs.
pub async fn status(app: &ApplicationConfig) -> Answer {
    match command::run(&app.is_running, STATUS_TIMEOUT).await {
        Err(e) => Answer::Unknown(format!("`is_running` could not be run: {e}")),
        Ok(f) => match f.code {
            Some(0) => Answer::Yes,
            Some(1..=3) => Answer::No,
            Some(c) => Answer::Unknown(format!(
                "`is_running` exited with {c}, which means neither running nor stopped ({})",
                f.last_lines()
            )),
            None => Answer::Unknown("`is_running` was killed by a signal".into()),
        },
    }
}

/// Runs one of the application's commands on this host. `disable` and
/// `enable` are optional: not configured, they succeed doing nothing.
pub async fn run(app: &ApplicationConfig, which: AppCommand) -> Result<String, String> {
    let (argv, timeout) = match which {
        AppCommand::Stop => (Some(&app.stop), app.stop_timeout),
        AppCommand::Start => (Some(&app.start), app.start_timeout),
        AppCommand::Disable => (app.disable.as_ref(), app.stop_timeout),
        AppCommand::Enable => (app.enable.as_ref(), app.start_timeout),
    };
    let Some(argv) = argv else {
        return Ok(format!("no `{}` command configured", which.as_str()));
    };
    command::run_checked(argv, timeout)
        .await
        .map(|_| format!("{} {} done", app.name, which.as_str()))
        .map_err(|e| format!("{} {} failed: {e}", app.name, which.as_str()))
}

/// `application.health_url` from this host (it is usually a loopback URL
/// of the instance beside this daemon). Yes when not configured.
pub async fn healthy(app: &ApplicationConfig, http: &reqwest::Client) -> Answer {
    let Some(url) = &app.health_url else {
        return Answer::Yes;
    };
    match http.get(url).timeout(Duration::from_secs(2)).send().await {
        Ok(r) if r.status().is_success() => Answer::Yes,
        Ok(r) => Answer::Unknown(format!("{url} answered {}", r.status())),
        Err(e) => Answer::Unknown(format!("{url} does not answer: {e}")),
    }
}

/// An [`Answer`] as it travels between daemons.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireAnswer {
    /// `yes`, `no` or `unknown`.
    pub answer: String,
    #[serde(default)]
    pub why: Option<String>,
}

impl From<&Answer> for WireAnswer {
    fn from(a: &Answer) -> WireAnswer {
        let (answer, why) = match a {
            Answer::Yes => ("yes", None),
            Answer::No => ("no", None),
            Answer::Unknown(w) => ("unknown", Some(w.clone())),
        };
        WireAnswer {
            answer: answer.into(),
            why,
        }
    }
}

impl WireAnswer {
    pub fn to_answer(&self) -> Answer {
        match self.answer.as_str() {
            "yes" => Answer::Yes,
            "no" => Answer::No,
            other => Answer::Unknown(
                self.why
                    .clone()
                    .unwrap_or_else(|| format!("the peer answered `{other}`")),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(is_running: &str) -> ApplicationConfig {
        serde_yaml::from_str(&format!(
            "{{name: app, stop: [true], start: [true], is_running: [sh, -c, '{is_running}'], db_user: u, config_file: /x}}"
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn is_running_has_three_outcomes() {
        assert_eq!(status(&app("exit 0")).await, Answer::Yes);
        for code in [1, 2, 3] {
            assert_eq!(status(&app(&format!("exit {code}"))).await, Answer::No);
        }
        assert!(matches!(status(&app("exit 4")).await, Answer::Unknown(_)));
        assert!(matches!(
            status(&app("kill -9 $$")).await,
            Answer::Unknown(_)
        ));
        let missing: ApplicationConfig = serde_yaml::from_str(
            "{name: app, stop: [true], start: [true], is_running: [/nonexistent/x], db_user: u, config_file: /x}",
        )
        .unwrap();
        assert!(matches!(status(&missing).await, Answer::Unknown(_)));
    }

    #[test]
    fn answers_travel_unchanged() {
        for a in [Answer::Yes, Answer::No, Answer::Unknown("why".into())] {
            assert_eq!(WireAnswer::from(&a).to_answer(), a);
        }
        let odd = WireAnswer {
            answer: "maybe".into(),
            why: None,
        };
        assert!(matches!(odd.to_answer(), Answer::Unknown(_)));
    }
}
