//! `pgwarden_core::ini` against the real reader: Python's configparser
//! (the one inmanta-server reads its database.cfg with) parses a few
//! thousand generated INI files before and after `ini::set` points
//! `[database]` at a new host and port. Wherever Python loads the input, it
//! must load the output, read the new host and port there and everything
//! else unchanged; and `ini::get` must read what Python reads.
//!
//! The files are the fuzz seeds (`fuzz/corpus/ini_rewriter/seed-*`), a few
//! written here for each known trap, and deterministic line-level mutations
//! of them (indentation, tabs, blank, comment and continuation lines, `=`
//! and `:`, `\n`, `\r\n` and lone `\r`, headers with spaces or trailing
//! text, sections and keys given twice). One `python3` process parses them
//! all: the cases go in as a JSON file, the readings come back as one.

mod util;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use pgwarden_core::fuzzing::Rng;
use pgwarden_core::ini;
use serde_json::Value;

/// How many mutated files, on top of the seeds and the hand-written ones.
const MUTATIONS: usize = 3000;

const NEW: [(&str, &str); 2] = [("host", "10.0.0.2"), ("port", "5433")];

/// Reads each file of the JSON list in argv[1] as `ConfigParser.read` reads
/// a file (`ConfigParser()`, strict, default delimiters and comments; text
/// mode, so universal newlines: `read_string` would not split at a lone
/// `\r`), and writes to argv[2], per file, the section-local raw values
/// (`[DEFAULT]` apart, no interpolation: inmanta turns it off) or the error.
const PARSE: &str = r#"
import configparser, io, json, sys
with open(sys.argv[1], encoding="utf-8") as f:
    texts = json.load(f)
out = []
for text in texts:
    if text is None:
        out.append(None)
        continue
    p = configparser.ConfigParser()
    try:
        p.read_file(io.StringIO(text, newline=None), source="database.cfg")
    except configparser.Error as e:
        out.append({"error": type(e).__name__})
        continue
    sections = {"DEFAULT": dict(p._defaults)}
    for s in p.sections():
        sections[s] = dict(p._sections[s])
    out.append({"sections": sections})
with open(sys.argv[2], "w", encoding="utf-8") as f:
    json.dump(out, f)
"#;

/// Files for each difference between configparser and the old ini.rs, and
/// the indentation rule of added keys.
const WRITTEN: &[&str] = &[
    // Indented keys are keys.
    "[database]\n    host = 10.0.0.1\n    port = 5432\n",
    "[database]\n\thost = 10.0.0.1\n\tname = inmanta\n[server]\n\thost = x\n",
    // A value goes on after blank and comment lines.
    "[database]\nhost = a\n\n  more\nport = 1\n",
    "[database]\nhost = a\n# note\n  more\n; note\n\n    still\nname = n\n",
    // A lone CR is a line break.
    "[database]\rhost = a\r  more\rport = 1",
    "[database]\rhost = a\r\nport = 1\n",
    // Header names are not stripped; `[]` is no header.
    "[ database ]\nhost = a\n[database]\nport = 1\n",
    "[database]  \nhost = a\n",
    "[database] ; the real one\nhost = a\n",
    "[database]\n[]\nhost = a\n",
    "[]]\nhost = a\n[database]\n",
    // An indented header deeper than the key line before it is a value line.
    "[database]\nhost = a\n  [server]\nname = n\n",
    "[database]\n  name = n\n  [server]\n  host = x\n",
    // Added under a bare header followed by an indented one.
    "[database]\n# empty\n  [server]\n  host = x\n",
    "  [database]\n\n    [server]\n    port = 1\n",
    "[database]",
    // Indentation is counted in characters; Python's whitespace.
    "[database]\n\u{3000}host = a\n  more\n",
    "[database]\n\u{1c}host\u{1c}=\u{1c}a\u{1c}\n\u{a0}port : 1\n",
    // [DEFAULT] may appear twice and is not [database].
    "[DEFAULT]\nhost = d\n[database]\nname = n\n[DEFAULT]\nport = 1\n",
];

/// One of `from`, at random.
fn pick<'a>(rng: &mut Rng, from: &[&'a str]) -> &'a str {
    from[rng.below(from.len())]
}

/// A file as lines, each `(body, ending)`, split where Python splits.
fn split(text: &str) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        let stop = if rest[end..].starts_with("\r\n") {
            end + 2
        } else {
            (end + 1).min(rest.len())
        };
        lines.push((rest[..end].to_owned(), rest[end..stop].to_owned()));
        rest = &rest[stop..];
    }
    lines
}

