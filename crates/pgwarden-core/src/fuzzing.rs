//! The properties the fuzz targets check (`fuzz/` at the workspace root,
//! run with cargo-fuzz), kept here so a plain unit test runs the same checks
//! on stable Rust in CI: over the seed inputs and a few thousand cheap
//! deterministic mutations of them (see the tests at the bottom).
//!
//! Each function takes any input and panics when a property is broken.

use crate::config::{locate, Config, PathSeg};
use crate::ini;

/// The config loader on any bytes (as UTF-8, invalid sequences replaced).
///
/// - Loading never panics, and a refused config says where and what: at
///   least one problem, each at line and column 1 or more with a message,
///   rendered as `origin:line:column: message`.
/// - A loaded config passes its own validation, names its local node, and
///   renders to YAML that loads again into the same config (rendering it a
///   second time gives the same text).
/// - [`locate`] finds any path in any text without panicking.
pub fn config_loader(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for path in [
        &[key("nodes"), PathSeg::Index(1), key("port")][..],
        &[key("application"), key("stop"), PathSeg::Index(0)],
        &[PathSeg::Index(0), key("")],
    ] {
        let (line, column) = locate(&text, path);
        assert!(line >= 1 && column >= 1, "locate gave {line}:{column}");
    }
    match Config::parse_str("fuzz.yaml", &text) {
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error without a problem");
            for p in &e.problems {
                assert!(p.line >= 1 && p.column >= 1, "{p:?}");
                assert!(!p.message.trim().is_empty(), "{p:?}");
            }
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz.yaml:"), "{shown}");
        }
        Ok(config) => {
            assert_eq!(config.validate(), vec![]);
            assert_eq!(config.local().name, config.local_node);
            let yaml = serde_yaml::to_string(&config).expect("a loaded config renders");
            let again = Config::parse_str("rendered.yaml", &yaml)
                .unwrap_or_else(|e| panic!("the rendered config does not load: {e}\n{yaml}"));
            let twice = serde_yaml::to_string(&again).expect("a loaded config renders");
            assert_eq!(twice, yaml, "rendering is not stable");
        }
    }
}

fn key(k: &str) -> PathSeg {
    PathSeg::Key(k.to_owned())
}

/// A test case of the INI rewriter decoded from bytes, so a plain
/// `database.cfg` is a seed as it is: the text up to the first NUL byte;
/// after it, NUL-separated, the section then key, value, key, value...
/// Without a NUL the file's first section gets `host = 10.0.0.2` and
/// `port = 5433`; an empty section name also means the first section.
pub struct IniCase {
    pub text: String,
    pub section: String,
    pub updates: Vec<(String, String)>,
}

impl IniCase {
    pub fn from_bytes(data: &[u8]) -> IniCase {
        let mut parts = data.split(|&b| b == 0);
        let text = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let rest: Vec<String> = parts
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        let first_section = || {
            text.lines()
                .find_map(|l| header(l).map(str::to_owned))
                .unwrap_or_else(|| "database".to_owned())
        };
        let Some((section, kv)) = rest.split_first() else {
            let updates = vec![
                ("host".to_owned(), "10.0.0.2".to_owned()),
                ("port".to_owned(), "5433".to_owned()),
            ];
            return IniCase {
                section: first_section(),
                text,
                updates,
            };
        };
        let section = if section.is_empty() {
            first_section()
        } else {
            section.clone()
        };
        let updates = kv
            .chunks(2)
            .map(|c| (c[0].clone(), c.get(1).cloned().unwrap_or_default()))
            .collect();
        IniCase {
            text,
            section,
            updates,
        }
    }

    pub fn check(&self) {
        let updates: Vec<(&str, &str)> = self
            .updates
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        ini_rewriter(&self.text, &self.section, &updates);
    }
}

