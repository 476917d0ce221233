//! Whether a daemon's own `nodes[local].api` reaches its `listen` socket.
//! The other daemon, the CLI's `history` and the forwarded requests use that
//! URL; a `listen: 127.0.0.1:8008` beside `api: http://10.0.0.1:8008` looks
//! fine on the host itself and fails only when the other host calls.
//!
//! Pure: resolving a host name is the caller's, passed in as `resolve`.

use std::net::{IpAddr, SocketAddr};

/// Why `api` is not served by `listen`, or None when it is (or when it
/// cannot be told: the sentence says so then). `resolve` gives the
/// addresses of a host name; None when it cannot be resolved.
pub fn api_not_served(
    api: &str,
    listen: SocketAddr,
    resolve: impl Fn(&str) -> Option<Vec<IpAddr>>,
) -> Option<String> {
    let Some((host, port)) = host_and_port(api) else {
        return Some(format!("cannot read the host and port of `{api}`"));
    };
    if port != listen.port() {
        return Some(format!(
            "it names port {port}, but `listen` is {listen}: the other daemon calls a port nothing listens on"
        ));
    }
    if listen.ip().is_unspecified() {
        return None;
    }
    let addrs = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match resolve(host) {
            Some(a) if !a.is_empty() => a,
            _ => {
                return Some(format!(
                "{host} does not resolve here, so whether it reaches `listen` {listen} is unknown"
            ))
            }
        },
    };
    if addrs.contains(&listen.ip()) {
        return None;
    }
    let shown: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
    Some(format!(
        "it reaches {} but `listen` is {listen}: the other daemon cannot call this one (listen on {}:{port} or 0.0.0.0:{port})",
        shown.join(", "),
        shown[0]
    ))
}

/// The host (without brackets) and port of an http(s):// URL; the port
/// defaults to the scheme's.
fn host_and_port(url: &str) -> Option<(&str, u16)> {
    let (rest, default_port) = if let Some(r) = url.strip_prefix("https://") {
        (r, 443)
    } else {
        (url.strip_prefix("http://")?, 80)
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(api: &str, listen: &str) -> Option<String> {
        api_not_served(api, listen.parse().unwrap(), |h| {
            (h == "pg-a.example").then(|| vec!["10.0.0.1".parse().unwrap()])
        })
    }

    #[test]
    fn the_api_is_served_by_its_own_address_or_a_wildcard() {
        assert_eq!(check("http://10.0.0.1:8008", "10.0.0.1:8008"), None);
        assert_eq!(check("http://10.0.0.1:8008/", "0.0.0.0:8008"), None);
        assert_eq!(check("https://[::1]:8443", "[::1]:8443"), None);
        assert_eq!(check("http://pg-a.example:8008", "10.0.0.1:8008"), None);
        assert_eq!(check("https://10.0.0.1", "10.0.0.1:443"), None);
    }

    #[test]
    fn loopback_or_another_port_is_named() {
        let loopback = check("http://10.0.0.1:8008", "127.0.0.1:8008").unwrap();
        assert!(
            loopback.contains("it reaches 10.0.0.1 but `listen` is 127.0.0.1:8008")
                && loopback.contains("listen on 10.0.0.1:8008 or 0.0.0.0:8008"),
            "{loopback}"
        );
        let port = check("http://10.0.0.1:8009", "0.0.0.0:8008").unwrap();
        assert!(port.contains("port 8009"), "{port}");
        let unknown = check("http://nowhere.example:8008", "10.0.0.1:8008").unwrap();
        assert!(unknown.contains("does not resolve"), "{unknown}");
        assert!(check("http://:8008", "10.0.0.1:8008").is_some());
    }
}
