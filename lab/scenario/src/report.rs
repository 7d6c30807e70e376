//! The lab's report: a terminal table, `report.json` and `report.md`.
//!
//! JSON layout (stable; consumers may rely on it):
//! `{"kernel", "time_scale", "scenarios": [{"name", "verdict": "pass"|"fail"|"skip", "reason", "flows",
//! "resets", "misroutes", "drops", "control": {"resets", "misroutes", "drops"} | null,
//! "setup_ms", "teardown_ms", "phases_ms": [[variant, [[phase, ms]]]], "checks": [{"variant", "expect", "actual", "ok", "judged"}],
//! "anomalies": [{"proto", "id", "owner", "replies", "misroutes", "drops", "rounds", "ending",
//! "excused"}],
//! "losses": [{"node", "counter", "count"}], "lb": {...} | null, "tpr": {"server": {...},
//! "client": {...}} | null, "ecmp_reproducible", "release": {"counters": {...},
//! "capacity_dip_pct": {"Ok": n} | {"Err": why}, "latency_p99_ms", "max_reply_gap_ms",
//! "longest_gaps": [[flow, ms]]} | null, "deaths": {"out_of_rings_ms", "ids_still_live"} | null,
//! "lost_to_dying", "impair": {"seen", "dropped", "duplicated", "dropped_tcp", "dropped_udp",
//! "dup_failed"} | null, "learned_mss": {mss: flows},
//! "timelines": [[variant, {"seconds": [{"offered", "replies", "resets", "misroutes", "drops",
//! "stalled_ms", "latency_p50_us", "latency_p99_us", "latency_max_us"}], "marks": [{"at_s",
//! "label", "released"}]}]]}]}`. A check with `"judged": false` could not be measured: it fails
//! unless the run only reports it (`--capacity report`), and is never a pass.
//! `lb` and `tpr` are the main run's program counters (`scenario::measures`): the proof that
//! the data path (XDP LB, sock_ops) carried the flows, not only that the flows survived.
//! `anomalies` are the main run's first [`MAX_ANOMALIES`] flows that were reset, misrouted or
//! dropped, the counted ones first, then by id, whether or not their owner stayed up (`excused`
//! says which: a flow of a backend taken down is not in the counts): where to start reading when a
//! verdict fails. `losses` are the kernel's nonzero drop counters in the main run's namespaces
//! (see `topology::Loss`): at which hop packets were lost.
//! Figures are those of flows whose owner stayed up (see `workload::accounting`); set-up and
//! teardown times are the main variant's topology.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use crate::{
    Outcome, ScenarioVerdict,
    measures::{DeathMeasures, LbTotals, TprTotals},
    release::FleetCounters,
};
use zrlab_control::impair::DirectionCounters;
use zrlab_host::error::{LabError, Result};
use zrlab_topology::Loss;
use zrlab_workload::{accounting::FlowRecord, timeline::Timeline};

/// How many anomalous flows a scenario's report lists.
pub(crate) const MAX_ANOMALIES: usize = 12;

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `uname -r` of the kernel the lab ran on.
    pub kernel: String,
    /// The durations' multiplier the scenarios ran with (`--time-scale`).
    pub time_scale: u32,
    /// One entry per scenario, in run order.
    pub scenarios: Vec<ScenarioReport>,
}

/// Control-run figures.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ControlFigures {
    /// Resets.
    pub resets: u64,
    /// Misroutes.
    pub misroutes: u64,
    /// Drops.
    pub drops: u64,
}

/// An evaluated expectation, with the variant it belongs to.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// `main` or `control`.
    pub variant: &'static str,
    /// `metric <op> value`.
    pub expect: String,
    /// Measured value.
    pub actual: u64,
    /// Whether it held.
    pub ok: bool,
    /// Whether it was judged (a figure the run could not measure is "not judged").
    pub judged: bool,
}

/// A flow of the main run with a reset, misroute or drop.
#[derive(Clone, Debug, Serialize)]
pub struct Anomaly {
    /// The flow.
    #[serde(flatten)]
    pub flow: FlowRecord,
    /// Whether its owner's host was taken down (the flow is excused, not counted).
    pub excused: bool,
}

