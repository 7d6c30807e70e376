//! Turns what a kernel's plan left (`results.txt`, step logs, `features.json`, scenario
//! reports) into report cells, by the rules of `ci/matrix.toml`'s header.

use std::path::Path;

use zrlab_guest::runner::{Outcome as StepOutcome, StepResult};

use super::{
    config::{Row, Selection, parse_series},
    plan::{FEATURES_JSON, FEATURES_STEP, scenario_out, step_name},
    report::{Cell, Outcome},
};

/// Every cell of one kernel: the feature probes, then the rows of the selection.
pub(crate) fn cells(
    selection: &Selection,
    out: &Path,
    results: &[StepResult],
    kernel: Option<(u32, u32)>,
) -> Vec<Cell> {
    let mut cells = feature_cells(out, results);
    for row in &selection.row {
        let name = step_name(&row.name);
        let cell = match results.iter().find(|r| r.name == name) {
            None => Cell::new(&row.name, Outcome::Fail, "not run: the kernel's run stopped before this row"),
            Some(result) => row_cell(row, out, result, kernel).timed(result.secs),
        };
        cells.push(cell);
    }
    cells
}

fn log_of(out: &Path, step: &str) -> String {
    std::fs::read_to_string(out.join(format!("{step}.log"))).unwrap_or_default()
}

/// The first lines that explain a failure: panics and their messages, else the last lines.
fn failure_excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let mut picked = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("panicked at") {
            picked.push(line.trim().to_owned());
            if let Some(next) = lines.get(i + 1) {
                picked.push(next.trim().to_owned());
            }
        } else if line.starts_with("zrlab: ") || line.starts_with("Error: ") {
            picked.push(line.trim().to_owned());
        }
        if picked.len() >= 4 {
            break;
        }
    }
    if picked.is_empty() {
        let mut tail: Vec<String> =
            lines.iter().rev().filter(|l| !l.trim().is_empty()).take(3).map(|l| l.trim().to_owned()).collect();
        tail.reverse();
        picked = tail;
    }
    shorten(&picked.join(" / "), 400)
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}...")
    }
}

fn not_ok(row: &str, result: &StepResult, log: &str) -> Cell {
    let why = match &result.outcome {
        StepOutcome::Exit(code) => format!("exit {code}"),
        StepOutcome::Signal(sig) => format!("killed by signal {sig}"),
        StepOutcome::Timeout => format!("timed out after {:.0} s", result.secs),
        StepOutcome::Error(e) => return Cell::new(row, Outcome::Fail, format!("not started: {e}")),
        StepOutcome::Skipped(_) => unreachable!("handled by the callers"),
    };
    Cell::new(row, Outcome::Fail, format!("{why}: {}", failure_excerpt(log)))
}

fn feature_cells(out: &Path, results: &[StepResult]) -> Vec<Cell> {
    let row = "feature:*";
    let Some(result) = results.iter().find(|r| r.name == FEATURES_STEP) else {
        return vec![Cell::new(row, Outcome::Fail, "the probes did not run")];
    };
    let log = log_of(out, FEATURES_STEP);
    if result.outcome != StepOutcome::Exit(0) {
        return vec![not_ok(row, result, &log)];
    }
    let json = std::fs::read_to_string(out.join(FEATURES_JSON)).unwrap_or_default();
    let Ok(serde_json::Value::Array(probes)) = serde_json::from_str(&json) else {
        return vec![Cell::new(row, Outcome::Fail, format!("no readable {FEATURES_JSON}"))];
    };
    probes
        .iter()
        .map(|probe| {
            let name = probe["feature"].as_str().unwrap_or("?");
            let present = probe["present"].as_bool().unwrap_or(false);
            let since = probe["since"].as_str().unwrap_or("?");
            let detail = probe["detail"].as_str().unwrap_or("");
            let table_says = probe["table_says"].as_bool();
            let row = format!("feature:{name}");
            let state = if present { "present" } else { "absent" };
            let text = format!("{state} (table: {since}+); {detail}");
            match table_says {
                Some(expected) if expected != present => Cell::new(
                    row,
                    Outcome::Fail,
                    format!(
                        "probe and version table disagree: probe says {state}, table says {} since {since}; {detail}",
                        if expected { "present" } else { "absent" }
                    ),
                ),
                _ if present => Cell::new(row, Outcome::Pass, text),
                _ => Cell::new(row, Outcome::Skip, text),
            }
        })
        .collect()
}

