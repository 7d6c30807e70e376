//! JUnit XML for CI (`--junit FILE`), as GitLab, Jenkins and GitHub's test reporters read it.
//!
//! One test case per thing judged, a failure carrying its reason:
//! - `lab` / `run`: one case per scenario (class `zrlab.scenario`); a failed scenario's message
//!   is its reason and its text the failed checks; a skipped one is skipped with the missing
//!   feature; a scenario that passed but had a check that could not be judged (a capacity figure
//!   under `--capacity report`) is skipped with "not judged: ...", never a pass;
//! - `replay` and `replay offline`: one case per judged flow ("stays on one real" / "on one
//!   backend"), and one case for the replay itself, which fails when it has nothing to judge or
//!   lost frames.

use std::path::Path;

use anyhow::{Context as _, Result};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use zrlab_replay::{lab::LabReplay, offline::Offline};
use zrlab_scenario::{ScenarioVerdict, report::Report as LabReport};

/// The scenarios of a lab run.
pub(crate) fn lab(report: &LabReport) -> Report {
    let mut suite = TestSuite::new("zrlab lab");
    for s in &report.scenarios {
        let checks: Vec<String> = s
            .checks
            .iter()
            .map(|c| {
                let mark = match (c.judged, c.ok) {
                    (true, true) => "ok",
                    (false, true) => "not judged",
                    (_, false) => "FAILED",
                };
                format!("{} {}: {} ({mark})", c.variant, c.expect, c.actual)
            })
            .collect();
        let unjudged: Vec<&str> = s.checks.iter().filter(|c| !c.judged).map(|c| c.expect.as_str()).collect();
        let status = match s.verdict {
            ScenarioVerdict::Fail => {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                let failed: Vec<&String> = checks.iter().filter(|c| c.ends_with("(FAILED)")).collect();
                status
                    .set_message(s.reason.clone())
                    .set_description(failed.iter().map(|c| c.as_str()).collect::<Vec<_>>().join("\n"));
                status
            }
            ScenarioVerdict::Skip => {
                let mut status = TestCaseStatus::skipped();
                status.set_message(s.reason.clone());
                status
            }
            ScenarioVerdict::Pass if !unjudged.is_empty() => {
                let mut status = TestCaseStatus::skipped();
                status.set_message(format!("not judged: {}", unjudged.join("; ")));
                status
            }
            ScenarioVerdict::Pass => TestCaseStatus::success(),
        };
        let mut case = TestCase::new(s.name.clone(), status);
        case.set_classname("zrlab.scenario").set_system_out(checks.join("\n"));
        suite.add_test_case(case);
    }
    let mut out = Report::new("zrlab");
    out.add_test_suite(suite);
    out
}

/// An offline replay of `trace`.
pub(crate) fn replay_offline(trace: &Path, replay: &Offline) -> Report {
    let flows = replay.flows.iter().filter(|f| f.to_vip && !f.reals.is_empty()).map(|flow| {
        let reals: Vec<String> = flow.reals.iter().map(ToString::to_string).collect();
        let split =
            flow.split().then(|| format!("split between reals {} at frames {:?}", reals.join(" then "), flow.moved_at));
        (format!("{} stays on one real", flow.flow), split)
    });
    replay_report(
        format!("zrlab replay offline {}", trace.display()),
        "zrlab.replay.offline",
        replay.not_judged(),
        flows,
    )
}

/// A lab replay.
pub(crate) fn replay_lab(replay: &LabReplay) -> Report {
    let flows = replay.flows.iter().map(|flow| {
        let reals: Vec<String> = flow.reals.iter().map(ToString::to_string).collect();
        let split = flow.split.then(|| {
            format!(
                "split: reals {}, backends {}, sockets {}",
                reals.join(" then "),
                flow.backends.join(" then "),
                flow.sockets.join(" then ")
            )
        });
        (format!("{} on one backend", flow.flow), split)
    });
    replay_report(format!("zrlab replay {}", replay.trace), "zrlab.replay.lab", replay.not_judged(), flows)
}

/// A replay's suite: the case for the replay itself, then one per flow (`name`, and why it
/// failed if it did).
fn replay_report(
    suite: String,
    classname: &str,
    not_judged: Option<String>,
    flows: impl Iterator<Item = (String, Option<String>)>,
) -> Report {
    let mut suite = TestSuite::new(suite);
    suite.add_test_case(judged_case(not_judged));
    for (name, split) in flows {
        let mut case = TestCase::new(name, split.map_or_else(TestCaseStatus::success, failure));
        case.set_classname(classname);
        suite.add_test_case(case);
    }
    let mut out = Report::new("zrlab");
    out.add_test_suite(suite);
    out
}

