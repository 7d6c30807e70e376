//! The matrix's data: `ci/kernels.toml` (which kernels) and `ci/matrix.toml` (what runs on
//! each, and what each outcome means). Both are documented in their own headers.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

/// One kernel series of `ci/kernels.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Kernel {
    /// `major.minor`.
    pub(crate) series: String,
    /// Debian suites that publish it.
    pub(crate) suites: Vec<String>,
    /// Part of a plain `cargo xtask matrix`.
    #[serde(default)]
    pub(crate) default: bool,
    /// What to expect.
    #[serde(default)]
    pub(crate) note: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KernelsFile {
    kernel: Vec<Kernel>,
}

/// An expected finding of a row.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Finding {
    /// The output line marker.
    pub(crate) marker: String,
    /// Kernels before this `major.minor` show it; later ones must not.
    pub(crate) before: String,
}

/// One row of `ci/matrix.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Row {
    /// Report row name.
    pub(crate) name: String,
    /// Test binary (`suites/tests/<test>.rs`).
    pub(crate) test: Option<String>,
    /// Scenario file, workspace-relative.
    pub(crate) scenario: Option<String>,
    /// libtest arguments.
    #[serde(default)]
    pub(crate) args: Vec<String>,
    /// Features the row needs.
    #[serde(default)]
    pub(crate) needs: Vec<String>,
    /// Timeout in seconds.
    #[serde(default = "default_timeout")]
    pub(crate) timeout_s: u64,
    /// Test threads (test rows; default 1).
    #[serde(default = "default_threads")]
    pub(crate) threads: u32,
    /// Expected finding.
    pub(crate) finding: Option<Finding>,
}

fn default_timeout() -> u64 {
    300
}

/// One test thread: most rows' tests share kernel state or time things.
fn default_threads() -> u32 {
    1
}

/// `ci/matrix.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Selection {
    /// Environment added inside QEMU guests.
    #[serde(default)]
    pub(crate) vm_env: BTreeMap<String, String>,
    /// The rows.
    pub(crate) row: Vec<Row>,
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Reads `ci/kernels.toml`.
pub(crate) fn kernels(path: &Path) -> Result<Vec<Kernel>> {
    let file: KernelsFile = read_toml(path)?;
    Ok(file.kernel)
}

/// Reads and checks `ci/matrix.toml`.
pub(crate) fn selection(path: &Path) -> Result<Selection> {
    let selection: Selection = read_toml(path)?;
    let mut seen = Vec::new();
    for row in &selection.row {
        if seen.contains(&&row.name) {
            bail!("{}: row {:?} appears twice", path.display(), row.name);
        }
        seen.push(&row.name);
        if row.test.is_some() == row.scenario.is_some() {
            bail!("{}: row {:?} needs exactly one of `test` and `scenario`", path.display(), row.name);
        }
        if row.threads == 0 || (row.scenario.is_some() && row.threads != 1) {
            bail!(
                "{}: row {:?}: `threads = {}`: a test row runs 1 or more, a scenario row 1",
                path.display(),
                row.name,
                row.threads
            );
        }
        if let Some(finding) = &row.finding
            && parse_series(&finding.before).is_none()
        {
            bail!("{}: row {:?}: `before = {:?}` is not major.minor", path.display(), row.name, finding.before);
        }
    }
    Ok(selection)
}

/// `"6.1"` (or a release like `"6.1.0-37-amd64"`) as `(6, 1)`.
pub(crate) fn parse_series(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The kernels `--kernel` names (all defaults when none), or an error naming the unknown one.
pub(crate) fn pick<'a>(all: &'a [Kernel], wanted: &[String]) -> Result<Vec<&'a Kernel>> {
    if wanted.is_empty() {
        return Ok(all.iter().filter(|k| k.default).collect());
    }
    wanted
        .iter()
        .map(|series| {
            all.iter().find(|k| &k.series == series).with_context(|| {
                format!(
                    "unknown kernel series {series:?}: ci/kernels.toml lists {}",
                    all.iter().map(|k| k.series.as_str()).collect::<Vec<_>>().join(", ")
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::workspace_root;

    #[test]
    fn shipped_files_parse() {
        let kernels = kernels(&workspace_root().join("ci/kernels.toml")).unwrap();
        let defaults: Vec<&str> = pick(&kernels, &[]).unwrap().iter().map(|k| k.series.as_str()).collect();
        assert_eq!(defaults, ["5.10", "6.1", "6.12", "7.2", "7.3"]);
        let err = pick(&kernels, &["4.19".into()]).unwrap_err().to_string();
        assert!(err.contains("unknown kernel series \"4.19\""), "{err}");
        let selection = selection(&workspace_root().join("ci/matrix.toml")).unwrap();
        assert!(selection.row.iter().any(|r| r.name == "suite:port443-scaling"));
        assert_eq!(parse_series("6.1.0-37-amd64"), Some((6, 1)));
        let dir = workspace_root().join("target/matrix-config-tests");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, row) in [
            ("no-threads", "test = \"tpr\"\nthreads = 0"),
            ("scenario-threads", "scenario = \"fixtures/scenarios/lb-basic.toml\"\nthreads = 2"),
        ] {
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(&path, format!("[[row]]\nname = \"r\"\n{row}\n")).unwrap();
            let err = super::selection(&path).unwrap_err().to_string();
            assert!(err.contains("row \"r\": `threads = "), "{name}: {err}");
        }
        assert_eq!(parse_series("7"), None);
    }
}
