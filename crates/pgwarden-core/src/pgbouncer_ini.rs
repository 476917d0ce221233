//! Re-pointing one `[databases]` entry of pgbouncer.ini at another host and
//! port, changing only the `host=` and `port=` inside its value and keeping
//! every other byte: comments, other entries, spacing, line endings.
//!
//! pgbouncer reads its file differently from Python's configparser (see
//! [`crate::ini`]), so this is its own small reader, following pgbouncer's
//! rules: a line whose first non-blank character is `;` or `#` is a comment
//! (neither is special later in a line); `[name]` starts a section; an entry
//! is `name = value`, the value running to the end of the line, trimmed.
//! A database's value is a libpq-style list of `key=value` pairs separated
//! by spaces; a value may be single-quoted, a quote inside doubled (`''`)
//! or escaped (`\'`), as pgbouncer's `cstr_unquote_value` reads it.
//!
//! Pure text in, text out; the atomic write is the daemon's job.

/// Why the entry could not be re-pointed. Nothing is written then.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PgbouncerIniError {
    #[error("pgbouncer.ini has no [databases] entry `{database}`: add it (e.g. `{database} = host=10.0.0.1 port=5432 dbname={database}`), or fix proxy.pgbouncer.database")]
    MissingEntry { database: String },
    #[error("the [databases] entry `{database}` cannot be read as `key=value` pairs: {why}")]
    Unreadable { database: String, why: &'static str },
    /// pgbouncer answers RELOAD without an error when it refuses the file
    /// (it logs "config file loading failed" and keeps the old one), so a
    /// broken file must be found before pgwarden relies on a RELOAD.
    #[error("line {line} is {why}: pgbouncer would refuse the whole file on RELOAD (and keep its old settings)")]
    Broken { line: usize, why: &'static str },
}

/// Checks what pgbouncer's reader would refuse in the whole file: a line
/// that is neither blank, a comment, a `[section]` nor `key = value`, and a
/// `[databases]` value that is not `key=value` pairs. Values of settings are
/// not checked (pgbouncer knows its own).
pub fn check(text: &str) -> Result<(), PgbouncerIniError> {
    let mut in_databases = false;
    for (i, (line, _)) in split_lines(text).iter().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with(';') || t.starts_with('#') {
            continue;
        }
        let broken = |why| PgbouncerIniError::Broken { line: i + 1, why };
        if let Some(rest) = t.strip_prefix('[') {
            let end = rest
                .find(']')
                .ok_or_else(|| broken("a section header without `]`"))?;
            in_databases = rest[..end].trim() == "databases";
            continue;
        }
        let eq = t.find('=').ok_or_else(|| broken("not `key = value`"))?;
        if t[..eq].trim().is_empty() {
            return Err(broken("`= value` without a key"));
        }
        if in_databases {
            pairs(t[eq + 1..].trim()).map_err(broken)?;
        }
    }
    Ok(())
}

/// Where the entry's host and port point, as pgbouncer reads them (the last
/// setting of each key; the last line of the entry when it is set twice).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryTarget {
    pub host: Option<String>,
    pub port: Option<String>,
}

/// One `key=value` pair of a connection string, as byte ranges of it.
struct Pair {
    key: std::ops::Range<usize>,
    value: std::ops::Range<usize>,
    /// The value as pgbouncer reads it (quotes removed).
    text: String,
}

/// The `key=value` pairs of a `[databases]` value.
fn pairs(value: &str) -> Result<Vec<Pair>, &'static str> {
    let b = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() {
            return Ok(out);
        }
        let key_start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = key_start..i;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() || b[i] != b'=' {
            return Err("a keyword without `=`");
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let value_start = i;
        let mut text = String::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            let mut chunk = i;
            loop {
                if i >= b.len() {
                    return Err("a quoted value without its closing quote");
                }
                let escaped = (b[i] == b'\\' || b[i] == b'\'') && b.get(i + 1) == Some(&b'\'');
                if escaped {
                    text.push_str(&value[chunk..i]);
                    text.push('\'');
                    i += 2;
                    chunk = i;
                } else if b[i] == b'\'' {
                    text.push_str(&value[chunk..i]);
                    i += 1;
                    break;
                } else {
                    i += 1;
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            text.push_str(&value[value_start..i]);
        }
        out.push(Pair {
            key,
            value: value_start..i,
            text,
        });
    }
}

/// A value written so that pgbouncer reads back exactly `v`.
fn quoted(v: &str) -> String {
    if !v.is_empty()
        && !v
            .bytes()
            .any(|c| c.is_ascii_whitespace() || c == b'\'' || c == b'\\')
    {
        v.to_owned()
    } else {
        format!("'{}'", v.replace('\'', "''"))
    }
}

/// A line of the file: its text without the line ending, and that ending.
fn split_lines(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (line, ending, next) = match rest.find('\n') {
            Some(n) if n > 0 && rest.as_bytes()[n - 1] == b'\r' => {
                (&rest[..n - 1], &rest[n - 1..n + 1], &rest[n + 1..])
            }
            Some(n) => (&rest[..n], &rest[n..n + 1], &rest[n + 1..]),
            None => (rest, "", ""),
        };
        out.push((line, ending));
        rest = next;
    }
    out
}

