//! Reading and rewriting the application's INI file (inmanta's
//! `database.cfg`) the way Python's configparser reads it, changing only the
//! values asked for and keeping every other byte: comments, order, spacing,
//! indentation, delimiter style and line endings.
//!
//! Both [`get`] and [`set`] see the file through one classifier, `lines`,
//! a transcription of `RawConfigParser._read` (Python 3.11) with its
//! defaults (`ConfigParser()`: strict, `=` and `:` delimiters, `#` and `;`
//! full-line comments only, empty lines allowed in values), on the text as
//! `ConfigParser.read` sees a file: split at `\r\n`, `\r` and `\n`
//! (universal newlines). The rules it follows, per line:
//!
//! - a line whose stripped text starts with `#` or `;` is a comment, and an
//!   empty stripped line is blank: neither changes the parser's state (a
//!   blank line adds an empty line to the current value, which the final
//!   rstrip removes unless more of the value follows);
//! - a line indented deeper than the last key, header or refused line
//!   (`indent_level`, in characters), while a key is current, continues that
//!   key's value, whatever it looks like (`  [b]` too);
//! - otherwise it sets `indent_level`, and is a header if its stripped text
//!   matches `\[(?P<header>.+)\]` (up to the last `]`, the name not
//!   stripped: `[ a ]` is the section ` a `, `[]` no header), else a key line
//!   `key = value` split at the first `=` or `:` (key and value stripped,
//!   keys compared lowercased), else a line configparser refuses.
//!
//! "Stripped" and "indented" use Python's whitespace (`str.isspace`), which
//! is Rust's plus U+001C..U+001F.
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

/// Whitespace as Python's `str.isspace` (and `re`'s `\s`) sees it.
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
fn strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

/// configparser's `optionxform` lowercases keys before comparing them.
fn same_key(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.to_lowercase()
}

/// Why `key = value` cannot be written as one line that reads back as
/// exactly that key and value, or None.
fn unwritable(key: &str, value: &str) -> Option<&'static str> {
    if key.is_empty()
        || strip(key) != key
        || key.contains(['=', ':', '\n', '\r'])
        || key.starts_with(['#', ';', '['])
    {
        Some("a key must be a name without `=`, `:`, line breaks or surrounding spaces, not starting with `#`, `;` or `[`")
    } else if strip(value) != value || value.contains(['\n', '\r']) {
        Some("a value must be one line without surrounding spaces")
    } else {
        None
    }
}

/// What configparser makes of one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind<'a> {
    /// Stripped, it starts with `#` or `;`.
    Comment,
    /// Only whitespace.
    Blank,
    /// `[name]`, anything after the last `]` ignored.
    Header(&'a str),
    /// `key = value`: the key as written (stripped); the value starts at
    /// byte `value_at` of the body, after the delimiter and the whitespace
    /// that follows it.
    Key { key: &'a str, value_at: usize },
    /// More of the current key's value ([`Line::current_key`]).
    Continuation,
    /// A line configparser refuses, so the file does not load: text before
    /// the first header, a line without delimiter, an empty key.
    Refused,
}

/// One line of the file and how configparser reads it.
#[derive(Clone, Copy, Debug)]
struct Line<'a> {
    /// The line without its ending.
    body: &'a str,
    /// `\r\n`, `\n`, `\r`, or empty on a last line without one.
    ending: &'a str,
    /// The leading whitespace of `body`: its length in characters is what
    /// configparser compares to tell a continuation line.
    indent: &'a str,
    kind: Kind<'a>,
    /// The section the line is in (a header's own), None before the first.
    section: Option<&'a str>,
    /// The key (as written) whose value an indented line would continue
    /// after this one: configparser's `optname`.
    current_key: Option<&'a str>,
}

impl Line<'_> {
    /// The piece of a value this line holds, as configparser reads it.
    fn value(&self) -> &str {
        match self.kind {
            Kind::Key { value_at, .. } => strip(&self.body[value_at..]),
            Kind::Continuation => strip(self.body),
            _ => "",
        }
    }
}

/// A `[section]` header's name in a stripped line: configparser's
/// `\[(?P<header>.+)\]` matched at the start, greedy up to the last `]`.
fn header(stripped: &str) -> Option<&str> {
    let inner = stripped.strip_prefix('[')?;
    let end = inner.rfind(']')?;
    (end > 0).then(|| &inner[..end])
}

