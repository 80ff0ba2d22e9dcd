//! The docs that name code stay true to it: docs/configuration.md against
//! `flashsale --help` (the same flags, each with the same environment
//! variable and default, in both directions: a knob added to the code without
//! a row in the table, or a row left behind when a knob goes, fails here), and
//! every test docs/guarantees.md cites exists.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// What one knob says about itself: its environment variable and its default
/// (`None` when it has none, e.g. `--cores`, whose default is computed).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Knob {
    env: String,
    default: Option<String>,
}

/// The knobs `flashsale --help` lists, by flag (`--listen`).
fn knobs_in_help() -> BTreeMap<String, Knob> {
    // A clean environment: clap prints an environment variable's current
    // value next to its name, and a set variable must not change the test.
    let out = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .arg("--help")
        .env_clear()
        .env("COLUMNS", "200")
        .output()
        .expect("run flashsale --help");
    assert!(out.status.success(), "flashsale --help failed: {out:?}");
    let help = String::from_utf8(out.stdout).expect("help is UTF-8");

    let mut knobs = BTreeMap::new();
    let mut current: Option<(String, Option<String>, Option<String>)> = None;
    let mut finish = |knob: Option<(String, Option<String>, Option<String>)>| {
        if let Some((flag, env, default)) = knob {
            let env = env.unwrap_or_else(|| panic!("{flag} has no [env: ...] in --help"));
            knobs.insert(flag, Knob { env, default });
        }
    };
    for line in help.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed
            .strip_prefix("--")
            .filter(|_| line.starts_with("  "))
        {
            finish(current.take());
            let flag = rest.split([' ', '=']).next().unwrap_or(rest);
            if flag != "help" && flag != "version" {
                current = Some((format!("--{flag}"), None, None));
            }
        } else if trimmed.starts_with("-h, --help") || trimmed.starts_with("-V, --version") {
            finish(current.take());
        } else if let Some((_, env, default)) = current.as_mut() {
            if let Some(rest) = trimmed.strip_prefix("[env: ") {
                *env = Some(rest.split('=').next().unwrap_or(rest).to_string());
            } else if let Some(rest) = trimmed.strip_prefix("[default: ") {
                *default = Some(rest.trim_end_matches(']').to_string());
            }
        }
    }
    finish(current.take());
    assert!(!knobs.is_empty(), "no flags found in --help:\n{help}");
    knobs
}

/// The knobs docs/configuration.md's table lists, by flag. A default cell
/// that starts with a backticked value is that value; anything else (prose
/// such as "every core") stands for no fixed default.
fn knobs_in_docs() -> BTreeMap<String, Knob> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let text = std::fs::read_to_string(&path).expect("read docs/configuration.md");
    let mut knobs = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() < 4 || !cells[1].starts_with("`--") {
            continue;
        }
        let unquote = |cell: &str| -> Option<String> {
            let rest = cell.strip_prefix('`')?;
            Some(rest[..rest.find('`')?].to_string())
        };
        let env = unquote(cells[0]).unwrap_or_else(|| panic!("no variable in row: {line}"));
        let flag = unquote(cells[1]).unwrap_or_else(|| panic!("no flag in row: {line}"));
        let knob = Knob {
            env,
            default: unquote(cells[2]),
        };
        assert!(
            knobs.insert(flag.clone(), knob).is_none(),
            "{flag} has two rows in docs/configuration.md"
        );
    }
    knobs
}

#[test]
fn configuration_table_matches_help() {
    let help = knobs_in_help();
    let docs = knobs_in_docs();
    let mut problems = Vec::new();
    for (flag, knob) in &help {
        match docs.get(flag) {
            None => problems.push(format!(
                "{flag} ({}) is in --help but has no row in docs/configuration.md",
                knob.env
            )),
            Some(row) if row != knob => problems.push(format!(
                "{flag}: --help says {knob:?}, docs/configuration.md says {row:?}"
            )),
            Some(_) => {}
        }
    }
    for (flag, row) in &docs {
        if !help.contains_key(flag) {
            problems.push(format!(
                "{flag} ({}) has a row in docs/configuration.md but is not in --help",
                row.env
            ));
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Every `file::test_name` in docs/guarantees.md names a test in `tests/file.rs`.
#[test]
fn guarantees_cite_tests_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/guarantees.md")).expect("read guarantees");
    let mut cited = 0;
    let mut missing = Vec::new();
    for quoted in text.split('`').skip(1).step_by(2) {
        let Some((file, name)) = quoted.split_once("::") else {
            continue;
        };
        if file.is_empty()
            || name.is_empty()
            || !(file.bytes().chain(name.bytes()))
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            continue;
        }
        cited += 1;
        let source = std::fs::read_to_string(root.join("tests").join(format!("{file}.rs")))
            .unwrap_or_default();
        if !source.contains(&format!("#[test]\nfn {name}()")) {
            missing.push(quoted.to_string());
        }
    }
    assert!(cited > 10, "docs/guarantees.md cites only {cited} tests");
    assert!(
        missing.is_empty(),
        "docs/guarantees.md cites tests that do not exist: {missing:?}"
    );
}
