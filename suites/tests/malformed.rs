//! Bad topology and scenario files are answered with an error that names the file and the
//! field. Every file under `fixtures/invalid/` is covered (a new file is picked up without a code
//! change), and the messages are snapshotted so a change in wording is reviewed.

mod common;

use std::path::{Path, PathBuf};

use zrlab_host::toml_file::SpecError;
use zrlab_scenario::Scenario;
use zrlab_topology::Topology;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("fixtures directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// Loads every file of `kind` and renders "file: error" lines, with the fixtures path elided.
fn errors(kind: &str, load: impl Fn(&Path) -> Result<(), SpecError>) -> String {
    let fixtures = common::fixtures();
    let dir = fixtures.join("invalid").join(kind);
    let files = files(&dir);
    assert!(files.len() >= 5, "at least five malformed {kind} files");
    let mut out = String::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let err = load(&file).expect_err(&format!("{name} must be rejected"));
        // The error names a file (this one, or the topology a scenario points at) and a field.
        assert!(err.file.ends_with(".toml"), "{name}: no file in {err}");
        assert!(!err.field.is_empty(), "{name}: no field in {err}");
        let text = err.to_string().replace(&fixtures.display().to_string(), "<fixtures>");
        out.push_str(&format!("{name}\n    {text}\n"));
    }
    out
}

#[test]
fn malformed_topologies_name_file_and_field() {
    insta::assert_snapshot!(errors("topologies", |path| Topology::load(path).map(drop)));
}

#[test]
fn malformed_scenarios_name_file_and_field() {
    insta::assert_snapshot!(errors("scenarios", |path| Scenario::load(path).map(drop)));
}

#[test]
fn shipped_fixtures_are_valid() {
    let fixtures = common::fixtures();
    for file in files(&fixtures.join("topologies")) {
        Topology::load(&file).unwrap_or_else(|e| panic!("{e}"));
    }
    for file in files(&fixtures.join("scenarios")) {
        Scenario::load(&file).unwrap_or_else(|e| panic!("{e}"));
    }
}