/// The file's lines as `RawConfigParser._read` classifies them, in order:
/// the one reading both [`get`] and [`set`] use.
fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    let mut rest = text;
    let mut section: Option<&str> = None;
    let mut current_key: Option<&str> = None;
    // configparser's `indent_level`: the indentation of the last line that
    // was not blank, a comment or a continuation.
    let mut indent_level = usize::MAX;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (body, ending) = match rest.find(['\r', '\n']) {
            None => (rest, ""),
            Some(i) if rest[i..].starts_with("\r\n") => (&rest[..i], &rest[i..i + 2]),
            Some(i) => (&rest[..i], &rest[i..i + 1]),
        };
        rest = &rest[body.len() + ending.len()..];
        let stripped = strip(body);
        let indent = &body[..body.len() - body.trim_start_matches(is_space).len()];
        let level = indent.chars().count();
        let kind = if stripped.starts_with(['#', ';']) {
            Kind::Comment
        } else if stripped.is_empty() {
            Kind::Blank
        } else if section.is_some() && current_key.is_some() && level > indent_level {
            Kind::Continuation
        } else {
            indent_level = level;
            if let Some(name) = header(stripped) {
                section = Some(name);
                current_key = None;
                Kind::Header(name)
            } else if section.is_none() {
                Kind::Refused
            } else if let Some(d) = stripped.find(['=', ':']) {
                let key = stripped[..d].trim_end_matches(is_space);
                if key.is_empty() {
                    // configparser sets `optname` to '', which is false.
                    current_key = None;
                    Kind::Refused
                } else {
                    let after = &body[indent.len() + d + 1..];
                    let spaces = after.len() - after.trim_start_matches(is_space).len();
                    current_key = Some(key);
                    Kind::Key {
                        key,
                        value_at: indent.len() + d + 1 + spaces,
                    }
                }
            } else {
                // configparser notes the error and goes on: the current
                // key stays current.
                Kind::Refused
            }
        };
        Some(Line {
            body,
            ending,
            indent,
            kind,
            section,
            current_key,
        })
    })
}

/// The value of `key` in `section` (keys are case-insensitive), the last one
/// if set twice, as configparser would read it: the lines of a multi-line
/// value joined with `\n`, trailing whitespace removed. Only the section's
/// own entries count, not `[DEFAULT]`'s (which configparser would fall back
/// to).
pub fn get(text: &str, section: &str, key: &str) -> Option<String> {
    let mut found: Option<String> = None;
    for line in lines(text).filter(|l| l.section == Some(section)) {
        match line.kind {
            Kind::Key { key: k, .. } if same_key(k, key) => found = Some(line.value().to_owned()),
            Kind::Continuation | Kind::Blank
                if line.current_key.is_some_and(|k| same_key(k, key)) =>
            {
                if let Some(v) = &mut found {
                    v.push('\n');
                    v.push_str(line.value());
                }
            }
            _ => {}
        }
    }
    found.map(|v| v.trim_end_matches(is_space).to_owned())
}

