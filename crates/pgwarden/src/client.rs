//! The HTTP client of the operation API (`/v1/failover`, `/v1/operations`,
//! ...): where the daemon is, the Bearer token, and errors that keep the
//! HTTP status and the JSON body the daemon answered with.
//!
//! The token is read from a file only (a flag value would show in `ps`) and
//! is held as a [`Secret`], so no error or debug output can print it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use pgwarden_core::Secret;
use serde_json::Value;

/// Where the daemon is and how to authenticate, shared by every subcommand
/// that talks to the operation API.
#[derive(Args, Clone, Debug)]
pub struct Connect {
    /// Base URL of a pgwarden daemon [default: http://<listen> of the config, else http://127.0.0.1:8008].
    #[arg(long, env = "PGWARDEN_URL")]
    pub url: Option<String>,
    /// pgwarden config file: its `listen` gives the URL and its `api_token_file` the token
    /// [default: /etc/pgwarden/pgwarden.yaml when it exists].
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// File holding the API token (a token is never taken from the command line).
    #[arg(long, env = "PGWARDEN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM certificates to trust for an https:// daemon [default: the config's
    /// tls.ca_file, else its tls.cert_file].
    #[arg(long, env = "PGWARDEN_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

pub const DEFAULT_URL: &str = "http://127.0.0.1:8008";
pub const DEFAULT_CONFIG: &str = "/etc/pgwarden/pgwarden.yaml";

/// A resolved connection: the client, and what the config said about the
/// application (for the confirmation prompt).
pub struct Resolved {
    pub client: Client,
    /// `application.name` of the config, when a config was read.
    pub application: Option<String>,
}

impl Connect {
    /// Resolves the URL and, when `need_token`, the token. Flags (and their
    /// environment variables) win over the config file; the config file is
    /// only read when something is still missing.
    pub fn resolve(&self, need_token: bool) -> Result<Resolved, ApiError> {
        let config_path = self.config_path();
        let missing = self.url.is_none()
            || (need_token && self.token_file.is_none())
            || (self.ca_file.is_none()
                && self
                    .url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://")));
        // An explicit --config is always read (its errors are the user's to
        // see); the default one only when it supplies something.
        let config = match &config_path {
            Some(p) if self.config.is_some() || missing => Some(read_config(p)?),
            _ => None,
        };
        let base = match (&self.url, &config) {
            (Some(u), _) => u.trim_end_matches('/').to_owned(),
            (None, Some(c)) => url_of_config(c),
            (None, None) => DEFAULT_URL.to_owned(),
        };
        let ca_file = self.ca_file(config.as_ref());
        let token = if need_token {
            let file = match (&self.token_file, &config) {
                (Some(f), _) => f.clone(),
                (None, Some(c)) => c.api_token_file.clone(),
                (None, None) => return Err(ApiError::NoToken),
            };
            Some(read_token(&file)?)
        } else {
            None
        };
        Ok(Resolved {
            client: Client::new(base, token, ca_file.as_deref())?,
            application: config
                .as_ref()
                .and_then(|c| c.application.as_ref())
                .map(|a| a.name.clone()),
        })
    }
}

impl Connect {
    /// The config file that applies: --config, else the default one when
    /// it exists.
    pub fn config_path(&self) -> Option<PathBuf> {
        match &self.config {
            Some(p) => Some(p.clone()),
            None if Path::new(DEFAULT_CONFIG).exists() => Some(PathBuf::from(DEFAULT_CONFIG)),
            None => None,
        }
    }

    /// The config of [`Connect::config_path`], parsed (no file it names is
    /// read); None when there is none.
    pub fn read_config(&self) -> Result<Option<pgwarden_core::Config>, ApiError> {
        self.config_path().map(|p| read_config(&p)).transpose()
    }