/// [`ini::set`] on any input, against its contract:
///
/// - it never panics; it refuses (naming the first) an entry that would not
///   read back as written, then a section the file lacks, and otherwise
///   succeeds;
/// - afterwards [`ini::get`] reads every key's last value;
/// - "every byte it does not change is kept": mask, in the input and in the
///   output, the value and continuation lines of every line in `section`
///   that sets an updated key (the key, delimiter, spaces and line ending
///   stay; lone `\r`s just before the value count with the line ending, as
///   an empty new value makes them part of it). The masked output is the masked input with the missing keys'
///   lines (`key = ` and the file's line ending, in update order) inserted at
///   one line boundary; when they go at the end of a file whose last line has
///   no line ending, that line gains one. Every masked line of the output
///   holds its key's new value;
/// - setting the same values again changes nothing.
pub fn ini_rewriter(text: &str, section: &str, updates: &[(&str, &str)]) {
    let result = ini::set(text, section, updates);
    if let Some((k, v)) = updates.iter().find(|(k, v)| !writable(k, v)) {
        match &result {
            Err(ini::IniError::Unwritable { key, value, .. }) if key == k && value == v => {}
            other => panic!("{k:?} = {v:?} should be refused, got {other:?}"),
        }
        return;
    }
    let has_section = text.split_inclusive('\n').any(|l| {
        let body = l.strip_suffix('\n').unwrap_or(l);
        let body = body.strip_suffix('\r').unwrap_or(body);
        header(body) == Some(section)
    });
    let out = match result {
        Ok(out) => {
            assert!(has_section, "set succeeded without section [{section}]");
            out
        }
        Err(ini::IniError::MissingSection { section: s }) => {
            assert!(!has_section, "[{section}] is there: {text:?}");
            assert_eq!(s, section);
            return;
        }
        Err(e) => panic!("unexpected error {e:?}"),
    };

    // Each key once, with its last value, in order of first appearance.
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    for &(k, v) in updates {
        match wanted.iter_mut().find(|(w, _)| w.eq_ignore_ascii_case(k)) {
            Some(w) => w.1 = v,
            None => wanted.push((k, v)),
        }
    }
    for (k, v) in &wanted {
        assert_eq!(
            ini::get(&out, section, k).as_deref(),
            Some(*v),
            "[{section}] {k} in {out:?}"
        );
    }

    let (masked_in, present) = mask(text, section, &wanted, false);
    let (masked_out, _) = mask(&out, section, &wanted, true);
    let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let mut added = Vec::new();
    for (k, _) in wanted
        .iter()
        .filter(|(k, _)| !present.iter().any(|p| p.eq_ignore_ascii_case(k)))
    {
        added.extend_from_slice(k.as_bytes());
        added.extend_from_slice(b" = \xff");
        added.extend_from_slice(newline.as_bytes());
    }
    let common = masked_in
        .iter()
        .zip(&masked_out)
        .take_while(|(a, b)| a == b)
        .count();
    let at = masked_in[..common]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let inserted = [&masked_in[..at], &added, &masked_in[at..]].concat();
    let at_end = [masked_in.as_slice(), newline.as_bytes(), &added].concat();
    assert!(
        masked_out == inserted
            || (!added.is_empty() && !text.ends_with('\n') && masked_out == at_end),
        "bytes changed beyond the updated values:\n in: {text:?}\nout: {out:?}\nupdates: {updates:?}"
    );

    assert_eq!(
        ini::set(&out, section, updates).as_ref(),
        Ok(&out),
        "setting the same values again changed the file"
    );
}

/// What the rewriter promises to write: `key = value` on one line that
/// reads back as that key and value.
fn writable(key: &str, value: &str) -> bool {
    !key.is_empty()
        && key.trim() == key
        && !key.contains(['=', ':', '\n', '\r'])
        && !key.starts_with(['#', ';', '['])
        && value.trim() == value
        && !value.contains(['\n', '\r'])
}

/// A `[section]` header's name: what is between `[` and the last `]`.
fn header(body: &str) -> Option<&str> {
    let (name, _) = body.trim().strip_prefix('[')?.rsplit_once(']')?;
    Some(name.trim())
}