/// Sets each `(key, value)` in `section`: replaces the value on every line
/// that sets the key (keeping its indentation, key, delimiter and spacing,
/// dropping the continuation lines of the old value but not the blank and
/// comment lines among them), or adds `key = value` after the section's last
/// entry. Every other byte is kept. A key given twice (in any case) takes
/// its last value, as if the updates were applied one after the other.
///
/// An added line is indented so that every later line reads as before: like
/// the section's last key line when there is one (configparser's state after
/// the added line is then the state before it); else, the section holding
/// only its header, like the next line that is not blank or a comment (the
/// next header, so it stays one). It ends with the file's usual line ending
/// (`\r\n` if any, else `\n` if any, else `\r` if any, else `\n`); the line
/// it follows gains one if it had none.
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
        match wanted.iter_mut().find(|(k, _)| same_key(k, key)) {
            Some(w) => w.1 = value,
            None => wanted.push((key, value)),
        }
    }
    let is_wanted = |k: &str| wanted.iter().position(|(w, _)| same_key(w, k));
    let lines: Vec<Line> = lines(text).collect();

    // Where missing keys go: after the last entry (key, continuation or
    // refused line) of the section's last occurrence, else its header; and
    // the indentation of the last line there that set configparser's
    // `indent_level`.
    let mut after: Option<(usize, &str)> = None;
    for (i, line) in lines.iter().enumerate() {
        if line.section != Some(section) {
            continue;
        }
        match (line.kind, &mut after) {
            (Kind::Header(_), _) => after = Some((i, line.indent)),
            (Kind::Key { .. } | Kind::Refused, Some(at)) => *at = (i, line.indent),
            (Kind::Continuation, Some(at)) => at.0 = i,
            _ => {}
        }
    }
    let Some((insert_after, setter_indent)) = after else {
        return Err(IniError::MissingSection {
            section: section.to_owned(),
        });
    };
    let indent = if lines[insert_after].current_key.is_some() {
        setter_indent
    } else {
        lines[insert_after + 1..]
            .iter()
            .find(|l| !matches!(l.kind, Kind::Blank | Kind::Comment))
            .map_or("", |l| l.indent)
    };
    let newline = if text.contains("\r\n") {
        "\r\n"
    } else if text.contains('\n') || !text.contains('\r') {
        "\n"
    } else {
        "\r"
    };

    let mut done = vec![false; wanted.len()];
    let mut out = String::with_capacity(text.len() + 32 * wanted.len());
    for (i, line) in lines.iter().enumerate() {
        let ours = line.section == Some(section);
        match line.kind {
            Kind::Key { key, value_at } if ours && is_wanted(key).is_some() => {
                let u = is_wanted(key).expect("checked just above");
                out.push_str(&line.body[..value_at]);
                out.push_str(wanted[u].1);
                out.push_str(line.ending);
                done[u] = true;
            }
            Kind::Continuation if ours && line.current_key.and_then(is_wanted).is_some() => {}
            _ => {
                out.push_str(line.body);
                out.push_str(line.ending);
            }
        }
        if i == insert_after && done.contains(&false) {
            // Only the file's last line can lack an ending.
            if !out.ends_with(['\n', '\r']) {
                out.push_str(newline);
            }
            for ((k, v), _) in wanted.iter().zip(&done).filter(|(_, d)| !**d) {
                out.push_str(indent);
                out.push_str(k);
                out.push_str(" = ");
                out.push_str(v);
                out.push_str(newline);
            }
        }
    }
    Ok(out)
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

    const NEW: [(&str, &str); 2] = [("host", "10.0.0.2"), ("port", "5433")];

    #[test]
    fn only_the_value_changes() {
        let out = set(CFG, "database", &NEW).unwrap();
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
        // The dropped continuation was the last line: the key line keeps
        // its own ending.
        let out = set("[database]\nhost = a\n  b", "database", &[("host", "c")]).unwrap();
        assert_eq!(out, "[database]\nhost = c\n");
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
        // configparser lowercases with str.lower(), not only ASCII.
        assert_eq!(get("[d]\nÉTAT = 1\n", "d", "état").as_deref(), Some("1"));
    }

    #[test]
    fn continuation_lines_of_the_old_value_go_with_it() {
        let text = "[database]\nhost = a\n  b\nport = 1\n";
        assert_eq!(get(text, "database", "host").as_deref(), Some("a\nb"));
        assert_eq!(
            set(text, "database", &[("host", "c")]).unwrap(),
            "[database]\nhost = c\nport = 1\n"
        );
    }

    #[test]
    fn indented_keys_are_keys() {
        // Item 1 of the configparser differences: the keys of an indented
        // section were not seen, so `set` appended a second `host` and
        // configparser (strict) refused the file: DuplicateOptionError.
        let text = "[database]\n    host = 10.0.0.1\n    port = 5432\n";
        assert_eq!(get(text, "database", "host").as_deref(), Some("10.0.0.1"));
        let out = set(text, "database", &NEW).unwrap();
        assert_eq!(out, "[database]\n    host = 10.0.0.2\n    port = 5433\n");
        // A missing key takes the indentation of the section's last key
        // line, so it is neither a continuation nor changes what follows.
        let text = "[database]\n  name = x\n    more\n\n[other]\n  port = 1\n";
        let out = set(text, "database", &NEW).unwrap();
        assert_eq!(
            out,
            "[database]\n  name = x\n    more\n  host = 10.0.0.2\n  port = 5433\n\n[other]\n  port = 1\n"
        );
        assert_eq!(get(&out, "database", "name").as_deref(), Some("x\nmore"));
    }

    #[test]
    fn a_key_added_under_a_bare_header_keeps_the_next_header_a_header() {
        // No key is current after a header, so the added line is never a
        // continuation; the next header must not become one of the added
        // key: it is indented as that header (configparser reads this
        // output as [database] host and [other] x).
        let text = "[database]\n# nothing yet\n  [other]\n  x = 1\n";
        let out = set(text, "database", &[("host", "h")]).unwrap();
        assert_eq!(
            out,
            "[database]\n  host = h\n# nothing yet\n  [other]\n  x = 1\n"
        );
        assert_eq!(get(&out, "other", "x").as_deref(), Some("1"));
        assert_eq!(get(&out, "database", "host").as_deref(), Some("h"));
    }

    #[test]
    fn a_value_goes_on_after_blank_and_comment_lines() {
        // Item 2: configparser keeps empty lines in values and skips
        // comment lines, so `  more` still continues `host`; it was kept
        // and made the new host two lines.
        let text = "[database]\nhost = a\n\n# note\n  more\nport = 1\n";
        assert_eq!(get(text, "database", "host").as_deref(), Some("a\n\nmore"));
        let out = set(text, "database", &[("host", "b")]).unwrap();
        assert_eq!(out, "[database]\nhost = b\n\n# note\nport = 1\n");
        assert_eq!(get(&out, "database", "host").as_deref(), Some("b"));
        // Trailing blank lines are not part of a value (configparser
        // rstrips it).
        assert_eq!(get("[d]\nk = a\n\n\n", "d", "k").as_deref(), Some("a"));
    }

    #[test]
    fn a_lone_cr_ends_a_line() {
        // Item 3: Python reads files with universal newlines.
        let text = "[database]\rhost = a\r  more\rport = 1";
        assert_eq!(get(text, "database", "host").as_deref(), Some("a\nmore"));
        assert_eq!(get(text, "database", "port").as_deref(), Some("1"));
        let out = set(text, "database", &[("host", "b")]).unwrap();
        assert_eq!(out, "[database]\rhost = b\rport = 1");
        // A file of lone CRs gets lone CRs.
        let out = set("[database]\rhost = a", "database", &[("port", "1")]).unwrap();
        assert_eq!(out, "[database]\rhost = a\rport = 1\r");
        // Mixed: `\n` wins over lone CRs, `\r\n` over both.
        let out = set("[database]\rhost = a\n", "database", &[("port", "1")]).unwrap();
        assert_eq!(out, "[database]\rhost = a\nport = 1\n");
    }

    #[test]
    fn a_header_name_is_not_stripped_and_needs_a_character() {
        // Item 4: `[ database ]` is the section ` database `.
        let text = "[ database ]\nhost = a\n";
        assert_eq!(
            set(text, "database", &NEW),
            Err(IniError::MissingSection {
                section: "database".into()
            })
        );
        assert_eq!(get(text, " database ", "host").as_deref(), Some("a"));
        assert_eq!(get(text, "database", "host"), None);
        // `[]` is no header (configparser refuses the line); `[]]` is the
        // section `]`; trailing spaces of the line are not part of the name.
        assert_eq!(get("[]\nhost = a\n", "", "host"), None);
        assert_eq!(get("[]]\nhost = a\n", "]", "host").as_deref(), Some("a"));
        assert_eq!(
            get("[database]  \nhost = a\n", "database", "host").as_deref(),
            Some("a")
        );
    }

    #[test]
    fn an_indented_header_after_a_key_continues_its_value() {
        // Item 5. This replaces `an_indented_section_header_is_never_dropped_
        // with_an_old_value`, which read `  [b]` as a header everywhere (so
        // that `get` and `set` agreed). configparser reads it as more of
        // `host`'s value (indented deeper than the key line), so `port`
        // is in [a] and there is no [b]: the rewrite drops `  [b]` with the
        // old value, and the file reads as before but for `host`.
        let text = "[a]\nhost = x\n  [b]\nport = 1\n";
        assert_eq!(get(text, "a", "host").as_deref(), Some("x\n[b]"));
        assert_eq!(get(text, "a", "port").as_deref(), Some("1"));
        assert_eq!(get(text, "b", "port"), None);
        let out = set(text, "a", &[("host", "y")]).unwrap();
        assert_eq!(out, "[a]\nhost = y\nport = 1\n");
        assert_eq!(
            set(text, "b", &[("port", "2")]),
            Err(IniError::MissingSection {
                section: "b".into()
            })
        );
        // Through an added key: it goes after `user`, the section's last
        // entry; `  [b]` stays more of `name`.
        let text = "[a]\nname = x\n  [b]\nuser = u\n";
        let out = set(text, "a", &[("port", "1")]).unwrap();
        assert_eq!(out, "[a]\nname = x\n  [b]\nuser = u\nport = 1\n");
        assert_eq!(set(&out, "a", &[("port", "1")]).unwrap(), out);
        // Not indented deeper than the key line, it is a header.
        let text = "[a]\n  host = x\n  [b]\nport = 1\n";
        assert_eq!(get(text, "b", "port").as_deref(), Some("1"));
    }

    #[test]
    fn indentation_counts_characters_and_python_whitespace() {
        // One U+3000 (3 bytes) is less indented than two spaces.
        let text = "[d]\n\u{3000}k = a\n  more\n";
        assert_eq!(get(text, "d", "k").as_deref(), Some("a\nmore"));
        // U+001C..U+001F are whitespace for Python, not for Rust.
        let text = "[d]\n\u{1c}k\u{1c}=\u{1c}v\u{1c}\n";
        assert_eq!(get(text, "d", "k").as_deref(), Some("v"));
        assert_eq!(
            set(text, "d", &[("k", "w")]).unwrap(),
            "[d]\n\u{1c}k\u{1c}=\u{1c}w\n"
        );
        assert!(set(text, "d", &[("k", "w\u{1c}")]).is_err());
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
        assert_eq!(get(text, "database", "host").as_deref(), Some("b"));
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
            ("host", "a\u{1f}"),
            ("", "a"),
            ("a = b", "c"),
            ("db:host", "c"),
            ("#host", "c"),
            ("[host", "c]"),
            (" host", "c"),
            ("\u{a0}host", "c"),
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