/// For each line: the byte range of its value when it is an entry of
/// `[databases]` named `database`.
fn entry_values<'t>(
    lines: &[(&'t str, &'t str)],
    database: &str,
) -> Vec<Option<std::ops::Range<usize>>> {
    let mut in_databases = false;
    lines
        .iter()
        .map(|(line, _)| {
            let t = line.trim_start();
            if t.starts_with(';') || t.starts_with('#') || t.trim().is_empty() {
                return None;
            }
            if let Some(rest) = t.strip_prefix('[') {
                in_databases = rest
                    .find(']')
                    .is_some_and(|e| rest[..e].trim() == "databases");
                return None;
            }
            if !in_databases {
                return None;
            }
            let eq = line.find('=')?;
            if line[..eq].trim() != database {
                return None;
            }
            let after = &line[eq + 1..];
            let start = eq + 1 + (after.len() - after.trim_start().len());
            let end = line.trim_end().len().max(start);
            Some(start..end)
        })
        .collect()
}

/// Where the entry `database` of `[databases]` points.
pub fn target(text: &str, database: &str) -> Result<EntryTarget, PgbouncerIniError> {
    let lines = split_lines(text);
    let mut found = None;
    for ((line, _), value) in lines.iter().zip(entry_values(&lines, database)) {
        let Some(range) = value else { continue };
        let value = &line[range];
        let pairs = pairs(value).map_err(|why| PgbouncerIniError::Unreadable {
            database: database.to_owned(),
            why,
        })?;
        let get = |k: &str| {
            pairs
                .iter()
                .rev()
                .find(|p| &value[p.key.clone()] == k)
                .map(|p| p.text.clone())
        };
        found = Some(EntryTarget {
            host: get("host"),
            port: get("port"),
        });
    }
    found.ok_or_else(|| PgbouncerIniError::MissingEntry {
        database: database.to_owned(),
    })
}

