//! Reads a libpq connection string (`primary_conninfo`) and keeps only the
//! parts pgwarden reports: host, port, user, application_name.
//!
//! The password and every other keyword are dropped here, at the edge, so no
//! later code (status JSON, logs, errors) can leak them by accident.

use serde::{Deserialize, Serialize};

/// The harmless parts of a `primary_conninfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryConninfo {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub application_name: Option<String>,
}

impl PrimaryConninfo {
    /// Parses the `keyword=value` form (values may be single-quoted with `\`
    /// escapes) or the `postgresql://` URI form. Unparseable input yields the
    /// fields that could be read; it never echoes the input back.
    pub fn parse(text: &str) -> PrimaryConninfo {
        let t = text.trim();
        if t.starts_with("postgresql://") || t.starts_with("postgres://") {
            return parse_uri(t);
        }
        let mut out = PrimaryConninfo::default();
        for (k, v) in keyword_pairs(t) {
            out.set(&k, v);
        }
        out
    }

    fn set(&mut self, keyword: &str, value: String) {
        match keyword {
            // hostaddr wins over host: it is the address actually used.
            "hostaddr" => self.host = Some(value),
            "host" if self.host.is_none() => self.host = Some(value),
            "port" => self.port = value.parse().ok(),
            "user" => self.user = Some(value),
            "application_name" => self.application_name = Some(value),
            _ => {}
        }
    }
}

fn keyword_pairs(t: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = t.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        if key.is_empty() {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
    out
}

fn parse_uri(t: &str) -> PrimaryConninfo {
    let mut out = PrimaryConninfo::default();
    let rest = t.split_once("://").map(|(_, r)| r).unwrap_or("");
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = authority.split('/').next().unwrap_or("");
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hp)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if !user.is_empty() {
                out.user = Some(percent_decode(user));
            }
            hp
        }
        None => authority,
    };
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        match h.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => (h, None),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if !host.is_empty() {
        out.host = Some(percent_decode(host));
    }
    out.port = port.and_then(|p| p.parse().ok());
    for pair in query.unwrap_or("").split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            out.set(k, percent_decode(v));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_form_keeps_only_harmless_fields() {
        let c = PrimaryConninfo::parse(
            "user=replication password='s3cr\\'et x' channel_binding=prefer host=10.0.0.1 port=5433 sslmode=prefer application_name=inmanta",
        );
        assert_eq!(
            c,
            PrimaryConninfo {
                host: Some("10.0.0.1".into()),
                port: Some(5433),
                user: Some("replication".into()),
                application_name: Some("inmanta".into()),
            }
        );
        assert!(!format!("{c:?}").contains("s3cr"));
    }

    #[test]
    fn hostaddr_wins_and_spaces_around_equals_are_allowed() {
        let c = PrimaryConninfo::parse("host = db.example hostaddr=10.1.1.1 port = 5432");
        assert_eq!(c.host.as_deref(), Some("10.1.1.1"));
        assert_eq!(c.port, Some(5432));
    }

    #[test]
    fn uri_form() {
        let c = PrimaryConninfo::parse(
            "postgresql://replication:pa%40ss@10.0.0.2:5433/postgres?application_name=inmanta&password=zz",
        );
        assert_eq!(c.host.as_deref(), Some("10.0.0.2"));
        assert_eq!(c.port, Some(5433));
        assert_eq!(c.user.as_deref(), Some("replication"));
        assert_eq!(c.application_name.as_deref(), Some("inmanta"));
        assert!(!format!("{c:?}").contains("pa"));
    }

    #[test]
    fn empty_and_garbage_inputs_give_empty_results() {
        assert_eq!(PrimaryConninfo::parse(""), PrimaryConninfo::default());
        assert_eq!(PrimaryConninfo::parse("=== '"), PrimaryConninfo::default());
        assert_eq!(
            PrimaryConninfo::parse("postgresql://"),
            PrimaryConninfo::default()
        );
    }
}
