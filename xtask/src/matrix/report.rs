//! The matrix report: kernel x (feature, suite, scenario) cells, printed as a table and written
//! to `target/matrix/report.json` and `report.md`.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// What one cell says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Outcome {
    /// Ran and met its expectations (or the feature is present, as the table says).
    Pass,
    /// Not run, or not compared, for a named reason (a missing feature).
    Skip,
    /// A finding the row expects on this kernel (the 443 bind regression before 6.1).
    ExpectedFinding,
    /// A scenario whose judged expectations held but one of which could not be judged (a
    /// capacity figure under `--capacity report`): shown as such, never as a pass.
    NotJudged,
    /// Anything unexpected.
    Fail,
}

impl Outcome {
    fn short(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Skip => "skip",
            Self::ExpectedFinding => "finding",
            Self::NotJudged => "not judged",
            Self::Fail => "FAIL",
        }
    }
}

/// One cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Cell {
    /// `feature:NAME`, `suite:NAME`, `scenario:NAME` or `boot`.
    pub(crate) row: String,
    /// The outcome.
    pub(crate) result: Outcome,
    /// Why, in a line.
    pub(crate) detail: String,
    /// Wall-clock seconds of the row's step (absent for the feature rows, which share one step,
    /// and for rows that did not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) secs: Option<f64>,
}

impl Cell {
    pub(crate) fn new(row: impl Into<String>, result: Outcome, detail: impl Into<String>) -> Self {
        Self { row: row.into(), result, detail: detail.into(), secs: None }
    }

    /// The cell with its step's wall time.
    pub(crate) fn timed(self, secs: f64) -> Self {
        Self { secs: Some(secs), ..self }
    }

    /// ` (12.3 s)` when timed, else nothing.
    fn time(&self) -> String {
        self.secs.map(|s| format!(" ({s:.1} s)")).unwrap_or_default()
    }
}

/// How many of a kernel's slowest rows the console table names.
const SLOWEST_ROWS: usize = 5;

/// One kernel's column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Kernel {
    /// `host` or the series (`6.1`).
    pub(crate) series: String,
    /// `uname -r` (or the Debian release when the guest did not get that far).
    pub(crate) release: String,
    /// `native`, `tcg` or `kvm`.
    pub(crate) accel: String,
    /// The cells, features first.
    pub(crate) cells: Vec<Cell>,
    /// Seconds from QEMU's start to the init's first step (VM kernels).
    pub(crate) boot_s: Option<f64>,
    /// Seconds for the whole kernel, download and build excluded.
    pub(crate) wall_s: f64,
}

/// The whole matrix.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Report {
    /// One entry per kernel, host first.
    pub(crate) kernels: Vec<Kernel>,
}

impl Report {
    /// Whether every cell is as expected (no `fail`).
    pub(crate) fn ok(&self) -> bool {
        self.unexpected() == 0
    }

    /// Number of `fail` cells.
    pub(crate) fn unexpected(&self) -> usize {
        self.kernels.iter().flat_map(|k| &k.cells).filter(|c| c.result == Outcome::Fail).count()
    }

    /// Row names in first-seen order, `boot` first.
    fn rows(&self) -> Vec<&str> {
        let mut rows: Vec<&str> = vec![];
        if self.kernels.iter().flat_map(|k| &k.cells).any(|c| c.row == "boot") {
            rows.push("boot");
        }
        for cell in self.kernels.iter().flat_map(|k| &k.cells) {
            if !rows.contains(&cell.row.as_str()) {
                rows.push(&cell.row);
            }
        }
        rows
    }

    fn cell(&self, kernel: &Kernel, row: &str) -> Option<Outcome> {
        kernel.cells.iter().find(|c| c.row == row).map(|c| c.result)
    }

    /// Column label: the series, `host 6.18` for the host.
    fn label(kernel: &Kernel) -> String {
        if kernel.series == "host" {
            let series = crate::matrix::config::parse_series(&kernel.release)
                .map(|(a, b)| format!("{a}.{b}"))
                .unwrap_or_default();
            format!("host {series}")
        } else {
            kernel.series.clone()
        }
    }