/// One scenario's line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub name: String,
    /// ScenarioVerdict.
    pub verdict: ScenarioVerdict,
    /// Why it failed or was skipped.
    pub reason: String,
    /// Flows measured in the main run.
    pub flows: u64,
    /// Resets in the main run.
    pub resets: u64,
    /// Misroutes in the main run.
    pub misroutes: u64,
    /// Drops in the main run.
    pub drops: u64,
    /// The control run's figures.
    pub control: Option<ControlFigures>,
    /// Topology set-up time of the main run.
    pub setup_ms: u64,
    /// Topology teardown time of the main run.
    pub teardown_ms: u64,
    /// Per variant (`control`, `main`), each phase's wall time in milliseconds, in order.
    pub phases_ms: Vec<(String, Vec<(String, u64)>)>,
    /// Every expectation of both runs.
    pub checks: Vec<CheckReport>,
    /// The main run's first flows with a reset, misroute or drop, each marked whether it was
    /// excused (its owner's host was taken down: not in the counts).
    pub anomalies: Vec<Anomaly>,
    /// The main run's nonzero kernel drop counters.
    pub losses: Vec<Loss>,
    /// The main run's LB and decap counters.
    pub lb: Option<LbTotals>,
    /// The main run's sock_ops counters.
    pub tpr: Option<TprTotals>,
    /// Whether the routers' ECMP hash was seeded (6.11+): only then does a rerun route the same
    /// flows the same way. Expectations count flows, not which ones, so they hold either way.
    pub ecmp_reproducible: bool,
    /// The main run's release counters and capacity dip, for release scenarios.
    pub release: Option<ReleaseFigures>,
    /// What the main run's `kill-backend` events measured: the time from a death to the last
    /// LB node's ring change, and the killed backends' ids still live, when it killed one.
    pub deaths: Option<DeathMeasures>,
    /// Failed flows without an answer a dying host may have taken, in the main run (excused).
    pub lost_to_dying: u64,
    /// What the main run's link impairments did (every impaired interface and direction
    /// added up), when it impaired any.
    pub impair: Option<DirectionCounters>,
    /// The main run's TCP flows by the maximum segment size they ended with: what path-MTU
    /// discovery taught them.
    pub learned_mss: std::collections::BTreeMap<u32, u64>,
    /// Per variant (`main`, `control`), the run's timeline, for release scenarios: plotted
    /// next to the report as `timelines/<scenario>-<variant>.svg`.
    pub timelines: Vec<(String, Timeline)>,
}

/// A release scenario's figures (main run).
#[derive(Clone, Debug, Serialize)]
pub struct ReleaseFigures {
    /// The dispatchers' counters.
    pub counters: FleetCounters,
    /// How far the share of offered requests answered per second fell below that share
    /// before the first release, or why the run has no figure.
    pub capacity_dip_pct: Result<u64, String>,
    /// The worst second's 99th-percentile reply latency, in milliseconds.
    pub latency_p99_ms: Option<u64>,
    /// The longest gap between two replies of a counted flow, in milliseconds.
    pub max_reply_gap_ms: Option<u64>,
    /// Per flow, its longest gap between replies, for the flows with the longest (flow, ms).
    pub longest_gaps: Vec<(u32, u64)>,
}