/// Points the entry `database` of `[databases]` at `host` and `port`: every
/// `host=` and `port=` of its value gets the new value in place; a missing
/// one is appended to the value. Every other byte stays. A second entry of
/// the same name (pgbouncer takes the last) is rewritten the same way.
pub fn repoint(
    text: &str,
    database: &str,
    host: &str,
    port: u16,
) -> Result<String, PgbouncerIniError> {
    let lines = split_lines(text);
    let values = entry_values(&lines, database);
    if values.iter().all(Option::is_none) {
        return Err(PgbouncerIniError::MissingEntry {
            database: database.to_owned(),
        });
    }
    let port = port.to_string();
    let mut out = String::with_capacity(text.len() + 32);
    for ((line, ending), value) in lines.iter().zip(values) {
        let Some(range) = value else {
            out.push_str(line);
            out.push_str(ending);
            continue;
        };
        let value = &line[range.clone()];
        let pairs = pairs(value).map_err(|why| PgbouncerIniError::Unreadable {
            database: database.to_owned(),
            why,
        })?;
        let mut new_value = String::with_capacity(value.len() + 32);
        let mut at = 0;
        let (mut has_host, mut has_port) = (false, false);
        for p in &pairs {
            let new = match &value[p.key.clone()] {
                "host" => {
                    has_host = true;
                    host
                }
                "port" => {
                    has_port = true;
                    port.as_str()
                }
                _ => continue,
            };
            new_value.push_str(&value[at..p.value.start]);
            new_value.push_str(&quoted(new));
            at = p.value.end;
        }
        new_value.push_str(&value[at..]);
        for (missing, key, v) in [(!has_host, "host", host), (!has_port, "port", &port)] {
            if missing {
                if !new_value.is_empty() {
                    new_value.push(' ');
                }
                new_value.push_str(&format!("{key}={}", quoted(v)));
            }
        }
        out.push_str(&line[..range.start]);
        out.push_str(&new_value);
        out.push_str(&line[range.end..]);
        out.push_str(ending);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INI: &str = "; pgbouncer.ini written by hand\r\n\
[databases]\r\n\
# the application\r\n\
inmanta = host=10.0.0.1  port=5432 dbname=inmanta   \r\n\
inmanta_ro = host=10.0.0.1 port=5432 dbname=inmanta\r\n\
\r\n\
[pgbouncer]\r\n\
listen_port = 6432 ; not a comment for pgbouncer\r\n";

    #[test]
    fn only_host_and_port_of_the_entry_change() {
        let out = repoint(INI, "inmanta", "10.0.0.2", 5433).unwrap();
        assert_eq!(
            out,
            INI.replace(
                "inmanta = host=10.0.0.1  port=5432",
                "inmanta = host=10.0.0.2  port=5433"
            )
        );
        let t = target(&out, "inmanta").unwrap();
        assert_eq!(t.host.as_deref(), Some("10.0.0.2"));
        assert_eq!(t.port.as_deref(), Some("5433"));
        // The second entry, same host, stays as it was.
        assert_eq!(
            target(&out, "inmanta_ro").unwrap().host.as_deref(),
            Some("10.0.0.1")
        );
    }

    #[test]
    fn a_rewrite_to_the_same_place_changes_nothing() {
        assert_eq!(repoint(INI, "inmanta", "10.0.0.1", 5432).unwrap(), INI);
    }

    #[test]
    fn a_missing_port_is_appended() {
        let ini = "[databases]\ninmanta = dbname=inmanta host=a\n";
        let out = repoint(ini, "inmanta", "b", 6000).unwrap();
        assert_eq!(
            out,
            "[databases]\ninmanta = dbname=inmanta host=b port=6000\n"
        );
        let ini = "[databases]\ninmanta =\n";
        assert_eq!(
            repoint(ini, "inmanta", "b", 1).unwrap(),
            "[databases]\ninmanta =host=b port=1\n"
        );
    }

    #[test]
    fn quoted_values_are_read_and_replaced_whole() {
        let ini =
            "[databases]\ninmanta = host='old host' password='it''s = secret' port = '5432'\n";
        let t = target(ini, "inmanta").unwrap();
        assert_eq!(t.host.as_deref(), Some("old host"));
        assert_eq!(t.port.as_deref(), Some("5432"));
        let out = repoint(ini, "inmanta", "new", 7).unwrap();
        assert_eq!(
            out,
            "[databases]\ninmanta = host=new password='it''s = secret' port = 7\n"
        );
        // A host that needs quoting is quoted so that it reads back.
        let out = repoint(ini, "inmanta", "a b'c", 7).unwrap();
        assert_eq!(
            target(&out, "inmanta").unwrap().host.as_deref(),
            Some("a b'c")
        );
        let escaped = "[databases]\ninmanta = host='x\\'y' port=1\n";
        assert_eq!(
            target(escaped, "inmanta").unwrap().host.as_deref(),
            Some("x'y")
        );
    }

    #[test]
    fn comments_and_other_sections_are_not_entries() {
        let ini =
            "[pgbouncer]\ninmanta = host=x\n[databases]\n;inmanta = host=c\n  # inmanta = host=d\n";
        assert_eq!(
            repoint(ini, "inmanta", "n", 1),
            Err(PgbouncerIniError::MissingEntry {
                database: "inmanta".into()
            })
        );
        let ini = format!("{ini}inmanta=host=e\n[ databases ]\nother = host=e\n");
        let out = repoint(&ini, "inmanta", "n", 1).unwrap();
        assert_eq!(out, ini.replace("inmanta=host=e", "inmanta=host=n port=1"));
    }

    #[test]
    fn a_duplicate_entry_is_rewritten_too_and_the_last_one_counts() {
        let ini = "[databases]\ninmanta = host=a port=1\ninmanta = host=b port=2\n";
        let out = repoint(ini, "inmanta", "c", 3).unwrap();
        assert_eq!(
            out,
            "[databases]\ninmanta = host=c port=3\ninmanta = host=c port=3\n"
        );
        assert_eq!(target(ini, "inmanta").unwrap().host.as_deref(), Some("b"));
    }

    #[test]
    fn an_unreadable_value_is_refused() {
        for ini in [
            "[databases]\ninmanta = host='unterminated\n",
            "[databases]\ninmanta = host\n",
        ] {
            assert!(matches!(
                repoint(ini, "inmanta", "n", 1),
                Err(PgbouncerIniError::Unreadable { .. })
            ));
        }
    }

    #[test]
    fn what_pgbouncer_would_refuse_is_found_with_its_line() {
        assert_eq!(check(INI), Ok(()));
        for (text, line) in [
            ("[databases]\ninmanta = host=a\ngarbage line\n", 3),
            ("[databases\n", 1),
            ("[pgbouncer]\n = 3\n", 2),
            ("[databases]\n\nother = host='x\n", 3),
        ] {
            assert!(
                matches!(check(text), Err(PgbouncerIniError::Broken { line: l, .. }) if l == line),
                "{text:?}: {:?}",
                check(text)
            );
        }
    }

    #[test]
    fn the_shipped_example_can_be_re_pointed() {
        let ini = include_str!("../../../deploy/pgbouncer/pgbouncer.ini");
        assert_eq!(check(ini), Ok(()));
        let out = repoint(ini, "inmanta", "10.0.0.2", 5432).unwrap();
        assert_eq!(
            out,
            ini.replace("inmanta = host=10.0.0.1", "inmanta = host=10.0.0.2")
        );
    }

    #[test]
    fn a_file_without_a_final_newline_keeps_it_so() {
        let ini = "[databases]\ninmanta = host=a port=1";
        assert_eq!(
            repoint(ini, "inmanta", "b", 2).unwrap(),
            "[databases]\ninmanta = host=b port=2"
        );
    }
}