fn row_cell(row: &Row, out: &Path, result: &StepResult, kernel: Option<(u32, u32)>) -> Cell {
    let name = step_name(&row.name);
    if let StepOutcome::Skipped(missing) = &result.outcome {
        return Cell::new(&row.name, Outcome::Skip, format!("needs {} (absent on this kernel)", missing.join(", ")));
    }
    let log = log_of(out, &name);
    if row.scenario.is_some() {
        return scenario_cell(row, out, result, &log);
    }
    if result.outcome != StepOutcome::Exit(0) {
        return not_ok(&row.name, result, &log);
    }
    if log.contains("running 0 tests") && !log.contains("running 1") {
        return Cell::new(&row.name, Outcome::Fail, "no test matched the row's arguments");
    }
    let summary = log
        .lines()
        .filter_map(|l| l.strip_prefix("test result: ok. "))
        .filter_map(|l| l.split(';').next())
        .next_back()
        .unwrap_or("passed")
        .to_owned();
    if let Some(finding) = &row.finding {
        let marked = log.lines().find(|l| l.contains(&finding.marker));
        let expected = match (kernel, parse_series(&finding.before)) {
            (Some(k), Some(before)) => k < before,
            _ => false,
        };
        match (marked, expected) {
            (Some(line), true) => {
                return Cell::new(&row.name, Outcome::ExpectedFinding, line.trim());
            }
            (Some(line), false) => {
                return Cell::new(
                    &row.name,
                    Outcome::Fail,
                    format!("unexpected finding on a kernel from {} on: {}", finding.before, line.trim()),
                );
            }
            (None, true) => {
                return Cell::new(
                    &row.name,
                    Outcome::Fail,
                    format!("expected finding ({}) missing on a kernel before {}", finding.marker, finding.before),
                );
            }
            (None, false) => {}
        }
    }
    let skipped: Vec<&str> = log.lines().filter_map(|l| l.find("SKIPPED").map(|at| &l[at..])).collect();
    if let Some(first) = skipped.first() {
        let more = if skipped.len() > 1 { format!(" ({} tests skipped alike)", skipped.len()) } else { String::new() };
        return Cell::new(&row.name, Outcome::Skip, format!("{}{more}", shorten(first.trim(), 200)));
    }
    Cell::new(&row.name, Outcome::Pass, summary)
}