impl From<&Outcome> for ScenarioReport {
    fn from(outcome: &Outcome) -> Self {
        let main = outcome.main.as_ref();
        let counted = main.map(|m| m.measures.tally.counted).unwrap_or_default();
        let mut checks = Vec::new();
        for (variant, result) in [("main", &outcome.main), ("control", &outcome.control)] {
            for check in result.iter().flat_map(|r| &r.checks) {
                checks.push(CheckReport {
                    variant,
                    expect: check.expect.clone(),
                    actual: check.actual,
                    ok: check.ok,
                    judged: check.judged,
                });
            }
        }
        Self {
            name: outcome.name.clone(),
            verdict: outcome.verdict,
            reason: outcome.reason.clone(),
            flows: counted.flows,
            resets: counted.resets,
            misroutes: counted.misroutes,
            drops: counted.drops,
            control: outcome.control.as_ref().map(|c| ControlFigures {
                resets: c.measures.tally.counted.resets,
                misroutes: c.measures.tally.counted.misroutes,
                drops: c.measures.tally.counted.drops,
            }),
            setup_ms: main.map_or(0, |m| m.setup.as_millis() as u64),
            teardown_ms: main.map_or(0, |m| m.teardown.as_millis() as u64),
            phases_ms: [("control", &outcome.control), ("main", &outcome.main)]
                .into_iter()
                .filter_map(|(label, v)| {
                    let phases = v.as_ref()?.phases.iter().map(|(p, d)| (p.clone(), d.as_millis() as u64)).collect();
                    Some((label.to_owned(), phases))
                })
                .collect(),
            checks,
            anomalies: main
                .map(|m| {
                    let excused = |f: &FlowRecord| {
                        f.owner.as_ref().is_some_and(|o| m.down.contains(&o.node)) || m.dying.covers(f)
                    };
                    let mut flows: Vec<&FlowRecord> = m.flows.iter().filter(|f| f.anomalous()).collect();
                    // The counted ones first: they are what failed the verdict.
                    flows.sort_by_key(|f| (excused(f), f.proto as u8, f.id));
                    flows
                        .into_iter()
                        .take(MAX_ANOMALIES)
                        .map(|f| Anomaly { excused: excused(f), flow: f.clone() })
                        .collect()
                })
                .unwrap_or_default(),
            losses: main.map(|m| m.losses.clone()).unwrap_or_default(),
            lb: main.and_then(|m| m.measures.lb),
            tpr: main.and_then(|m| m.measures.tpr),
            ecmp_reproducible: main.is_none_or(|m| m.ecmp_unseeded.is_empty()),
            deaths: main.and_then(|m| m.measures.deaths),
            lost_to_dying: main.map_or(0, |m| m.measures.tally.lost_to_dying),
            impair: main.and_then(|m| m.measures.impair),
            learned_mss: main.map(|m| m.measures.learned_mss.clone()).unwrap_or_default(),
            release: main.and_then(|m| {
                Some(ReleaseFigures {
                    counters: m.measures.release?,
                    capacity_dip_pct: m.measures.capacity_dip_pct.clone(),
                    latency_p99_ms: m.measures.latency_p99_ms,
                    max_reply_gap_ms: m.measures.max_reply_gap_ms,
                    longest_gaps: m.measures.longest_gaps.clone(),
                })
            }),
            timelines: [("main", &outcome.main), ("control", &outcome.control)]
                .into_iter()
                .filter_map(|(label, v)| {
                    let v = v.as_ref().filter(|v| v.measures.release.is_some() || v.measures.deaths.is_some())?;
                    Some((label.to_owned(), v.timeline.clone()))
                })
                .collect(),
        }
    }
}

impl Report {
    /// A report of `outcomes` on the running kernel, run with `time_scale`.
    pub fn new(outcomes: &[Outcome], time_scale: u32) -> Self {
        Self {
            kernel: zrlab_host::kernel_release(),
            time_scale,
            scenarios: outcomes.iter().map(ScenarioReport::from).collect(),
        }
    }

    /// Whether every scenario passed or was skipped.
    pub fn ok(&self) -> bool {
        self.scenarios.iter().all(|s| s.verdict != ScenarioVerdict::Fail)
    }