const INDENTS: &[&str] = &[" ", "  ", "    ", "\t", "  \t", "        ", "\u{3000}"];
const ENDINGS: &[&str] = &["\n", "\n", "\r\n", "\r"];
const LINES: &[&str] = &[
    "",
    "   ",
    "# a comment",
    "  ; an indented comment",
    "    more of the value",
    "\tmore",
    "        [server] more",
    "host = 10.9.9.9",
    "Port: 6543",
    "  host=10.8.8.8",
    "HOST  :  h",
    "name = inmanta",
    "password =",
    "[database]",
    "[ database ]",
    "  [database]",
    "[database] ; comment",
    "[server]",
    "  [server]",
    "[DEFAULT]",
    "[]",
    "no delimiter here",
    "= no key",
];
const HEADERS: &[&str] = &[
    "[ database ]",
    "[database]   ",
    "[database] ; pgwarden's",
    "  [database]",
    "\t[database]",
    "[database]]",
    "[database]x",
    "[Database]",
];

/// One to five line-level edits of `text`.
fn mutate(rng: &mut Rng, text: &str) -> String {
    let mut lines = split(text);
    for _ in 0..=rng.below(5) {
        let n = lines.len();
        let at = rng.below(n);
        let ending = || "\n".to_owned();
        match rng.below(12) {
            0 | 1 if n > 0 => {
                let indent = pick(rng, INDENTS);
                lines[at].0.insert_str(0, indent);
            }
            2 if n > 0 => {
                let body = &mut lines[at].0;
                *body = body.trim_start().to_owned();
            }
            3 | 4 => {
                let line = pick(rng, LINES).to_owned();
                let ending = ENDINGS[rng.below(ENDINGS.len())].to_owned();
                lines.insert(rng.below(n + 1), (line, ending));
            }
            5 if n > 0 => {
                let body = &mut lines[at].0;
                if let Some(d) = body.find(['=', ':']) {
                    let other = if body[d..].starts_with('=') { ":" } else { "=" };
                    let spaced = [other, " = ", ":", "  :  ", "="][rng.below(5)];
                    body.replace_range(d..d + 1, spaced);
                }
            }
            6 if n > 0 => lines[at].1 = pick(rng, ENDINGS).to_owned(),
            7 => {
                // One ending for the whole file, the last line without one
                // now and then.
                let e = pick(rng, ENDINGS);
                for l in &mut lines {
                    l.1 = e.to_owned();
                }
                if rng.below(3) == 0 {
                    if let Some(l) = lines.last_mut() {
                        l.1.clear();
                    }
                }
            }
            8 => {
                if let Some(l) = lines.iter_mut().find(|l| l.0.trim() == "[database]") {
                    l.0 = pick(rng, HEADERS).to_owned();
                }
            }
            9 if n > 0 => {
                let copy = lines[at].clone();
                lines.insert(rng.below(n + 1), copy);
            }
            10 if n > 0 => {
                lines.remove(at);
            }
            11 if n > 0 => {
                let body = &mut lines[at].0;
                for (from, to) in [("host", "Host"), ("port", "PORT"), ("name", "NAME")] {
                    *body = body.replacen(from, to, 1);
                }
            }
            _ => lines.push((pick(rng, LINES).to_owned(), ending())),
        }
    }
    lines.into_iter().map(|(b, e)| b + &e).collect()
}

/// The seeds' INI texts (up to a NUL: what follows is the fuzz target's
/// section and updates).
fn seeds() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/ini_rewriter");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
        })
        .collect();
    paths.sort();
    assert!(paths.len() >= 3, "seeds in {}", dir.display());
    paths
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).unwrap();
            let text = bytes.split(|&b| b == 0).next().unwrap_or_default();
            String::from_utf8(text.to_vec()).expect("a UTF-8 seed")
        })
        .collect()
}