/// `text` with the value of each line of `section` that sets one of the
/// `wanted` keys replaced by 0xFF (never in UTF-8), and the continuation
/// lines of such a value dropped; and the keys found. With `check`, each
/// such value must be the wanted one.
fn mask<'t>(
    text: &'t str,
    section: &str,
    wanted: &[(&str, &str)],
    check: bool,
) -> (Vec<u8>, Vec<&'t str>) {
    let mut out = Vec::with_capacity(text.len());
    let mut found = Vec::new();
    let mut current: Option<&str> = None;
    let mut in_value = false;
    for line in text.split_inclusive('\n') {
        let ending = if line.ends_with("\r\n") {
            "\r\n"
        } else if line.ends_with('\n') {
            "\n"
        } else {
            ""
        };
        let body = &line[..line.len() - ending.len()];
        let indented = body.starts_with([' ', '\t']);
        let blank = body.trim().is_empty();
        let comment = body.trim_start().starts_with(['#', ';']);
        // A continuation of a masked value goes with it (configparser reads
        // indented lines after a key as more of its value); a line that
        // looks like a section header is one, indented or not.
        if in_value && indented && !blank && !comment && header(body).is_none() {
            continue;
        }
        in_value = false;
        if let Some(name) = header(body) {
            current = Some(name);
        } else if current == Some(section) && !indented && !blank && !comment {
            if let Some(d) = body.find(['=', ':']) {
                let k = body[..d].trim();
                if let Some((_, v)) = wanted.iter().find(|(w, _)| w.eq_ignore_ascii_case(k)) {
                    let after = &body[d + 1..];
                    let value_at = d + 1 + after.len() - after.trim_start().len();
                    if check {
                        assert_eq!(&body[value_at..], *v, "line {body:?}");
                    }
                    // Lone CRs right before the value (`k:\r\rv`) end up
                    // before the `\n` when the new value is empty (`k:\r\r\n`,
                    // the last one now part of a CRLF ending): they go after
                    // the mask in both cases.
                    let head = &body[..value_at];
                    let crs = head.trim_end_matches('\r');
                    out.extend_from_slice(crs.as_bytes());
                    out.push(0xff);
                    out.extend_from_slice(&head.as_bytes()[crs.len()..]);
                    out.extend_from_slice(ending.as_bytes());
                    found.push(k);
                    in_value = true;
                    continue;
                }
            }
        }
        out.extend_from_slice(line.as_bytes());
    }
    (out, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds of `fuzz/corpus/*/seed-*`: the fuzz runs start from them.
    const CONFIG_SEEDS: &[&str] = &[
        include_str!("../../../fuzz/corpus/config_loader/seed-example.yaml"),
        include_str!("../../../fuzz/corpus/config_loader/seed-minimal-tls.yaml"),
        include_str!("../../../fuzz/corpus/config_loader/seed-errors.yaml"),
    ];
    const INI_SEEDS: &[&str] = &[
        include_str!("../../../fuzz/corpus/ini_rewriter/seed-database.cfg"),
        include_str!("../../../fuzz/corpus/ini_rewriter/seed-crlf-no-final-newline.cfg"),
        include_str!("../../../fuzz/corpus/ini_rewriter/seed-tricky"),
    ];

    /// Pieces the mutations splice in: the syntax each parser cares about.
    const CONFIG_TOKENS: &[&str] = &[
        "\n",
        "  ",
        "- ",
        ": ",
        "#",
        "[",
        "]",
        "{",
        "}",
        "&a ",
        "*a",
        "'",
        "\"",
        "\t",
        "~",
        "0",
        "65536",
        "1s",
        "0s",
        "16MiB",
        "99999999999TB",
        "nodes:",
        "name: pg-a",
        "tls:",
        "https://x.invalid:1",
        "application:",
        "local_node: ",
        "---\n",
        "!!binary ",
    ];
    const INI_TOKENS: &[&str] = &[
        "\n",
        "\r\n",
        "\r",
        " ",
        "\t",
        "=",
        ":",
        "#",
        ";",
        "[",
        "]",
        "[database]",
        "[other]",
        "  [database]",
        "host",
        "HOST",
        "port",
        " = ",
        "=1",
        "  cont",
        "\u{a0}",
        "é",
        "\0",
        "\0\0",
        "\0host\0",
        "\0port\0",
        "\0Host\0x\0host\0",
    ];

    /// xorshift64: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// One to four random edits: splice a token, delete or duplicate a
    /// range, replace a byte, or cross over with another seed.
    fn mutate(rng: &mut Rng, seed: &[u8], tokens: &[&str], others: &[&str]) -> Vec<u8> {
        let mut d = seed.to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(d.len() + 1);
            match rng.below(5) {
                0 => {
                    let t = tokens[rng.below(tokens.len())];
                    d.splice(at..at, t.bytes());
                }
                1 => {
                    let end = (at + rng.below(40)).min(d.len());
                    d.drain(at..end);
                }
                2 => {
                    let end = (at + rng.below(80)).min(d.len());
                    let copy = d[at..end].to_vec();
                    let to = rng.below(d.len() + 1);
                    d.splice(to..to, copy);
                }
                3 if at < d.len() => d[at] = rng.next() as u8,
                _ => {
                    let other = others[rng.below(others.len())].as_bytes();
                    let from = rng.below(other.len() + 1);
                    d.truncate(at);
                    d.extend_from_slice(&other[from..]);
                }
            }
        }
        d
    }

    #[test]
    fn the_config_loader_holds_its_properties_on_mutated_seeds() {
        let mut rng = Rng(0x5eed_c0f1_9000_0001);
        for seed in CONFIG_SEEDS {
            config_loader(seed.as_bytes());
        }
        for _ in 0..1500 {
            let seed = CONFIG_SEEDS[rng.below(CONFIG_SEEDS.len())];
            config_loader(&mutate(
                &mut rng,
                seed.as_bytes(),
                CONFIG_TOKENS,
                CONFIG_SEEDS,
            ));
        }
    }

    #[test]
    fn the_ini_rewriter_holds_its_properties_on_mutated_seeds() {
        let mut rng = Rng(0x5eed_01a1_0000_0001);
        for seed in INI_SEEDS {
            IniCase::from_bytes(seed.as_bytes()).check();
        }
        for _ in 0..5000 {
            let seed = INI_SEEDS[rng.below(INI_SEEDS.len())];
            IniCase::from_bytes(&mutate(&mut rng, seed.as_bytes(), INI_TOKENS, INI_SEEDS)).check();
        }
    }

    /// A seed that stops loading (or starts) explores much less: the valid
    /// ones load, and the broken one reaches validation with every mistake.
    #[test]
    fn the_seeds_are_what_their_names_say() {
        let example = Config::parse_str("seed-example.yaml", CONFIG_SEEDS[0]).unwrap();
        assert!(example.application.is_some() && example.tls.is_none());
        let tls = Config::parse_str("seed-minimal-tls.yaml", CONFIG_SEEDS[1]).unwrap();
        assert!(tls.tls.is_some() && tls.application.is_none());
        let e = Config::parse_str("seed-errors.yaml", CONFIG_SEEDS[2]).unwrap_err();
        let marked = CONFIG_SEEDS[2]
            .lines()
            .filter(|l| l.contains("  # "))
            .count();
        assert_eq!(e.problems.len(), marked, "{e}");
        for p in &e.problems {
            let line = CONFIG_SEEDS[2].lines().nth(p.line - 1).unwrap();
            assert!(line.contains("  # "), "{p:?} is not on a marked line");
        }

        let tricky = IniCase::from_bytes(INI_SEEDS[2].as_bytes());
        assert_eq!(tricky.section, "database");
        assert_eq!(tricky.updates.len(), 4);
        for seed in INI_SEEDS {
            let case = IniCase::from_bytes(seed.as_bytes());
            assert!(ini::get(&case.text, &case.section, "host").is_some());
        }
    }

    /// Inputs the fuzz runs found (minimised), kept so CI checks them.
    #[test]
    fn found_by_the_fuzz_runs() {
        // A lone CR after the delimiter, then an empty value: `T:\r` became
        // `T:\r\n`, which the property masked unlike `T:\r` (fixed there).
        IniCase::from_bytes(b"[]\nT:\r\0\0t\0\0h").check();
        IniCase::from_bytes(b"[d]\nHOST:\r~ 10.0\n\0d\0host\0").check();
        IniCase::from_bytes(b"[d]\nhost =  \r\rinmst\n\0d\0HOST\0").check();
        IniCase::from_bytes(b"[d]\nT:\r\r\0\0t\0\0h").check();
        // A lone CR at the end of the last value, replaced with it.
        IniCase::from_bytes(b"[d]\nHost : 1epli\xff\r").check();
        // `  [b]` after a rewritten key was dropped as a continuation line
        // (fixed in ini.rs).
        IniCase::from_bytes(b"[a]\nname = x\n  [b]\nuser = u\n\0a\0port\x001").check();
    }

    #[test]
    fn the_ini_case_decoding() {
        let c = IniCase::from_bytes(b"# x\n[db]\nhost = a\n");
        assert_eq!(c.section, "db");
        assert_eq!(c.updates.len(), 2);
        let c = IniCase::from_bytes(b"[a]\n[b]\n\0b\0host\0x\0port");
        assert_eq!(c.section, "b");
        assert_eq!(
            c.updates,
            vec![("host".into(), "x".into()), ("port".into(), String::new())]
        );
    }
}