    /// The trust file for https:// daemons: --ca-file, else the config's.
    pub fn ca_file(&self, config: Option<&pgwarden_core::Config>) -> Option<PathBuf> {
        self.ca_file.clone().or_else(|| {
            config
                .and_then(|c| c.tls.as_ref())
                .map(|t| pgwarden_daemon::tls::trust_file(t).to_owned())
        })
    }
}

fn read_config(path: &Path) -> Result<pgwarden_core::Config, ApiError> {
    let text = std::fs::read_to_string(path).map_err(|e| ApiError::Local {
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    pgwarden_core::Config::parse_str(&path.display().to_string(), &text).map_err(|e| {
        ApiError::Local {
            message: e.to_string(),
        }
    })
}

/// The daemon's URL from its config: `url_of_listen`, https:// with `tls`.
pub fn url_of_config(c: &pgwarden_core::Config) -> String {
    let url = url_of_listen(c.listen);
    match c.tls {
        Some(_) => url.replacen("http://", "https://", 1),
        None => url,
    }
}

/// An HTTP client for a daemon; with `ca_file`, it trusts exactly those
/// certificates for https:// (no system roots).
pub fn http_client(
    builder: reqwest::ClientBuilder,
    ca_file: Option<&Path>,
) -> Result<reqwest::Client, ApiError> {
    let builder = match ca_file {
        Some(f) => pgwarden_daemon::tls::trusting(builder, f)
            .map_err(|message| ApiError::Local { message })?,
        None => builder,
    };
    builder.build().map_err(|e| ApiError::Local {
        message: format!("cannot set up the HTTP client: {e}"),
    })
}

/// `http://<listen>`, with a wildcard listen address (0.0.0.0, ::) replaced
/// by the loopback address of the same family.
pub fn url_of_listen(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// Reads a token file; trailing newlines are not part of the token (the
/// daemon trims them the same way).
pub fn read_token(path: &Path) -> Result<Secret, ApiError> {
    let text = std::fs::read_to_string(path).map_err(|e| ApiError::Token {
        message: format!("cannot read the API token file {}: {e}", path.display()),
    })?;
    let token = text.trim_end_matches(['\n', '\r']);
    if token.is_empty() {
        return Err(ApiError::Token {
            message: format!("the API token file {} is empty", path.display()),
        });
    }
    Ok(Secret::new(token))
}

/// A failed call. `Status` keeps what the daemon said.
#[derive(Debug)]
pub enum ApiError {
    /// A mutating call without any way to find the token.
    NoToken,
    /// The token file cannot be used.
    Token { message: String },
    /// The config file cannot be read or parsed.
    Local { message: String },
    /// No HTTP answer (connection refused, timeout, ...).
    Unreachable { url: String, source: reqwest::Error },
    /// The daemon answered with a non-success status.
    Status {
        status: u16,
        /// `error` of the body (`conflict`, `preflight_failed`, ...).
        code: Option<String>,
        /// `message` of the body, or a sentence made from the status.
        message: String,
        body: Value,
    },
    /// A success status whose body is not the expected JSON.
    BadBody { url: String, message: String },
}

/// Refused: preflight failed, a conflict, or the operator did not confirm.
pub const EXIT_REFUSED: u8 = 3;
/// The daemon does not accept the token (or there is none).
pub const EXIT_AUTH: u8 = 4;

impl ApiError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ApiError::NoToken | ApiError::Token { .. } => EXIT_AUTH,
            ApiError::Status { status, .. } => match status {
                401 | 403 => EXIT_AUTH,
                409 | 422 => EXIT_REFUSED,
                _ => 1,
            },
            _ => 1,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::NoToken => write!(
                f,
                "no API token: pass --token-file (or PGWARDEN_TOKEN_FILE), or --config to use its api_token_file"
            ),
            ApiError::Token { message } | ApiError::Local { message } => f.write_str(message),
            ApiError::Unreachable { url, source } => {
                write!(f, "cannot reach the pgwarden daemon at {url}: {}", cause(source))?;
                write!(f, " (is it running? pass --url or --config)")
            }
            ApiError::Status { message, .. } => f.write_str(message),
            ApiError::BadBody { url, message } => {
                write!(f, "{url} did not answer with the expected JSON: {message}")
            }
        }
    }
}

impl std::error::Error for ApiError {}

/// What went wrong below reqwest's "error sending request for url (...)":
/// the innermost cause, e.g. `Connection refused (os error 111)`.
fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time".into();
    }
    let mut last: &dyn std::error::Error = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}

/// The client of one daemon.
pub struct Client {
    base: String,
    token: Option<Secret>,
    http: reqwest::Client,
}

/// Budget of a read (GET).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Budget of a mutating call: preflight may ask the peer daemon first.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