/// Python's readings of `texts` (None stays None), from one process.
fn configparser_readings(texts: &[Option<&str>]) -> Vec<Value> {
    let python = util::tool("python3", "python3");
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.json"), dir.path().join("out.json"));
    std::fs::write(&input, serde_json::to_vec(texts).unwrap()).unwrap();
    let run = Command::new(&python)
        .arg("-c")
        .arg(PARSE)
        .arg(&input)
        .arg(&output)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    assert!(
        run.status.success(),
        "{} failed: {}",
        python.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    let version = Command::new(&python).arg("--version").output().unwrap();
    println!(
        "{} ({})",
        python.display(),
        String::from_utf8_lossy(&version.stdout).trim()
    );
    let readings: Vec<Value> = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    assert_eq!(readings.len(), texts.len());
    readings
}

/// The sections of a reading, as (section, key, value) triples in order.
fn entries(reading: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (s, keys) in reading["sections"].as_object().unwrap() {
        for (k, v) in keys.as_object().unwrap() {
            out.push((s.clone(), k.clone(), v.as_str().unwrap().to_owned()));
        }
    }
    out
}

#[test]
fn configparser_reads_every_rewrite_as_intended() {
    let started = Instant::now();
    let mut inputs: Vec<String> = seeds();
    inputs.extend(WRITTEN.iter().map(|t| t.to_string()));
    let mut rng = Rng(0x1a1_c0f1_6a25_e500);
    let bases = inputs.clone();
    for _ in 0..MUTATIONS {
        let base = &bases[rng.below(bases.len())];
        let once = mutate(&mut rng, base);
        // Some twice mutated, for combinations.
        let text = if rng.below(4) == 0 {
            mutate(&mut rng, &once)
        } else {
            once
        };
        inputs.push(text);
    }

    // `set` must not panic on any of them, loadable or not.
    let outputs: Vec<Result<String, ini::IniError>> = inputs
        .iter()
        .map(|t| ini::set(t, "database", &NEW))
        .collect();
    let mut texts: Vec<Option<&str>> = Vec::new();
    for (i, o) in inputs.iter().zip(&outputs) {
        texts.push(Some(i));
        texts.push(o.as_ref().ok().map(String::as_str));
    }
    let readings = configparser_readings(&texts);

    let mut failures = Vec::new();
    let (mut accepted, mut missing_section) = (0, 0);
    let mut rejected: std::collections::BTreeMap<String, usize> = Default::default();
    for (n, (input, output)) in inputs.iter().zip(&outputs).enumerate() {
        let (before, after) = (&readings[2 * n], &readings[2 * n + 1]);
        if let Some(e) = before["error"].as_str() {
            *rejected.entry(e.to_owned()).or_default() += 1;
            continue;
        }
        accepted += 1;
        let mut problems = Vec::new();
        // ini::get reads what Python reads, in every section.
        for (s, k, v) in entries(before) {
            if ini::get(input, &s, &k).as_deref() != Some(v.as_str()) {
                problems.push(format!(
                    "get [{s}] {k}: {:?}, Python {v:?}",
                    ini::get(input, &s, &k)
                ));
            }
        }
        for (k, _) in NEW {
            let python = before["sections"]["database"][k].as_str();
            if ini::get(input, "database", k).as_deref() != python {
                problems.push(format!("get [database] {k}: Python {python:?}"));
            }
        }
        let has_database = before["sections"].get("database").is_some();
        match (output, has_database) {
            (Err(ini::IniError::MissingSection { .. }), false) => missing_section += 1,
            (Err(e), _) => problems.push(format!("set refused: {e}")),
            (Ok(_), false) => problems.push("set succeeded without [database]".into()),
            (Ok(_), true) if after.get("error").is_some() => {
                problems.push(format!("Python refuses the output: {}", after["error"]))
            }
            (Ok(out), true) => {
                for (k, v) in NEW {
                    let got = &after["sections"]["database"][k];
                    if got != v {
                        problems.push(format!("output [database] {k} = {got}"));
                    }
                }
                let others = |r: &Value| {
                    let mut e = entries(r);
                    e.retain(|(s, k, _)| !(s == "database" && (k == "host" || k == "port")));
                    e
                };
                let sections = |r: &Value| {
                    let mut s: Vec<String> =
                        r["sections"].as_object().unwrap().keys().cloned().collect();
                    s.sort();
                    s
                };
                if others(before) != others(after) || sections(before) != sections(after) {
                    problems.push(format!(
                        "Python reads the rest differently: {} then {}",
                        before["sections"], after["sections"]
                    ));
                }
                for (s, k, v) in entries(after) {
                    if ini::get(out, &s, &k).as_deref() != Some(v.as_str()) {
                        problems.push(format!("get [{s}] {k} in the output, Python {v:?}"));
                    }
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "case {n}: {}\n   in: {input:?}\n  out: {:?}",
                problems.join("; "),
                output
            ));
        }
    }

    println!(
        "{} files in {:.1?}: Python loads {accepted} ({missing_section} without [database], \
         refused by set as it should) and refuses {} ({rejected:?})",
        inputs.len(),
        started.elapsed(),
        inputs.len() - accepted,
    );
    assert!(
        failures.is_empty(),
        "{} of {accepted} loadable files went wrong, the first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
    // Too few loadable files would prove little.
    assert!(
        accepted * 3 > inputs.len(),
        "only {accepted} loadable files"
    );
}
