//! The `lock` section of `pgwarden.yaml`: where the operation lock lives
//! when it is not agreed between the two daemons through their APIs.
//!
//! Only `lock.etcd` exists: the lock as a lease in an etcd cluster the
//! operator runs (DESIGN.md "More than two nodes"). Without `lock`, the
//! daemons keep the lock between themselves as before.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Invalid, PathSeg};

/// `lock:`, one of its backends.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LockConfig {
    #[serde(default)]
    pub etcd: Option<EtcdLockConfig>,
}

/// `lock.etcd`: the etcd v3 cluster that holds the lock as a lease.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdLockConfig {
    /// Client URLs of the etcd members: all http://, or all https:// (then
    /// `ca_file` is required).
    pub endpoints: Vec<String>,
    /// The lock key is `<prefix>/<cluster>/lock`. Default `/pgwarden`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How long the lease outlives its last renewal (a dead holder blocks
    /// operations for this long). Renewed every third of it. Default 10s.
    #[serde(with = "humantime_serde", default = "default_ttl")]
    pub ttl: Duration,
    /// PEM of the CA that signed the etcd members' server certificates
    /// (https:// endpoints only; the system roots are not used).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) and its key, for members started with
    /// `--client-cert-auth`. Both or neither.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// etcd's own authentication (`etcdctl auth enable`): the user, and a
    /// file holding its password (never the password itself in this file).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

fn default_prefix() -> String {
    "/pgwarden".to_owned()
}

fn default_ttl() -> Duration {
    Duration::from_secs(10)
}

impl EtcdLockConfig {
    /// The key of the operation lock of `cluster`.
    pub fn lock_key(&self, cluster: &str) -> String {
        format!("{}/{cluster}/lock", self.prefix.trim_end_matches('/'))
    }
}

