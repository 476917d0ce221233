//! Reading and rewriting the application's INI file (inmanta's
//! `database.cfg`) the way Python's configparser reads it, changing only the
//! values asked for and keeping every other byte: comments, order, spacing,
//! delimiter style and line endings.
//!
//! Pure text in, text out; the atomic write (temp file, fsync, rename, fsync
//! of the directory) is the daemon's job.

/// Why a rewrite was refused. Nothing is written when this is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IniError {
    #[error("section [{section}] is not in the file: add it, or fix application.config_section")]
    MissingSection { section: String },
    /// The entry would not read back as written (a key configparser would
    /// split or take for a comment, a value on several lines or with
    /// surrounding spaces), so nothing is written rather than a wrong file.
    #[error("cannot write `{key} = {value}` on one line of an INI file: {why}")]
    Unwritable {
        key: String,
        value: String,
        why: &'static str,
    },
}

/// Why `key = value` cannot be written as one line that reads back as
/// exactly that key and value, or None.
fn unwritable(key: &str, value: &str) -> Option<&'static str> {
    if key.is_empty()
        || key.trim() != key
        || key.contains(['=', ':', '\n', '\r'])
        || key.starts_with(['#', ';', '['])
    {
        Some("a key must be a name without `=`, `:`, line breaks or surrounding spaces, not starting with `#`, `;` or `[`")
    } else if value.trim() != value || value.contains(['\n', '\r']) {
        Some("a value must be one line without surrounding spaces")
    } else {
        None
    }
}

/// One line split into its parts, for lines that hold a `key = value`.
struct KeyLine<'a> {
    key: &'a str,
    /// Everything up to and including the delimiter and the spaces after it.
    prefix: &'a str,
    value: &'a str,
}

fn split_line_ending(line: &str) -> (&str, &str) {
    if let Some(body) = line.strip_suffix("\r\n") {
        (body, "\r\n")
    } else if let Some(body) = line.strip_suffix('\n') {
        (body, "\n")
    } else {
        (line, "")
    }
}

/// A `[section]` header's name. As configparser (`\[(?P<header>.+)\]` matched
/// at the start of the stripped line), anything after the last `]` is
/// ignored: `[server] ; web` is the section `server`.
fn section_name(body: &str) -> Option<&str> {
    let inner = body.trim().strip_prefix('[')?;
    inner.rfind(']').map(|end| inner[..end].trim())
}

fn is_comment(body: &str) -> bool {
    let t = body.trim_start();
    t.starts_with('#') || t.starts_with(';')
}

fn key_line(body: &str) -> Option<KeyLine<'_>> {
    if body.starts_with([' ', '\t']) || is_comment(body) || body.trim().is_empty() {
        return None;
    }
    let d = body.find(['=', ':'])?;
    let key = body[..d].trim();
    if key.is_empty() {
        return None;
    }
    let after = &body[d + 1..];
    let spaces = after.len() - after.trim_start().len();
    let split = d + 1 + spaces;
    Some(KeyLine {
        key,
        prefix: &body[..split],
        value: body[split..].trim_end(),
    })
}

/// A continuation line of the previous value (configparser: indented, not
/// blank). A line that looks like a `[section]` header is read as one here
/// as everywhere else in this file, so it is never dropped with an old value.
fn is_continuation(body: &str) -> bool {
    body.starts_with([' ', '\t'])
        && !body.trim().is_empty()
        && !is_comment(body)
        && section_name(body).is_none()
}

/// The value of `key` in `section` (keys are case-insensitive), the last one
/// if set twice, as configparser would read it.
pub fn get(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current: Option<&str> = None;
    let mut found = None;
    for line in text.split_inclusive('\n') {
        let (body, _) = split_line_ending(line);
        if let Some(name) = section_name(body) {
            current = Some(name);
        } else if current == Some(section) {
            if let Some(kl) = key_line(body) {
                if kl.key.eq_ignore_ascii_case(key) {
                    found = Some(kl.value.to_owned());
                }
            }
        }
    }
    found
}

