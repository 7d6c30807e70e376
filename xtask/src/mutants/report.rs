//! What a mutation run writes: the per-component table (`report.md`), the same as data
//! (`report.json`), the JUnit cases, and the merge of the reports of several shards.
//!
//! A shard judges every N-th mutant of each component's list, a systematic sample: its score
//! estimates the whole component's, and the report says how well, with the 95% Wilson score
//! interval (a sample of a few dozen mutants is a wide estimate, and the table must not read
//! as the whole score). The interval treats the sample as a simple random one and leaves out
//! the finite-population correction, so it is, if anything, too wide. Merging every shard of a
//! run gives the whole score, exactly, and no interval.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::{COMPONENTS, Judged, Outcome};

/// Which shards of how many a report judged; an unsharded run is shard 1 of 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Shards {
    pub(super) judged: BTreeSet<usize>,
    pub(super) of: usize,
}

impl Shards {
    pub(super) fn whole() -> Self {
        Self { judged: BTreeSet::from([1]), of: 1 }
    }

    fn is_whole(&self) -> bool {
        self.judged.len() == self.of
    }
}

/// A run's results and what they were drawn from.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Run {
    pub(super) wall_seconds: f64,
    pub(super) shards: Shards,
    /// Each component's mutants before the shards split them (after `--file` and `--in-diff`):
    /// what a sample's score estimates.
    pub(super) listed: BTreeMap<String, usize>,
    pub(super) mutants: Vec<Judged>,
}

/// The report in both forms.
pub(super) struct Report {
    pub(super) markdown: String,
    pub(super) json: serde_json::Value,
}

/// Per component: mutants, killed, survived, equivalent, timed out, unviable, and the score
/// (killed and timed out over the judged: buildable, non-equivalent mutants), with its 95%
/// interval when the run is a sample; then every survivor with file:line.
pub(super) fn report(run: &Run) -> Report {
    let sample = !run.shards.is_whole();
    let mut md = String::from("# Mutation score\n\n");
    if sample {
        md.push_str(&format!(
            "A sample: shard(s) {} of {}, each one mutant in {} of each component's list; `of` is \
             the component's size. The interval (95%, Wilson) is where the whole component's \
             score lies.\n\n",
            run.shards.judged.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            run.shards.of,
            run.shards.of
        ));
        md.push_str("| component | of | mutants | killed | survived | equivalent | timed out | unviable | score | 95% interval |\n|---|---|---|---|---|---|---|---|---|---|\n");
    } else {
        md.push_str("| component | mutants | killed | survived | equivalent | timed out | unviable | score |\n|---|---|---|---|---|---|---|---|\n");
    }
    let mut components = BTreeMap::new();
    for name in COMPONENTS.map(|c| c.name) {
        let of: Vec<&Judged> = run.mutants.iter().filter(|r| r.mutant.component == name).collect();
        if of.is_empty() {
            continue;
        }
        let count = |o: Outcome| of.iter().filter(|r| r.outcome == o).count();
        let (killed, survived, timed_out) =
            (count(Outcome::Killed), count(Outcome::Survived), count(Outcome::TimedOut));
        // A timeout is a catch (the mutant hung the code), as cargo-mutants counts it.
        let judged = killed + survived + timed_out;
        let score = (judged > 0).then(|| 100.0 * (killed + timed_out) as f64 / judged as f64);
        let interval = if sample { wilson(killed + timed_out, judged) } else { None };
        let score_text = score.map_or("not judged".to_owned(), |s| format!("{s:.1}%"));
        let counts = format!(
            "{} | {killed} | {survived} | {} | {timed_out} | {}",
            of.len(),
            count(Outcome::Equivalent),
            count(Outcome::Unviable)
        );
        if sample {
            let listed = run.listed.get(name).map_or("?".to_owned(), ToString::to_string);
            let interval_text = interval.map_or("not judged".to_owned(), |(lo, hi)| format!("{lo:.1}-{hi:.1}%"));
            md.push_str(&format!("| {name} | {listed} | {counts} | {score_text} | {interval_text} |\n"));
        } else {
            md.push_str(&format!("| {name} | {counts} | {score_text} |\n"));
        }
        components.insert(
            name,
            serde_json::json!({
                "mutants": of.len(), "killed": killed, "survived": survived, "equivalent": count(Outcome::Equivalent),
                "timed_out": timed_out, "unviable": count(Outcome::Unviable), "score_pct": score,
                "interval_pct": interval.map(|(lo, hi)| [lo, hi]),
            }),
        );
    }
    let minutes = run.wall_seconds / 60.0;
    md.push_str(&format!(
        "\n{} mutant(s) in {:.1} min ({:.2} per minute){}.\n",
        run.mutants.len(),
        minutes,
        if minutes > 0.0 { run.mutants.len() as f64 / minutes } else { 0.0 },
        if run.shards.judged.len() > 1 { ", the shards' times added" } else { "" }
    ));
    let survivors: Vec<&Judged> = run.mutants.iter().filter(|r| r.outcome == Outcome::Survived).collect();
    if !survivors.is_empty() {
        md.push_str("\n## Survivors\n\n");
        for r in &survivors {
            md.push_str(&format!(
                "- {} `{}:{}`: {} (`{}`)\n",
                r.mutant.component, r.mutant.file, r.mutant.line, r.mutant.what, r.mutant.code
            ));
        }
    }
    let mut json = serde_json::to_value(run).expect("a run serialises");
    json["components"] = serde_json::json!(components);
    Report { markdown: md, json }
}

