//! Minimal blocking HTTP/1.1 over one connection per request, enough for the daemons'
//! API (`/health`, `/v1/...`); a request that cannot connect or write answers status 0.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends one request to `base` (`http://host:port`) and returns the status and the body.
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, String) {
    let host = base.trim_start_matches("http://");
    let Ok(mut s) = TcpStream::connect(host) else {
        return (0, String::new());
    };
    // Long enough for an operation answered with ?wait=true.
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, rest.to_owned())
}

pub fn get(base: &str, path: &str) -> (u16, String) {
    request(base, "GET", path, None, None)
}

pub fn post(base: &str, path: &str, body: &str, token: &str) -> (u16, String) {
    request(base, "POST", path, Some(body), Some(token))
}