/// The case that says whether the replay had anything to judge.
fn judged_case(not_judged: Option<String>) -> TestCase {
    let status = match not_judged {
        Some(why) => failure(why),
        None => TestCaseStatus::success(),
    };
    let mut case = TestCase::new("the replay has flows to judge and lost no frame", status);
    case.set_classname("zrlab.replay");
    case
}

fn failure(message: String) -> TestCaseStatus {
    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
    status.set_message(message);
    status
}

/// Writes `report` to `path`.
pub(crate) fn write(path: &Path, report: &Report) -> Result<()> {
    let xml = report.to_string().context("serialising the JUnit report")?;
    std::fs::write(path, xml).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use zrlab_scenario::report::{CheckReport, ScenarioReport};

    use super::*;

    fn scenario(name: &str, verdict: ScenarioVerdict, reason: &str, checks: Vec<CheckReport>) -> ScenarioReport {
        ScenarioReport {
            name: name.into(),
            verdict,
            reason: reason.into(),
            flows: 400,
            resets: 0,
            misroutes: 0,
            drops: 0,
            control: None,
            setup_ms: 0,
            teardown_ms: 0,
            phases_ms: Vec::new(),
            checks,
            anomalies: Vec::new(),
            losses: Vec::new(),
            lb: None,
            tpr: None,
            ecmp_reproducible: true,
            release: None,
            deaths: None,
            lost_to_dying: 0,
            impair: None,
            learned_mss: Default::default(),
            timelines: Vec::new(),
        }
    }

    fn child<'a, 'input>(case: &roxmltree::Node<'a, 'input>, tag: &str) -> Option<roxmltree::Node<'a, 'input>> {
        case.children().find(|n| n.has_tag_name(tag))
    }

    fn check(expect: &str, actual: u64, ok: bool, judged: bool) -> CheckReport {
        CheckReport { variant: "main", expect: expect.into(), actual, ok, judged }
    }

    /// The XML, read back by a JUnit parser of its own (roxmltree, not the writer): one case
    /// per scenario, the failure with its reason, the skip with the missing feature, and a
    /// pass with a check it could not judge as skipped, never as a pass.
    #[test]
    fn a_lab_run_reads_back_as_one_case_per_scenario() {
        let report = LabReport {
            kernel: "6.18".into(),
            time_scale: 1,
            scenarios: vec![
                scenario("lb-basic", ScenarioVerdict::Pass, "", vec![check("resets == 0", 0, true, true)]),
                scenario(
                    "release-takeover",
                    ScenarioVerdict::Fail,
                    "main: expected max_reply_gap_ms <= 200 but got 412",
                    vec![check("max_reply_gap_ms <= 200", 412, false, true)],
                ),
                scenario("release-sk-lookup", ScenarioVerdict::Skip, "needs sk-lookup (5.9+)", Vec::new()),
                scenario(
                    "release-reuseport-bpf",
                    ScenarioVerdict::Pass,
                    "",
                    vec![check("capacity_dip_pct <= 10 (not judged: --capacity report; held: true)", 3, true, false)],
                ),
            ],
        };
        let xml = lab(&report).to_string().expect("serialise");
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let suite = doc.descendants().find(|n| n.has_tag_name("testsuite")).expect("a suite");
        assert_eq!(suite.attribute("tests"), Some("4"));
        assert_eq!(suite.attribute("failures"), Some("1"));
        let cases: Vec<_> = suite.children().filter(|n| n.has_tag_name("testcase")).collect();
        assert_eq!(cases.iter().filter(|c| child(c, "skipped").is_some()).count(), 2, "skipped cases");
        assert_eq!(cases[0].attribute("name"), Some("lb-basic"));
        assert!(child(&cases[0], "failure").is_none() && child(&cases[0], "skipped").is_none());
        let failed = child(&cases[1], "failure").expect("a failure");
        assert_eq!(failed.attribute("message"), Some("main: expected max_reply_gap_ms <= 200 but got 412"));
        assert!(failed.text().unwrap_or_default().contains("max_reply_gap_ms <= 200: 412 (FAILED)"));
        assert_eq!(child(&cases[2], "skipped").and_then(|n| n.attribute("message")), Some("needs sk-lookup (5.9+)"));
        let unjudged = child(&cases[3], "skipped").and_then(|n| n.attribute("message")).expect("skipped");
        assert!(unjudged.starts_with("not judged: capacity_dip_pct"), "{unjudged}");
    }
}