    /// The summary table (terminal and Markdown share it).
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| {:<30} | {:<7} | {:>5} | {:>6} | {:>9} | {:>5} | {:<22} | {:>8} | {:>11} |",
            "scenario", "verdict", "flows", "resets", "misroutes", "drops", "control r/m/d", "setup ms", "teardown ms"
        );
        let _ = writeln!(
            out,
            "|{:-<32}|{:-<9}|{:-<7}|{:-<8}|{:-<11}|{:-<7}|{:-<24}|{:-<10}|{:-<13}|",
            "", "", "", "", "", "", "", "", ""
        );
        for s in &self.scenarios {
            let control = s.control.map_or("-".to_owned(), |c| format!("{}/{}/{}", c.resets, c.misroutes, c.drops));
            let verdict = serde_json::to_value(s.verdict).expect("serialisable");
            let _ = writeln!(
                out,
                "| {:<30} | {:<7} | {:>5} | {:>6} | {:>9} | {:>5} | {:<22} | {:>8} | {:>11} |",
                s.name,
                verdict.as_str().unwrap_or("?"),
                s.flows,
                s.resets,
                s.misroutes,
                s.drops,
                control,
                s.setup_ms,
                s.teardown_ms
            );
        }
        out
    }

    /// The Markdown report: the table, then each scenario's checks and reason.
    pub(crate) fn markdown(&self) -> String {
        let mut out = format!("# Lab report\n\nKernel: `{}`, time scale {}\n\n", self.kernel, self.time_scale);
        out.push_str(&self.table());
        for s in &self.scenarios {
            let _ = write!(out, "\n## {}\n\n", s.name);
            if !s.reason.is_empty() {
                let _ = writeln!(out, "Reason: {}\n", s.reason);
            }
            for c in &s.checks {
                let mark = match (c.judged, c.ok) {
                    (true, true) => "ok",
                    (false, true) => "not judged",
                    (_, false) => "FAILED",
                };
                let _ = writeln!(out, "- {} `{}`: {} ({mark})", c.variant, c.expect, c.actual);
            }
            for (variant, phases) in &s.phases_ms {
                let list: Vec<String> = phases.iter().map(|(phase, ms)| format!("{phase} {ms} ms")).collect();
                let _ = writeln!(out, "\nPhases of the {variant} run: {}", list.join(", "));
            }
            if !s.anomalies.is_empty() {
                let _ = writeln!(out, "\nFirst flows of the main run with a reset, misroute or drop:\n");
                for Anomaly { flow: f, excused } in &s.anomalies {
                    let excused = if *excused {
                        " (excused: its owner's host was taken down; not in the counts above)"
                    } else {
                        ""
                    };
                    let owner = f.owner.as_ref().map_or("-".to_owned(), |o| o.to_string());
                    let ending = f.ending.as_ref().map_or("running".to_owned(), |e| format!("{e:?}"));
                    let _ = writeln!(
                        out,
                        "- {:?} flow {}: owner {owner}, {} replies, {} misroutes, {} drops in {} rounds, {ending}{excused}",
                        f.proto, f.id, f.replies, f.misroutes, f.drops, f.rounds
                    );
                }
            }
            if !s.losses.is_empty() {
                let _ = writeln!(
                    out,
                    "\nKernel drop counters of the main run (packets in flight when the flows stopped count too):\n"
                );
                for l in &s.losses {
                    let _ = writeln!(out, "- {} `{}`: {}", l.node, l.counter, l.count);
                }
            }
            if !s.ecmp_reproducible {
                let _ = writeln!(
                    out,
                    "\nThis kernel cannot seed the routers' ECMP hash (fib_multipath_hash_seed, 6.11+): \
                     a rerun moves the same number of flows, not the same flows."
                );
            }
            if let Some(lb) = &s.lb {
                let _ = writeln!(
                    out,
                    "\nLB counters of the main run: `{}`",
                    serde_json::to_string(lb).expect("serialisable")
                );
            }
            if let Some(release) = &s.release {
                let dip = match &release.capacity_dip_pct {
                    Ok(dip) => format!("{dip}%"),
                    Err(why) => format!("not judged ({why})"),
                };
                let stalled: u64 = s
                    .timelines
                    .iter()
                    .filter(|(variant, _)| variant == "main")
                    .flat_map(|(_, t)| &t.seconds)
                    .map(|second| second.stalled_ms)
                    .sum();
                let figure = |v: Option<u64>| v.map_or("none".to_owned(), |ms| format!("{ms} ms"));
                let _ = writeln!(
                    out,
                    "\nRelease counters of the main run: `{}`; capacity dip {dip}; worst second's p99 \
                     reply latency {}, longest gap between two replies of a flow {} (the client's \
                     thread could not run for {stalled} ms of that run)",
                    serde_json::to_string(&release.counters).expect("serialisable"),
                    figure(release.latency_p99_ms),
                    figure(release.max_reply_gap_ms),
                );
                let gaps: Vec<String> =
                    release.longest_gaps.iter().map(|(flow, ms)| format!("flow {flow} {ms} ms")).collect();
                let _ =
                    writeln!(out, "\nLongest gap between replies, per flow (the longest first): {}", gaps.join(", "));
            }
            if s.learned_mss.len() > 1 || s.lb.is_some_and(|lb| lb.too_big > 0) {
                let by: Vec<String> = s.learned_mss.iter().map(|(mss, n)| format!("{mss}: {n}")).collect();
                let _ =
                    writeln!(out, "\nTCP flows by the segment size they ended with (MSS: flows): {}", by.join(", "));
            }
            if let Some(impair) = &s.impair {
                let _ = writeln!(
                    out,
                    "\nLossy links of the main run: `{}`",
                    serde_json::to_string(impair).expect("serialisable")
                );
            }
            if let Some(deaths) = &s.deaths {
                let out_ms = deaths
                    .out_of_rings_ms
                    .map_or("not within its detection budget".to_owned(), |ms| format!("after {ms} ms"));
                let _ = writeln!(
                    out,
                    "\nKilled backends: out of the last LB node's rings {out_ms}; ids still live on {} \
                     (LB node, backend) pairs at the end; {} failed flows without an answer excused as \
                     taken by the dying host",
                    deaths.ids_still_live, s.lost_to_dying,
                );
            }
            if !s.timelines.is_empty() {
                let links: Vec<String> = s
                    .timelines
                    .iter()
                    .map(|(variant, _)| format!("[{variant}](timelines/{}-{variant}.svg)", s.name))
                    .collect();
                let _ = writeln!(out, "\nTimelines: {}", links.join(", "));
            }
            if let Some(tpr) = &s.tpr {
                let _ = writeln!(
                    out,
                    "\nsock_ops counters of the main run: server `{}`, client `{}`",
                    serde_json::to_string(&tpr.server).expect("serialisable"),
                    serde_json::to_string(&tpr.client).expect("serialisable")
                );
            }
        }
        out
    }

    /// Writes `report.json`, `report.md` and the release scenarios' timelines
    /// (`timelines/<scenario>-<variant>.svg`) into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut files = vec![
            (dir.join("report.json"), serde_json::to_string_pretty(self).expect("serialisable")),
            (dir.join("report.md"), self.markdown()),
        ];
        for s in &self.scenarios {
            for (variant, timeline) in &s.timelines {
                let title = format!("{} ({variant})", s.name);
                let svg = zrlab_workload::timeline::svg::render(timeline, &title)
                    .map_err(|message| LabError::Usage(format!("timeline of {title}: {message}")))?;
                files.push((dir.join("timelines").join(format!("{}-{variant}.svg", s.name)), svg));
            }
        }
        for (path, text) in files {
            let parent = path.parent().unwrap_or(dir);
            std::fs::create_dir_all(parent).map_err(|e| LabError::os("mkdir", parent.display().to_string(), e))?;
            std::fs::write(&path, text).map_err(|e| LabError::os("write", path.display().to_string(), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use zrlab_wire::{Proto, message::Identity};
    use zrlab_workload::accounting::Ending;

    use super::*;
    use crate::{ScenarioVerdict, VariantOutcome};

    /// The report's first anomalous flows say which ones are excused (a flow of a backend taken
    /// down): next to "resets 0", an unmarked reset would read as a contradiction (issue 20).
    #[test]
    fn excused_anomalies_are_marked_as_such() {
        let flow = |id: u32, node: &str| {
            let mut flow = FlowRecord::new(Proto::Tcp, id, 0);
            flow.owner = Some(Identity { node: node.into(), instance: "a".into(), pid: 1 });
            flow.ending = Some(Ending::Reset);
            flow
        };
        let main = VariantOutcome {
            measures: crate::measures::Measures::default(),
            checks: Vec::new(),
            setup: Duration::ZERO,
            teardown: Duration::ZERO,
            flows: vec![flow(0, "be1"), flow(1, "be4")],
            losses: Vec::new(),
            timeline: Default::default(),
            kept: None,
            ecmp_unseeded: Vec::new(),
            down: ["be4".to_owned()].into(),
            dying: Default::default(),
            phases: vec![("building topology".into(), Duration::from_millis(510))],
        };
        let outcome = Outcome {
            name: "lb-failover".into(),
            verdict: ScenarioVerdict::Fail,
            reason: String::new(),
            main: Some(main),
            control: None,
        };
        let report = Report::new(&[outcome], 1);
        let excused: Vec<bool> = report.scenarios[0].anomalies.iter().map(|a| a.excused).collect();
        assert_eq!(excused, [false, true]);
        assert!(report.markdown().contains("Phases of the main run: building topology 510 ms"));
        let md = report.markdown();
        let line = |id: u32| md.lines().find(|l| l.starts_with(&format!("- Tcp flow {id}:"))).expect("listed");
        assert!(!line(0).contains("excused"), "{}", line(0));
        assert!(
            line(1).ends_with("(excused: its owner's host was taken down; not in the counts above)"),
            "{}",
            line(1)
        );
    }
}