fn scenario_cell(row: &Row, out: &Path, result: &StepResult, log: &str) -> Cell {
    let report = std::fs::read_to_string(scenario_out(out, &row.name).join("report.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
    let scenario = report.as_ref().map(|r| &r["scenarios"][0]);
    match (&result.outcome, scenario) {
        (StepOutcome::Exit(0 | 1), Some(s)) => {
            let verdict = s["verdict"].as_str().unwrap_or("?");
            let reason = s["reason"].as_str().unwrap_or("");
            let unjudged: Vec<&str> = s["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["judged"] == false)
                .filter_map(|c| c["expect"].as_str())
                .collect();
            match verdict {
                "pass" if !unjudged.is_empty() => {
                    Cell::new(&row.name, Outcome::NotJudged, format!("passed, but not judged: {}", unjudged.join("; ")))
                }
                "pass" => Cell::new(
                    &row.name,
                    Outcome::Pass,
                    format!(
                        "resets {} misroutes {} drops {}; control resets {} misroutes {}",
                        s["resets"], s["misroutes"], s["drops"], s["control"]["resets"], s["control"]["misroutes"]
                    ),
                ),
                "skip" => Cell::new(&row.name, Outcome::Skip, reason),
                _ => Cell::new(&row.name, Outcome::Fail, format!("{verdict}: {reason}")),
            }
        }
        _ => not_ok(&row.name, result, log),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::config::Finding;

    fn row(name: &str, finding: bool) -> Row {
        Row {
            name: name.into(),
            test: Some("port443".into()),
            scenario: None,
            args: vec![],
            needs: vec![],
            timeout_s: 10,
            threads: 1,
            finding: finding.then(|| Finding { marker: "EXPECTED FINDING".into(), before: "6.1".into() }),
        }
    }

    fn result(name: &str, outcome: StepOutcome) -> StepResult {
        StepResult { name: step_name(name), secs: 1.0, outcome }
    }

    #[test]
    fn rows_become_cells_by_the_rules() {
        let out = std::env::temp_dir().join(format!("zrlab-cells-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).unwrap();
        let write =
            |step: &str, text: &str| std::fs::write(out.join(format!("{}.log", step_name(step))), text).unwrap();
        std::fs::write(
            out.join(FEATURES_JSON),
            r#"[{"feature":"select-or-migrate","present":false,"since":"5.14","table_says":false,"detail":"rejected"},
                {"feature":"bhash2","present":true,"since":"6.1","table_says":false,"detail":"flat"}]"#,
        )
        .unwrap();
        write(FEATURES_STEP, "");
        write(
            "suite:finding",
            "running 1 test\nEXPECTED FINDING: the 443 bind regression is present\ntest result: ok. 1 passed; 0 failed\n",
        );
        write(
            "suite:skips",
            "running 2 tests\nSKIPPED comparison: no recorded outcomes for 5.10\nSKIPPED comparison: again\ntest result: ok. 2 passed; 0 failed\n",
        );
        write("suite:fails", "running 1 test\nthread 'x' panicked at suites/tests/a.rs:1:1:\nboom\n");
        write("suite:none", "running 0 tests\ntest result: ok. 0 passed\n");
        let selection = Selection {
            vm_env: Default::default(),
            row: vec![
                row("suite:finding", true),
                row("suite:skips", false),
                row("suite:fails", false),
                row("suite:needs", false),
                row("suite:none", false),
                row("suite:lost", false),
            ],
        };
        let results = vec![
            StepResult { name: FEATURES_STEP.into(), secs: 1.0, outcome: StepOutcome::Exit(0) },
            result("suite:finding", StepOutcome::Exit(0)),
            result("suite:skips", StepOutcome::Exit(0)),
            result("suite:fails", StepOutcome::Exit(101)),
            result("suite:needs", StepOutcome::Skipped(vec!["sk-lookup".into()])),
            result("suite:none", StepOutcome::Exit(0)),
        ];
        let cells = cells(&selection, &out, &results, Some((5, 10)));
        let got: Vec<(&str, Outcome)> = cells.iter().map(|c| (c.row.as_str(), c.result)).collect();
        assert_eq!(
            got,
            [
                ("feature:select-or-migrate", Outcome::Skip),
                ("feature:bhash2", Outcome::Fail),
                ("suite:finding", Outcome::ExpectedFinding),
                ("suite:skips", Outcome::Skip),
                ("suite:fails", Outcome::Fail),
                ("suite:needs", Outcome::Skip),
                ("suite:none", Outcome::Fail),
                ("suite:lost", Outcome::Fail),
            ]
        );
        assert!(cells[1].detail.contains("disagree"), "{}", cells[1].detail);
        assert!(cells[3].detail.contains("2 tests skipped alike"), "{}", cells[3].detail);
        assert!(cells[4].detail.contains("boom"), "{}", cells[4].detail);
        assert!(cells[5].detail.contains("sk-lookup"), "{}", cells[5].detail);
        // The same finding on 6.1 is unexpected.
        let later = super::cells(&selection, &out, &results, Some((6, 1)));
        assert_eq!(later[2].result, Outcome::Fail);
        std::fs::remove_dir_all(&out).unwrap();
    }
}