/// The 95% Wilson score interval, in percent, of `caught` of `judged`; none when nothing was
/// judged.
fn wilson(caught: usize, judged: usize) -> Option<(f64, f64)> {
    if judged == 0 {
        return None;
    }
    const Z: f64 = 1.959_963_984_540_054;
    let (n, p) = (judged as f64, caught as f64 / judged as f64);
    let z2 = Z * Z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / (1.0 + z2 / n);
    Some((100.0 * (centre - half).max(0.0), 100.0 * (centre + half).min(1.0)))
}

/// The reports of several shards of one run (`report.json` each) as one: the whole score when
/// every shard is there, a wider sample otherwise. Refuses reports of different mutant lists
/// (another commit or other filters) and a shard given twice.
pub(super) fn merge(paths: &[PathBuf]) -> Result<Run> {
    let mut merged: Option<Run> = None;
    for path in paths {
        let run = read(path)?;
        let Some(into) = &mut merged else {
            merged = Some(run);
            continue;
        };
        if run.shards.of != into.shards.of || run.listed != into.listed {
            bail!(
                "{}: shards of another run (of {} with {:?} listed, not of {} with {:?}): merge the reports of one commit and one selection",
                path.display(),
                run.shards.of,
                run.listed,
                into.shards.of,
                into.listed
            );
        }
        if let Some(twice) = run.shards.judged.intersection(&into.shards.judged).next() {
            bail!("{}: shard {twice} of {} is already in an earlier report", path.display(), run.shards.of);
        }
        into.shards.judged.extend(run.shards.judged);
        into.wall_seconds += run.wall_seconds;
        into.mutants.extend(run.mutants);
    }
    merged.context("--merge: no report given")
}

fn read(path: &Path) -> Result<Run> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let run: Run = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a report.json of cargo xtask mutants", path.display()))?;
    let names = COMPONENTS.map(|c| c.name);
    if let Some(m) = run.mutants.iter().find(|m| !names.contains(&m.mutant.component.as_str())) {
        bail!(
            "{}: mutant {}:{}: component {:?} is not one of {names:?}",
            path.display(),
            m.mutant.file,
            m.mutant.line,
            m.mutant.component
        );
    }
    Ok(run)
}