/// Checks the `lock` section; every problem names its YAML path.
pub fn validate(lock: Option<&LockConfig>) -> Vec<Invalid> {
    let mut out = Vec::new();
    let Some(lock) = lock else { return out };
    let at = |k: &[&str]| {
        let mut p = vec![PathSeg::Key("lock".into())];
        p.extend(k.iter().map(|k| PathSeg::Key((*k).into())));
        p
    };
    let Some(etcd) = &lock.etcd else {
        out.push(Invalid {
            path: at(&[]),
            message: "lock: configure `etcd` (endpoints, prefix, ttl), or leave `lock` out to keep the lock between the daemons".into(),
        });
        return out;
    };
    if etcd.endpoints.is_empty() {
        out.push(Invalid {
            path: at(&["etcd", "endpoints"]),
            message:
                "lock.etcd.endpoints: list at least one etcd client URL, e.g. http://10.0.0.9:2379"
                    .into(),
        });
    }
    let https = etcd
        .endpoints
        .first()
        .is_some_and(|e| e.starts_with("https://"));
    for (i, e) in etcd.endpoints.iter().enumerate() {
        let mut path = at(&["etcd", "endpoints"]);
        path.push(PathSeg::Index(i));
        let (scheme, host) = match (e.strip_prefix("http://"), e.strip_prefix("https://")) {
            (Some(h), _) => ("http", h),
            (_, Some(h)) => ("https", h),
            _ => ("", ""),
        };
        if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
            out.push(Invalid {
                path,
                message: format!(
                    "lock.etcd.endpoints[{i}] `{e}` must be an http:// or https://host:port URL such as https://10.0.0.9:2379"
                ),
            });
        } else if (scheme == "https") != https {
            out.push(Invalid {
                path,
                message: format!(
                    "lock.etcd.endpoints[{i}] `{e}`: use https:// for every endpoint or for none"
                ),
            });
        }
    }
    let file = |out: &mut Vec<Invalid>, name: &str, f: &Option<PathBuf>| {
        if f.as_ref().is_some_and(|f| !f.is_absolute()) {
            out.push(Invalid {
                path: at(&["etcd", name]),
                message: format!("lock.etcd.{name} must be an absolute path"),
            });
        }
    };
    for (name, f) in [
        ("ca_file", &etcd.ca_file),
        ("cert_file", &etcd.cert_file),
        ("key_file", &etcd.key_file),
        ("password_file", &etcd.password_file),
    ] {
        file(&mut out, name, f);
    }
    if https && etcd.ca_file.is_none() && !etcd.endpoints.is_empty() {
        out.push(Invalid {
            path: at(&["etcd", "endpoints"]),
            message: "lock.etcd: https:// endpoints need `ca_file`, the CA that signed the etcd members' certificates".into(),
        });
    }
    if !https {
        for (name, set) in [
            ("ca_file", etcd.ca_file.is_some()),
            ("cert_file", etcd.cert_file.is_some()),
            ("key_file", etcd.key_file.is_some()),
        ] {
            if set {
                out.push(Invalid {
                    path: at(&["etcd", name]),
                    message: format!(
                        "lock.etcd.{name} is for TLS: use https:// endpoints, or remove it"
                    ),
                });
            }
        }
    }
    match (&etcd.cert_file, &etcd.key_file) {
        (Some(_), None) => out.push(Invalid {
            path: at(&["etcd", "cert_file"]),
            message: "lock.etcd.cert_file needs `key_file`, the key of the client certificate"
                .into(),
        }),
        (None, Some(_)) => out.push(Invalid {
            path: at(&["etcd", "key_file"]),
            message: "lock.etcd.key_file needs `cert_file`, the client certificate".into(),
        }),
        _ => {}
    }
    match (&etcd.username, &etcd.password_file) {
        (Some(u), _) if u.is_empty() || u.contains(char::is_whitespace) || u.contains(':') => out
            .push(Invalid {
                path: at(&["etcd", "username"]),
                message: format!(
                    "lock.etcd.username `{u}` must be an etcd user name (no spaces, no `:`)"
                ),
            }),
        (Some(_), None) => out.push(Invalid {
            path: at(&["etcd", "username"]),
            message:
                "lock.etcd.username needs `password_file`, a file holding that user's password"
                    .into(),
        }),
        (None, Some(_)) => out.push(Invalid {
            path: at(&["etcd", "password_file"]),
            message: "lock.etcd.password_file needs `username`".into(),
        }),
        _ => {}
    }
    let p = &etcd.prefix;
    if !p.starts_with('/') || p.len() < 2 || p.contains(char::is_whitespace) || p.contains("//") {
        out.push(Invalid {
            path: at(&["etcd", "prefix"]),
            message: format!("lock.etcd.prefix `{p}` must be a key path such as /pgwarden"),
        });
    }
    if etcd.ttl < Duration::from_secs(2) || etcd.ttl > Duration::from_secs(300) {
        out.push(Invalid {
            path: at(&["etcd", "ttl"]),
            message: format!(
                "lock.etcd.ttl {} must be between 2s and 5m (etcd grants whole seconds; it is renewed every third)",
                humantime::format_duration(etcd.ttl)
            ),
        });
    } else if etcd.ttl.subsec_nanos() != 0 {
        out.push(Invalid {
            path: at(&["etcd", "ttl"]),
            message: "lock.etcd.ttl must be whole seconds: etcd grants leases in seconds".into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = include_str!("../../../../config/pgwarden.example.yaml");

    fn with_lock(lock: &str) -> Result<Config, crate::ConfigError> {
        Config::parse_str("pgwarden.yaml", &format!("{BASE}\n{lock}"))
    }

    #[test]
    fn without_lock_nothing_changes() {
        let c = Config::parse_str("pgwarden.yaml", BASE).unwrap();
        assert!(c.lock.is_none() && c.etcd_lock().is_none());
    }

    #[test]
    fn the_design_example_parses_with_defaults() {
        let c = with_lock(
            "lock: {etcd: {endpoints: [http://10.0.0.9:2379], prefix: /pgwarden, ttl: 10s}}",
        )
        .unwrap();
        let e = c.etcd_lock().unwrap();
        assert_eq!(e.ttl.as_secs(), 10);
        assert_eq!(
            e.lock_key(&c.cluster),
            format!("/pgwarden/{}/lock", c.cluster)
        );
        let c = with_lock("lock:\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n").unwrap();
        let c2 = with_lock("lock:\n  etcd:\n    endpoints: [https://10.0.0.9:2379, https://10.0.0.8:2379]\n    ca_file: /etc/pgwarden/etcd-ca.pem\n    cert_file: /etc/pgwarden/etcd.pem\n    key_file: /etc/pgwarden/etcd.key\n    username: pgwarden\n    password_file: /etc/pgwarden/etcd.password\n").unwrap();
        assert_eq!(
            c2.etcd_lock().unwrap().username.as_deref(),
            Some("pgwarden")
        );
        assert_eq!(c.etcd_lock().unwrap().prefix, "/pgwarden");
    }

    #[test]
    fn a_bad_lock_section_says_where_and_what() {
        let lines = BASE.lines().count();
        let e = with_lock(
            "lock:\n  etcd:\n    endpoints:\n      - https://10.0.0.9:2379\n    prefix: pgwarden\n    ttl: 500ms\n",
        )
        .unwrap_err();
        let text = e.to_string();
        assert_eq!(e.problems.len(), 3, "{text}");
        assert_eq!(e.problems[0].line, lines + 4, "{text}");
        assert!(text.contains("https:// endpoints need `ca_file`"), "{text}");
        assert!(text.contains("lock.etcd.prefix `pgwarden`"), "{text}");
        assert!(
            text.contains("lock.etcd.ttl 500ms must be between 2s"),
            "{text}"
        );
        let e = with_lock("lock: {etcd: {endpoints: []}}").unwrap_err();
        assert!(
            e.to_string().contains("at least one etcd client URL"),
            "{e}"
        );
        let e = with_lock(
            "lock:\n  etcd:\n    endpoints: [http://10.0.0.9:2379, https://10.0.0.8:2379]\n    ca_file: /etc/pgwarden/etcd-ca.pem\n    cert_file: /etc/pgwarden/etcd.pem\n    username: pgwarden\n",
        )
        .unwrap_err();
        let text = e.to_string();
        assert_eq!(e.problems.len(), 5, "{text}");
        assert!(
            text.contains("https:// for every endpoint or for none"),
            "{text}"
        );
        assert!(text.contains("lock.etcd.ca_file is for TLS"), "{text}");
        assert!(text.contains("cert_file needs `key_file`"), "{text}");
        assert!(text.contains("username needs `password_file`"), "{text}");
        assert_eq!(e.problems[1].line, lines + 5, "ca_file's line: {text}");
        let e = with_lock(
            "lock: {etcd: {endpoints: [https://x:1], ca_file: ca.pem, password_file: /p}}",
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("ca_file must be an absolute path"), "{text}");
        assert!(text.contains("password_file needs `username`"), "{text}");
        let e = with_lock("lock: {}").unwrap_err();
        assert!(e.to_string().contains("configure `etcd`"), "{e}");
        let e = with_lock("lock: {etcd: {endpoints: [http://x:1], tll: 3s}}").unwrap_err();
        assert!(e.to_string().contains("unknown key `tll`"), "{e}");
    }
}