    /// The fixed-width table, then the kernels' releases and every cell that is not a pass.
    pub(crate) fn table(&self) -> String {
        let rows = self.rows();
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(3).max(3) + 2;
        let labels: Vec<String> = self.kernels.iter().map(Self::label).collect();
        let col = labels.iter().map(|l| l.len()).max().unwrap_or(0).max(7) + 2;
        let mut out = format!("{:<width$}", "row");
        for label in &labels {
            out.push_str(&format!("{label:<col$}"));
        }
        out = out.trim_end().to_owned();
        out.push('\n');
        for row in &rows {
            let mut line = format!("{row:<width$}");
            for kernel in &self.kernels {
                let text = self.cell(kernel, row).map_or("-", Outcome::short);
                line.push_str(&format!("{text:<col$}"));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out.push('\n');
        for (kernel, label) in self.kernels.iter().zip(&labels) {
            let boot = kernel.boot_s.map(|b| format!(", boot {b:.0} s")).unwrap_or_default();
            out.push_str(&format!("{label}: {} ({}){boot}, {:.0} s\n", kernel.release, kernel.accel, kernel.wall_s));
            let mut timed: Vec<&Cell> = kernel.cells.iter().filter(|c| c.secs.is_some()).collect();
            timed.sort_by(|a, b| b.secs.partial_cmp(&a.secs).unwrap_or(std::cmp::Ordering::Equal));
            if !timed.is_empty() {
                let slowest: Vec<String> = timed
                    .iter()
                    .take(SLOWEST_ROWS)
                    .map(|c| format!("{} {:.0} s", c.row, c.secs.unwrap_or(0.0)))
                    .collect();
                out.push_str(&format!("  slowest rows: {}\n", slowest.join(", ")));
            }
        }
        let notes: Vec<String> = self
            .kernels
            .iter()
            .zip(&labels)
            .flat_map(|(kernel, label)| {
                kernel
                    .cells
                    .iter()
                    .filter(|c| c.result != Outcome::Pass)
                    .map(move |c| format!("{label} {} {}{}: {}", c.row, c.result.short(), c.time(), c.detail))
            })
            .collect();
        if !notes.is_empty() {
            out.push('\n');
            for note in notes {
                out.push_str(&note);
                out.push('\n');
            }
        }
        out
    }

    /// The Markdown version: the table, then every cell's detail per kernel.
    pub(crate) fn markdown(&self) -> String {
        let rows = self.rows();
        let labels: Vec<String> = self.kernels.iter().map(Self::label).collect();
        let mut out = String::from("# Kernel matrix\n\n| row |");
        for label in &labels {
            out.push_str(&format!(" {label} |"));
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(labels.len()));
        out.push('\n');
        for row in &rows {
            out.push_str(&format!("| `{row}` |"));
            for kernel in &self.kernels {
                let text = self.cell(kernel, row).map_or("-", Outcome::short);
                out.push_str(&format!(" {text} |"));
            }
            out.push('\n');
        }
        for (kernel, label) in self.kernels.iter().zip(&labels) {
            let boot = kernel.boot_s.map(|b| format!(", boot {b:.0} s")).unwrap_or_default();
            out.push_str(&format!(
                "\n## {label}: {} ({}){boot}, {:.0} s\n\n",
                kernel.release, kernel.accel, kernel.wall_s
            ));
            for cell in &kernel.cells {
                out.push_str(&format!(
                    "- `{}`: {}{}: {}\n",
                    cell.row,
                    cell.result.short(),
                    cell.time(),
                    cell.detail.replace('|', "\\|")
                ));
            }
        }
        out
    }

    /// The matrix as JUnit XML (`--junit`): one suite per kernel, one case per cell; a cell
    /// that is not a pass is a failure (`FAIL`) or skipped with its reason (a missing feature,
    /// "not judged"); an expected finding passes and says what was found.
    pub(crate) fn junit(&self) -> quick_junit::Report {
        use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
        let mut out = quick_junit::Report::new("cargo xtask matrix");
        for kernel in &self.kernels {
            let mut suite = TestSuite::new(format!("kernel {} ({}, {})", kernel.series, kernel.release, kernel.accel));
            for cell in &kernel.cells {
                let status = match cell.result {
                    Outcome::Pass | Outcome::ExpectedFinding => TestCaseStatus::success(),
                    Outcome::Skip | Outcome::NotJudged => {
                        let mut status = TestCaseStatus::skipped();
                        status.set_message(format!("{}: {}", cell.result.short(), cell.detail));
                        status
                    }
                    Outcome::Fail => {
                        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                        status.set_message(cell.detail.clone());
                        status
                    }
                };
                let mut case = TestCase::new(cell.row.clone(), status);
                case.set_classname(format!("matrix.{}", kernel.series)).set_system_out(cell.detail.clone());
                if let Some(secs) = cell.secs {
                    case.set_time(std::time::Duration::from_secs_f64(secs));
                }
                suite.add_test_case(case);
            }
            out.add_test_suite(suite);
        }
        out
    }

    /// Writes `report.json` and `report.md` into `dir`.
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = dir.join("report.json");
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", json.display()))?;
        let md = dir.join("report.md");
        std::fs::write(&md, self.markdown()).with_context(|| format!("writing {}", md.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let cell = Cell::new;
        Report {
            kernels: vec![
                Kernel {
                    series: "host".into(),
                    release: "6.18.44-fc".into(),
                    accel: "native".into(),
                    cells: vec![
                        cell("feature:select-or-migrate", Outcome::Pass, "present (table: 5.14+)"),
                        cell("suite:port443-scaling", Outcome::Pass, "1 passed"),
                    ],
                    boot_s: None,
                    wall_s: 21.4,
                },
                Kernel {
                    series: "5.10".into(),
                    release: "5.10.0-46-amd64".into(),
                    accel: "tcg".into(),
                    cells: vec![
                        cell("boot", Outcome::Pass, "init reached in 9.8 s"),
                        cell("feature:select-or-migrate", Outcome::Skip, "absent (table: 5.14+)"),
                        cell(
                            "suite:port443-scaling",
                            Outcome::ExpectedFinding,
                            "EXPECTED FINDING: the 443 bind regression is present on (5, 10)",
                        ),
                    ],
                    boot_s: Some(9.8),
                    wall_s: 95.2,
                },
                Kernel {
                    series: "7.3".into(),
                    release: "7.3.4+deb13-amd64".into(),
                    accel: "tcg".into(),
                    cells: vec![cell("boot", Outcome::Fail, "guest did not finish | hung")],
                    boot_s: None,
                    wall_s: 900.0,
                },
            ],
        }
    }

    #[test]
    fn table() {
        insta::assert_snapshot!(sample().table());
    }

    #[test]
    fn markdown() {
        insta::assert_snapshot!(sample().markdown());
    }

    /// The JUnit XML, read back by a parser of its own: a suite per kernel, the FAIL cell a
    /// failure with its detail, the skip skipped with its reason, the expected finding a pass.
    #[test]
    fn junit_reads_back_one_case_per_cell() {
        let xml = sample().junit().to_string().expect("serialise");
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let suites: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("testsuite")).collect();
        assert_eq!(suites.len(), 3);
        let case = |suite: usize, row: &str| {
            suites[suite]
                .children()
                .find(|n| n.has_tag_name("testcase") && n.attribute("name") == Some(row))
                .expect(row)
        };
        fn has<'a, 'i>(node: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
            node.children().find(|n| n.has_tag_name(tag))
        }
        assert!(has(case(0, "suite:port443-scaling"), "failure").is_none());
        let skipped = has(case(1, "feature:select-or-migrate"), "skipped").expect("skipped");
        assert_eq!(skipped.attribute("message"), Some("skip: absent (table: 5.14+)"));
        assert!(has(case(1, "suite:port443-scaling"), "failure").is_none(), "an expected finding passes");
        let failure = has(case(2, "boot"), "failure").expect("a failure");
        assert_eq!(failure.attribute("message"), Some("guest did not finish | hung"));
    }

    #[test]
    fn json_shape_and_verdict() {
        let report = sample();
        assert!(!report.ok());
        assert_eq!(report.unexpected(), 1);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["kernels"][1]["cells"][2]["result"], "expected-finding");
        assert_eq!(json["kernels"][1]["series"], "5.10");
        assert_eq!(json["kernels"][0]["boot_s"], serde_json::Value::Null);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }
}