/// Sets each `(key, value)` in `section`: replaces the value on every line
/// that sets the key (dropping continuation lines of the old value), or adds
/// `key = value` after the section's last entry. Every other byte is kept.
/// A key given twice (in any case) takes its last value, as if the updates
/// were applied one after the other.
pub fn set(text: &str, section: &str, updates: &[(&str, &str)]) -> Result<String, IniError> {
    let mut wanted: Vec<(&str, &str)> = Vec::with_capacity(updates.len());
    for &(key, value) in updates {
        if let Some(why) = unwritable(key, value) {
            return Err(IniError::Unwritable {
                key: key.to_owned(),
                value: value.to_owned(),
                why,
            });
        }
        match wanted.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
            Some(w) => w.1 = value,
            None => wanted.push((key, value)),
        }
    }
    let updates = &wanted[..];
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut in_section = false;
    let mut section_seen = false;
    // Index after which missing keys are inserted: the section's last
    // non-blank line.
    let mut insert_after: Option<usize> = None;
    let mut done = vec![false; updates.len()];
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + updates.len());
    let mut skipping_continuation = false;
    let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };

    for line in &lines {
        let (body, ending) = split_line_ending(line);
        if skipping_continuation && is_continuation(body) {
            continue;
        }
        skipping_continuation = false;
        if let Some(name) = section_name(body) {
            in_section = name == section;
            section_seen |= in_section;
            if in_section {
                insert_after = Some(out.len());
            }
            out.push((*line).to_owned());
            continue;
        }
        if in_section {
            if let Some(kl) = key_line(body) {
                if let Some(u) = updates
                    .iter()
                    .position(|(k, _)| kl.key.eq_ignore_ascii_case(k))
                {
                    out.push(format!("{}{}{}", kl.prefix, updates[u].1, ending));
                    done[u] = true;
                    skipping_continuation = true;
                    insert_after = Some(out.len() - 1);
                    continue;
                }
            }
            if !body.trim().is_empty() && !is_comment(body) {
                insert_after = Some(out.len());
            }
        }
        out.push((*line).to_owned());
    }
    if !section_seen {
        return Err(IniError::MissingSection {
            section: section.to_owned(),
        });
    }
    let missing: Vec<String> = updates
        .iter()
        .zip(&done)
        .filter(|(_, d)| !**d)
        .map(|((k, v), _)| format!("{k} = {v}{newline}"))
        .collect();
    if !missing.is_empty() {
        let at = insert_after.expect("the section header was seen");
        // The line we insert after may be the file's last and lack a newline.
        if !out[at].ends_with('\n') {
            out[at].push_str(newline);
        }
        for (n, m) in missing.into_iter().enumerate() {
            out.insert(at + 1 + n, m);
        }
    }
    Ok(out.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "\
# inmanta database settings
[server]
host = 0.0.0.0

[database]
; managed by hand until pgwarden
host = 10.0.0.1
port=5432
name = inmanta
username = inmanta
password = s3cret

[logging]
level = info
";

    #[test]
    fn only_the_value_changes() {
        let out = set(CFG, "database", &[("host", "10.0.0.2"), ("port", "5433")]).unwrap();
        let want = CFG
            .replace("host = 10.0.0.1", "host = 10.0.0.2")
            .replace("port=5432", "port=5433");
        assert_eq!(out, want);
        assert_eq!(get(&out, "database", "host").as_deref(), Some("10.0.0.2"));
        assert_eq!(
            get(&out, "server", "host").as_deref(),
            Some("0.0.0.0"),
            "other sections untouched"
        );
    }

    #[test]
    fn every_other_byte_is_kept_line_by_line() {
        let out = set(CFG, "database", &[("host", "h")]).unwrap();
        let before: Vec<&str> = CFG.lines().collect();
        let after: Vec<&str> = out.lines().collect();
        assert_eq!(before.len(), after.len());
        let changed: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert_eq!(changed, vec![6]);
    }

    #[test]
    fn a_missing_key_is_added_at_the_end_of_its_section() {
        let text = "[database]\nhost = a\n\n# trailing comment of the section\n[other]\nx = 1\n";
        let out = set(text, "database", &[("port", "5433")]).unwrap();
        assert_eq!(out, "[database]\nhost = a\nport = 5433\n\n# trailing comment of the section\n[other]\nx = 1\n");
    }

    #[test]
    fn a_section_at_the_end_without_a_final_newline() {
        let out = set(
            "[database]\nhost = a",
            "database",
            &[("host", "b"), ("port", "1")],
        )
        .unwrap();
        assert_eq!(out, "[database]\nhost = b\nport = 1\n");
        let out = set("[database]", "database", &[("host", "b")]).unwrap();
        assert_eq!(out, "[database]\nhost = b\n");
    }

    #[test]
    fn crlf_files_stay_crlf() {
        let out = set(
            "[database]\r\nhost = a\r\n",
            "database",
            &[("host", "b"), ("port", "2")],
        )
        .unwrap();
        assert_eq!(out, "[database]\r\nhost = b\r\nport = 2\r\n");
    }

    #[test]
    fn keys_are_case_insensitive_and_delimiters_kept() {
        let out = set("[database]\nHost: a\n", "database", &[("host", "b")]).unwrap();
        assert_eq!(out, "[database]\nHost: b\n");
        assert_eq!(get(&out, "database", "HOST").as_deref(), Some("b"));
    }

    #[test]
    fn continuation_lines_of_the_old_value_go_with_it() {
        let text = "[database]\nhost = a\n  b\nport = 1\n";
        assert_eq!(
            set(text, "database", &[("host", "c")]).unwrap(),
            "[database]\nhost = c\nport = 1\n"
        );
    }

    #[test]
    fn an_indented_section_header_is_never_dropped_with_an_old_value() {
        // Found by the fuzz property (crate::fuzzing): `set` dropped `  [b]`
        // as a continuation line of the value it replaced, while `get` and
        // `set` itself read it as a header, so `port` moved from [b] to [a].
        let text = "[a]\nhost = x\n  [b]\nport = 1\n";
        let out = set(text, "a", &[("host", "y")]).unwrap();
        assert_eq!(out, "[a]\nhost = y\n  [b]\nport = 1\n");
        assert_eq!(get(&out, "b", "port").as_deref(), Some("1"));
        assert_eq!(get(&out, "a", "port"), None);
        // The same through an added key: the second rewrite ate the header.
        let text = "[a]\nname = x\n  [b]\nuser = u\n";
        let out = set(text, "a", &[("port", "1")]).unwrap();
        assert_eq!(out, "[a]\nname = x\nport = 1\n  [b]\nuser = u\n");
        assert_eq!(set(&out, "a", &[("port", "1")]).unwrap(), out);
    }

    #[test]
    fn a_header_followed_by_a_comment_starts_its_section() {
        // configparser reads `[server] ; web` as the header of [server];
        // read as a plain line, the server's host was rewritten as well.
        let text = "[database]\nhost = a\n[server] ; web\nhost = 0.0.0.0\n";
        let out = set(text, "database", &[("host", "b")]).unwrap();
        assert_eq!(
            out,
            "[database]\nhost = b\n[server] ; web\nhost = 0.0.0.0\n"
        );
        assert_eq!(get(&out, "server", "host").as_deref(), Some("0.0.0.0"));
        assert_eq!(get(&out, "database", "host").as_deref(), Some("b"));
    }

    #[test]
    fn a_key_set_twice_is_changed_everywhere() {
        let text = "[database]\nhost = a\nhost = b\n";
        let out = set(text, "database", &[("host", "c")]).unwrap();
        assert_eq!(out, "[database]\nhost = c\nhost = c\n");
    }

    #[test]
    fn a_missing_section_is_an_error_and_names_it() {
        let e = set("[server]\nhost = a\n", "database", &[("host", "b")]).unwrap_err();
        assert_eq!(
            e,
            IniError::MissingSection {
                section: "database".into()
            }
        );
        assert!(e.to_string().contains("[database] is not in the file"));
    }

    #[test]
    fn a_key_given_twice_takes_its_last_value_and_stays_put() {
        // Found by the property test (crate::fuzzing): the first value went
        // on the existing line and the last was appended below it, once
        // more on every rewrite.
        let updates = [("host", "a"), ("HOST", "b")];
        let out = set("[database]\nhost = x\n", "database", &updates).unwrap();
        assert_eq!(out, "[database]\nhost = b\n");
        assert_eq!(set(&out, "database", &updates).unwrap(), out);
        let out = set("[database]\n", "database", &updates).unwrap();
        assert_eq!(out, "[database]\nhost = b\n");
    }

    #[test]
    fn an_entry_that_would_not_read_back_is_refused() {
        for (key, value) in [
            ("host", "a\n[other]"),
            ("host", " a"),
            ("host", "a\r"),
            ("", "a"),
            ("a = b", "c"),
            ("db:host", "c"),
            ("#host", "c"),
            ("[host", "c]"),
            (" host", "c"),
        ] {
            let e = set("[database]\nhost = x\n", "database", &[(key, value)]).unwrap_err();
            assert!(
                matches!(&e, IniError::Unwritable { key: k, value: v, .. } if k == key && v == value),
                "{key:?} = {value:?}: {e}"
            );
        }
        assert!(set("[database]\n", "database", &[("host", "")]).is_ok());
    }

    #[test]
    fn setting_the_same_value_changes_nothing() {
        assert_eq!(
            set(CFG, "database", &[("host", "10.0.0.1"), ("port", "5432")]).unwrap(),
            CFG
        );
    }
}