/// The results as JUnit XML: one suite per component, one case per mutant, named by file, line
/// and mutation. A survivor is a failure (the suites let a fault through); a killed or timed-out
/// mutant passes; an equivalent one is skipped with its reason, an unviable one as "did not
/// build".
pub(super) fn junit(results: &[Judged]) -> quick_junit::Report {
    use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
    let mut out = quick_junit::Report::new("cargo xtask mutants");
    for component in COMPONENTS.map(|c| c.name) {
        let mut suite = TestSuite::new(format!("mutants {component}"));
        for r in results.iter().filter(|r| r.mutant.component == component) {
            let status = match r.outcome {
                Outcome::Killed | Outcome::TimedOut => TestCaseStatus::success(),
                Outcome::Survived => {
                    let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    status.set_message(format!("survived: the suites pass with `{}` mutated", r.mutant.code));
                    status
                }
                Outcome::Equivalent => {
                    let mut status = TestCaseStatus::skipped();
                    status.set_message(format!("equivalent: {}", r.reason.as_deref().unwrap_or("")));
                    status
                }
                Outcome::Unviable => {
                    let mut status = TestCaseStatus::skipped();
                    status.set_message("unviable: the mutant did not build");
                    status
                }
            };
            let mut case = TestCase::new(format!("{}:{}: {}", r.mutant.file, r.mutant.line, r.mutant.what), status);
            case.set_classname(format!("mutants.{component}")).set_time(Duration::from_secs_f64(r.seconds));
            suite.add_test_case(case);
        }
        if suite.tests > 0 {
            out.add_test_suite(suite);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutants::{Edit, Mutant};

    fn mutant(line: usize, what: &str) -> Mutant {
        Mutant {
            component: "judging".into(),
            file: "lab/workload/src/accounting.rs".into(),
            line,
            what: what.into(),
            code: "self.misroutes += 1".into(),
            edit: Edit::Line(String::new()),
        }
    }

    fn judged(line: usize, outcome: Outcome, reason: Option<&str>) -> Judged {
        Judged { mutant: mutant(line, "replace += with -="), outcome, seconds: 30.0, reason: reason.map(str::to_owned) }
    }

    /// The JUnit XML, read back by a parser of its own: one case per mutant, the survivor a
    /// failure, the equivalent one skipped with its reason, the killed one a pass.
    #[test]
    fn junit_reads_back_one_case_per_mutant() {
        let results = [
            judged(10, Outcome::Killed, None),
            judged(11, Outcome::Survived, None),
            judged(12, Outcome::Equivalent, Some("the counter is only compared with zero")),
        ];
        let xml = junit(&results).to_string().unwrap();
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let cases: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("testcase")).collect();
        assert_eq!(cases.len(), 3);
        let child = |i: usize, tag: &str| cases[i].children().find(|n| n.has_tag_name(tag));
        assert!(child(0, "failure").is_none() && child(0, "skipped").is_none());
        assert_eq!(cases[1].attribute("name"), Some("lab/workload/src/accounting.rs:11: replace += with -="));
        assert!(child(1, "failure").is_some_and(|f| f.attribute("message").unwrap_or("").starts_with("survived")));
        assert_eq!(
            child(2, "skipped").and_then(|n| n.attribute("message")),
            Some("equivalent: the counter is only compared with zero")
        );
    }

    /// Against the published intervals of Newcombe (1998), Statistics in Medicine 17:857-872,
    /// table I, method 3 (the score interval without continuity correction).
    #[test]
    fn the_interval_is_wilsons() {
        for (caught, judged, lo, hi) in
            [(81, 263, 25.53, 36.62), (15, 148, 6.24, 16.05), (0, 20, 0.0, 16.11), (1, 29, 0.61, 17.18)]
        {
            let (l, h) = wilson(caught, judged).unwrap();
            assert!((l - lo).abs() < 0.01 && (h - hi).abs() < 0.01, "{caught}/{judged}: {l:.2}-{h:.2}");
        }
        let (l, h) = wilson(20, 20).unwrap();
        assert!((l - 83.89).abs() < 0.01 && h == 100.0, "the mirror of 0/20: {l:.2}-{h:.2}");
        assert_eq!(wilson(0, 0), None);
    }

    fn shard(k: usize, of: usize, mutants: Vec<Judged>) -> Run {
        Run {
            wall_seconds: 60.0,
            shards: Shards { judged: BTreeSet::from([k]), of },
            listed: BTreeMap::from([("judging".to_owned(), 4)]),
            mutants,
        }
    }

    fn write(dir: &Path, name: &str, run: &Run) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_string(&report(run).json).unwrap()).unwrap();
        path
    }

    /// A shard's report reads as a sample with its interval; merging every shard of the run
    /// gives the whole score, exactly, without one; a shard given twice, a shard of another run
    /// and a file that is no report are refused, naming the file.
    #[test]
    fn shards_merge_into_the_whole_score() {
        let dir = std::env::temp_dir().join(format!("xtask-merge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = shard(1, 2, vec![judged(10, Outcome::Killed, None), judged(12, Outcome::Survived, None)]);
        let md = report(&first).markdown;
        assert!(
            md.contains("shard(s) 1 of 2")
                && md.contains("| judging | 4 | 2 | 1 | 1 | 0 | 0 | 0 | 50.0% | 9.5-90.5% |"),
            "{md}"
        );
        let a = write(&dir, "a.json", &first);
        let b = write(
            &dir,
            "b.json",
            &shard(2, 2, vec![judged(11, Outcome::TimedOut, None), judged(13, Outcome::Killed, None)]),
        );
        let whole = merge(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(whole.shards, Shards { judged: BTreeSet::from([1, 2]), of: 2 });
        assert_eq!(whole.wall_seconds, 120.0);
        let mut lines: Vec<usize> = whole.mutants.iter().map(|r| r.mutant.line).collect();
        lines.sort_unstable();
        assert_eq!(lines, [10, 11, 12, 13]);
        let merged = report(&whole);
        assert!(merged.markdown.contains("| judging | 4 | 2 | 1 | 0 | 1 | 0 | 75.0% |\n"), "{}", merged.markdown);
        assert!(
            !merged.markdown.contains("interval") && merged.json["components"]["judging"]["interval_pct"].is_null()
        );
        assert!(merged.markdown.contains("`lab/workload/src/accounting.rs:12`"), "the survivor is listed");

        let twice = merge(&[a.clone(), a.clone()]).unwrap_err().to_string();
        assert!(twice.contains("a.json") && twice.contains("shard 1 of 2 is already"), "{twice}");
        let mut other = shard(2, 2, vec![judged(11, Outcome::Killed, None)]);
        other.listed.insert("judging".into(), 5);
        let other = write(&dir, "other.json", &other);
        let refused = merge(&[a.clone(), other]).unwrap_err().to_string();
        assert!(refused.contains("other.json") && refused.contains("another run"), "{refused}");
        let unknown = dir.join("unknown.json");
        std::fs::write(&unknown, std::fs::read_to_string(&b).unwrap().replace("\"judging\"", "\"gateway\"")).unwrap();
        let refused = format!("{:#}", merge(&[unknown]).unwrap_err());
        assert!(refused.contains("unknown.json") && refused.contains("component \"gateway\""), "{refused}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
