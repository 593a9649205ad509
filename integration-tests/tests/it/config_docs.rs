//! README's settings table checked against the binaries' own `--help`, so it cannot drift: every
//! variable either binary reads is in the table, under the binaries that read it and with the
//! default their help gives, and the table names nothing they do not read.

use std::collections::{BTreeMap, BTreeSet};

use integration_tests::sibling_binary;

/// A binary's settings from its `--help`: variable → its default, if it has one.
fn settings_of(binary: &str) -> BTreeMap<String, Option<String>> {
    let output = std::process::Command::new(sibling_binary(binary).unwrap())
        .arg("--help")
        // None of the variables set: `[env: NAME=]` shows no value, and the defaults are the
        // binary's own.
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success(), "{binary} --help failed");
    let help = String::from_utf8(output.stdout).unwrap();
    let mut settings = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("[env: ") {
            let name = rest.split('=').next().unwrap().trim_end_matches(']').to_owned();
            settings.insert(name.clone(), None);
            current = Some(name);
        } else if let Some(rest) = line.strip_prefix("[default: ") {
            let name = current.take().expect("a default follows its variable");
            settings.insert(name, Some(rest.trim_end_matches(']').to_owned()));
        } else if line.starts_with('-') {
            current = None;
        }
    }
    assert!(settings.len() > 10, "{binary} --help lists no settings:\n{help}");
    settings
}

/// A row of README's table: the variables of its first cell, the backquoted values of its
/// second, and who reads them.
struct Row {
    names: Vec<String>,
    defaults: Vec<String>,
    used_by: String,
}

fn readme_rows() -> Vec<Row> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("\n## Configuration").nth(1).expect("README has a Configuration section");
    let section = section.split("\n## ").next().unwrap();
    let quoted =
        |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split(" | ").collect();
            Row { names: quoted(cells[0]), defaults: quoted(cells[1]), used_by: cells[2].trim().to_owned() }
        })
        .collect()
}

#[test]
fn the_readme_lists_every_setting_of_both_binaries() {
    let api = settings_of("md5-api");
    let worker = settings_of("md5-worker");
    let rows = readme_rows();
    let mut listed = BTreeSet::new();
    for row in &rows {
        for (index, name) in row.names.iter().enumerate() {
            listed.insert(name.clone());
            let (in_api, in_worker) = (api.get(name), worker.get(name));
            let expected_by = match (in_api.is_some(), in_worker.is_some()) {
                (true, true) => "both",
                (true, false) => "api",
                (false, true) => "worker",
                // Read by the tracing subscriber's filter, not by clap.
                (false, false) if name == "RUST_LOG" => continue,
                (false, false) => panic!("README lists {name}, which neither binary reads"),
            };
            assert_eq!(row.used_by, expected_by, "README says {name} is used by {}", row.used_by);
            if let Some(Some(default)) = in_api.or(in_worker) {
                assert_eq!(
                    row.defaults.get(index),
                    Some(default),
                    "README's default for {name} is not the binaries' `{default}`"
                );
            }
        }
    }
    for name in api.keys().chain(worker.keys()) {
        assert!(listed.contains(name), "README's settings table does not list {name}");
    }
}