impl Client {
    pub fn new(
        base: String,
        token: Option<Secret>,
        ca_file: Option<&Path>,
    ) -> Result<Client, ApiError> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .user_agent(concat!("pgwarden-cli/", env!("CARGO_PKG_VERSION")));
        let http = http_client(builder, ca_file)?;
        Ok(Client { base, token, http })
    }

    /// The daemon's base URL, e.g. `http://10.0.0.1:8008`.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path` → the JSON body of a 2xx answer.
    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.get_with_timeout(path, READ_TIMEOUT).await
    }

    pub async fn get_with_timeout(&self, path: &str, timeout: Duration) -> Result<Value, ApiError> {
        let url = self.url(path);
        let req = self.authorize(self.http.get(&url)).timeout(timeout);
        Self::send(url, req).await.map(|(_, v)| v)
    }

    /// `POST path` with a JSON body → status and JSON body of a 2xx answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), ApiError> {
        let url = self.url(path);
        let req = self
            .authorize(self.http.post(&url))
            .json(body)
            .timeout(WRITE_TIMEOUT);
        Self::send(url, req).await
    }

    /// `PUT path` with a JSON body → status and JSON body of a 2xx answer.
    pub async fn put(&self, path: &str, body: &Value) -> Result<(u16, Value), ApiError> {
        let url = self.url(path);
        let req = self
            .authorize(self.http.put(&url))
            .json(body)
            .timeout(WRITE_TIMEOUT);
        Self::send(url, req).await
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t.expose()),
            None => req,
        }
    }

    async fn send(url: String, req: reqwest::RequestBuilder) -> Result<(u16, Value), ApiError> {
        let resp = match req.send().await {
            Ok(r) => r,
            Err(source) => return Err(ApiError::Unreachable { url, source }),
        };
        let status = resp.status();
        let text = resp.text().await.map_err(|source| ApiError::Unreachable {
            url: url.clone(),
            source,
        })?;
        if status.is_success() {
            let body = serde_json::from_str(&text).map_err(|e| ApiError::BadBody {
                url: url.clone(),
                message: e.to_string(),
            })?;
            Ok((status.as_u16(), body))
        } else {
            Err(status_error(status.as_u16(), url, &text))
        }
    }
}

/// The error for a non-2xx answer: the daemon's `{"error", "message"}` when
/// the body is that JSON, else a sentence from the status and the text.
pub fn status_error(status: u16, url: String, text: &str) -> ApiError {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let code = body["error"].as_str().map(str::to_owned);
    let message = match body["message"].as_str() {
        Some(m) if !m.is_empty() => m.to_owned(),
        _ => {
            let reason = reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("error");
            let text = text.trim();
            if text.is_empty() || !body.is_null() {
                format!("{url} answered {status} {reason}")
            } else {
                let short: String = text.chars().take(200).collect();
                format!("{url} answered {status} {reason}: {short}")
            }
        }
    };
    ApiError::Status {
        status,
        code,
        message,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_reached_on_loopback() {
        assert_eq!(
            url_of_listen("0.0.0.0:8008".parse().unwrap()),
            "http://127.0.0.1:8008"
        );
        assert_eq!(
            url_of_listen("[::]:9000".parse().unwrap()),
            "http://[::1]:9000"
        );
        assert_eq!(
            url_of_listen("10.0.0.1:8008".parse().unwrap()),
            "http://10.0.0.1:8008"
        );
    }

    #[test]
    fn the_token_file_loses_its_trailing_newline_only() {
        let dir = std::env::temp_dir().join(format!("pgwarden-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "s3cret value\r\n").unwrap();
        assert_eq!(read_token(&f).unwrap().expose(), "s3cret value");
        std::fs::write(&f, "\n").unwrap();
        let e = read_token(&f).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        assert_eq!(e.exit_code(), EXIT_AUTH);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_token_is_an_auth_error() {
        let c = Connect {
            url: Some("http://127.0.0.1:1".into()),
            config: None,
            token_file: Some("/nonexistent/pgwarden/token".into()),
            ca_file: None,
        };
        let e = c.resolve(true).err().expect("no token file");
        assert_eq!(e.exit_code(), EXIT_AUTH);
        // Reads need no token.
        let r = c.resolve(false).expect("no token needed");
        assert_eq!(r.client.base, "http://127.0.0.1:1");
    }

    #[test]
    fn error_bodies_give_the_message_and_the_exit_code() {
        let e = status_error(
            409,
            "http://x/v1/failover".into(),
            r#"{"error":"conflict","message":"operation op-1 is still open"}"#,
        );
        assert_eq!(e.to_string(), "operation op-1 is still open");
        assert_eq!(e.exit_code(), EXIT_REFUSED);
        let e = status_error(401, "http://x/v1/failover".into(), "");
        assert_eq!(
            e.to_string(),
            "http://x/v1/failover answered 401 Unauthorized"
        );
        assert_eq!(e.exit_code(), EXIT_AUTH);
        assert_eq!(status_error(403, "u".into(), "{}").exit_code(), EXIT_AUTH);
        assert_eq!(
            status_error(422, "u".into(), "{}").exit_code(),
            EXIT_REFUSED
        );
        assert_eq!(status_error(404, "u".into(), "{}").exit_code(), 1);
        let e = status_error(502, "u".into(), "bad gateway from proxy");
        assert_eq!(
            e.to_string(),
            "u answered 502 Bad Gateway: bad gateway from proxy"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let c = Client::new("http://x".into(), Some(Secret::new("hunter2")), None).unwrap();
        let shown = format!("{:?}", c.token);
        assert!(!shown.contains("hunter2"));
    }
}
