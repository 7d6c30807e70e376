//! Expectations: `metric <op> value` checks a scenario states about its tally.
//!
//! In a scenario file they read `resets = "== 0"` or `excused_flows = "> 0"`; a bare integer
//! means `==`.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use crate::measures::Measures;

/// What an expectation measures (see `workload::accounting` for the definitions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Flows whose owner's host stayed up.
    Flows,
    /// Resets among those flows.
    Resets,
    /// Misrouted replies among those flows.
    Misroutes,
    /// Dropped requests among those flows.
    Drops,
    /// Flows whose owner's host was taken down.
    ExcusedFlows,
    /// Resets among excused flows.
    ExcusedResets,
    /// Misroutes among excused flows.
    ExcusedMisroutes,
    /// Drops among excused flows.
    ExcusedDrops,
    /// Distinct backends that owned a flow.
    Backends,
    /// Largest deviation (percent) of a backend's share of flows from its weight's share.
    ShareErrorPct,
    /// Packets the LB nodes encapsulated.
    LbTx,
    /// Packets the LB nodes routed by the ring.
    LbRingRouted,
    /// Connection-table hits on the LB nodes.
    LbTableHits,
    /// TCP packets routed by server id.
    LbTcpIdRouted,
    /// QUIC packets routed by server id.
    LbQuicIdRouted,
    /// Packets the backends decapsulated.
    Decapsulated,
    /// Connection-table misses on the LB nodes (flows an LB node had not seen).
    LbTableMisses,
    /// Packets whose server id was not live on the LB node (fell back to table and ring).
    LbIdUnknown,
    /// Flows in more than one LB node's connection table: flows a node inherited.
    LbInheritedFlows,
    /// Flows opened after the first event.
    LateFlows,
    /// Flows opened after a backend's drain that landed on that backend.
    LateFlowsOnDrained,
    /// Server ids written on SYN-ACKs by the backends' sock_ops programs.
    TprWritten,
    /// Server ids the client's sock_ops program read from SYN-ACKs.
    TprParsed,
    /// Client segments that carried the echoed id.
    TprEchoed,
    /// Connections whose first echo carried the backend's own id.
    TprEchoOk,
    /// Connections whose first echo carried another id.
    TprWrongId,
    /// Segments (either side) that went without the option: no room.
    TprNoSpace,
    /// Nothing to carry (server id 0, or a SYN-ACK without an id).
    TprSkipped,
    /// Service processes started by releases.
    Released,
    /// New flows the `SK_REUSEPORT` dispatchers sent to the ready generation.
    ReuseportSelected,
    /// Datagrams of existing UDP flows the `SK_REUSEPORT` dispatchers sent to the socket their
    /// connection id names.
    ReuseportByCid,
    /// Requests of closing listeners the `SK_REUSEPORT` dispatchers moved (every state).
    ReuseportMigrated,
    /// New flows the `SK_LOOKUP` dispatchers sent to the ready process.
    SkLookupSteeredNew,
    /// Datagrams of remembered UDP flows the `SK_LOOKUP` dispatchers sent to their process.
    SkLookupSteeredFlow,
    /// How far (percent) requests answered per second fell below the rate before the first
    /// release (`timeline::Timeline::capacity_dip_pct`).
    CapacityDipPct,
    /// Releases in which the old process was told to stop before the new one was ready.
    ReleasesOutOfOrder,
    /// Releases whose dispatcher program (`reuseport-bpf`, `sk-lookup`) steered none of the
    /// probes made after the old process's drain: the new process was never installed in it.
    ReleasesUnsteered,
    /// The worst second's 99th-percentile reply latency, in milliseconds of the scenario's time
    /// (divided by `--time-scale`, as every duration of a scaled run is stretched by it;
    /// `timeline::Timeline::latency_p99_ms`).
    LatencyP99Ms,
    /// The longest time between two consecutive replies of a flow whose owner's host stayed
    /// up, in milliseconds of the scenario's time (divided by `--time-scale`;
    /// `timeline::Timeline::max_reply_gap_ms`): a pause under the drop
    /// timeout; a flow that broke counts the time from its last reply to the run's last.
    MaxReplyGapMs,
    /// New connections aimed at the released backends during their releases.
    ReleaseProbes,
    /// Of those, the ones refused, reset or unanswered.
    ReleaseProbesFailed,
    /// Ring changes the LB nodes' health checkers made (a backend out of, or back into, one
    /// node's rings).
    LbHealthChanges,
    /// Upgrades of LB nodes' data paths (`upgrade-lb`, in place or naive).
    LbUpgrades,
    /// Packets the upgraded version (`xdp_lb_next`) forwarded: the new version handled the
    /// traffic after the swap.
    LbNextTx,
    /// Connection-table entries in-place upgrades migrated into the new version's layout.
    LbEntriesMigrated,
    /// VIP packets too big for their real's path once encapsulated, answered with ICMP
    /// "fragmentation needed" / "packet too big".
    LbTooBig,
    /// ICMP errors to a VIP that the LB nodes sent on to their flow's real.
    LbIcmpRouted,
    /// The longest time from a `kill-backend` death to the last LB node's ring change that
    /// took the backend out, in milliseconds of the scenario's time (divided by
    /// `--time-scale`); not judged when nothing was killed or a killed backend stayed in a
    /// node's rings past its detection budget.
    BackendOutOfRingsMs,
    /// (LB node, killed backend) pairs whose server id the node's live-id table (read from
    /// its map) still held at the end; not judged when nothing was killed.
    DeadIdsLive,
    /// Failed flows without an answer that a dying host may have taken (excused; see
    /// `workload::accounting::Dying`).
    FlowsLostToDying,
    /// Dropped requests of TCP flows whose owner stayed up: TCP retransmits what a lossy link
    /// loses, so under loss these must stay 0 (given a reply timeout longer than the
    /// retransmissions take).
    TcpDrops,
    /// Dropped requests of UDP flows whose owner stayed up.
    UdpDrops,
    /// UDP drops beyond the UDP datagrams the link impairments dropped: nothing retransmits a
    /// lost datagram, so each one may cost one request, and no more. Not judged without an
    /// impairment.
    UdpDropsBeyondLoss,
    /// Frames the link impairments dropped (the mechanism acted); not judged without one.
    ImpairedDropped,
    /// Frames the link impairments duplicated; not judged without one.
    ImpairedDuplicated,
}

impl Metric {
    /// Whether the metric needs an LB in the scenario.
    pub(crate) fn needs_lb(self) -> bool {
        matches!(
            self,
            Self::ShareErrorPct
                | Self::LbTx
                | Self::LbRingRouted
                | Self::LbTableHits
                | Self::LbTcpIdRouted
                | Self::LbQuicIdRouted
                | Self::Decapsulated
                | Self::LbTableMisses
                | Self::LbIdUnknown
                | Self::LbInheritedFlows
                | Self::LbHealthChanges
                | Self::LbUpgrades
                | Self::LbNextTx
                | Self::LbEntriesMigrated
                | Self::LbTooBig
                | Self::LbIcmpRouted
                | Self::BackendOutOfRingsMs
                | Self::DeadIdsLive
        )
    }

    /// Whether the metric needs the scenario's sock_ops programs (`[tpr]`).
    pub(crate) fn needs_tpr(self) -> bool {
        matches!(
            self,
            Self::TprWritten
                | Self::TprParsed
                | Self::TprEchoed
                | Self::TprEchoOk
                | Self::TprWrongId
                | Self::TprNoSpace
                | Self::TprSkipped
        )
    }

    /// Whether the metric needs a `[release]` section.
    pub(crate) fn needs_release(self) -> bool {
        matches!(
            self,
            Self::Released
                | Self::ReuseportSelected
                | Self::ReuseportByCid
                | Self::ReuseportMigrated
                | Self::SkLookupSteeredNew
                | Self::SkLookupSteeredFlow
                | Self::CapacityDipPct
                | Self::ReleasesOutOfOrder
                | Self::ReleasesUnsteered
                | Self::ReleaseProbes
                | Self::ReleaseProbesFailed
        )
    }

    /// Whether the metric is a timing figure (capacity, latency, reply gaps): what
    /// [`Capacity::Report`] reports without judging.
    pub(crate) fn is_timing(self) -> bool {
        matches!(self, Self::CapacityDipPct | Self::LatencyP99Ms | Self::MaxReplyGapMs | Self::BackendOutOfRingsMs)
    }

    /// Whether the metric counts a failure (what a control run must show).
    pub(crate) fn is_failure(self) -> bool {
        matches!(
            self,
            Self::Resets
                | Self::Misroutes
                | Self::Drops
                | Self::ExcusedResets
                | Self::ExcusedMisroutes
                | Self::ExcusedDrops
                | Self::LateFlowsOnDrained
                | Self::ReleasesOutOfOrder
                | Self::ReleasesUnsteered
                | Self::ReleaseProbesFailed
                | Self::LatencyP99Ms
                | Self::MaxReplyGapMs
                | Self::DeadIdsLive
                | Self::TcpDrops
                | Self::UdpDrops
                | Self::UdpDropsBeyondLoss
        )
    }

    /// The metric's value in `measures`, or why the run has none (it is then not judged, and
    /// an expectation on it fails).
    pub fn of(self, measures: &Measures) -> Result<u64, String> {
        let figure = |value: &Result<u64, String>| value.clone();
        Ok(match self {
            Self::CapacityDipPct => return figure(&measures.capacity_dip_pct),
            Self::LatencyP99Ms => return measures.latency_p99_ms.ok_or_else(|| "no reply was timed".to_owned()),
            Self::MaxReplyGapMs => {
                return measures.max_reply_gap_ms.ok_or_else(|| "no flow had two replies".to_owned());
            }
            Self::ReleasesUnsteered if measures.release.is_none_or(|r| r.steering_read == 0) => {
                return Err("no release had a dispatcher program whose steering could be read".into());
            }
            Self::UdpDropsBeyondLoss | Self::ImpairedDropped | Self::ImpairedDuplicated => {
                let Some(impair) = measures.impair else { return Err("no link was impaired".into()) };
                return Ok(match self {
                    Self::ImpairedDropped => impair.dropped,
                    Self::ImpairedDuplicated => impair.duplicated,
                    _ => measures.tally.counted.udp_drops.saturating_sub(impair.dropped_udp),
                });
            }
            Self::BackendOutOfRingsMs | Self::DeadIdsLive => {
                let Some(deaths) = measures.deaths else { return Err("no backend was killed".into()) };
                return match self {
                    Self::DeadIdsLive => Ok(deaths.ids_still_live),
                    _ => deaths.out_of_rings_ms.ok_or_else(|| {
                        "a killed backend was still in an LB node's rings when its detection budget ran out".into()
                    }),
                };
            }
            _ => self.count(measures),
        })
    }

    /// The value of a metric that always has one (a count).
    fn count(self, measures: &Measures) -> u64 {
        let tally = &measures.tally;
        let lb = measures.lb.unwrap_or_default();
        let tpr = measures.tpr.unwrap_or_default();
        let release = measures.release.unwrap_or_default();
        match self {
            Self::Flows => tally.counted.flows,
            Self::Resets => tally.counted.resets,
            Self::Misroutes => tally.counted.misroutes,
            Self::Drops => tally.counted.drops,
            Self::ExcusedFlows => tally.excused.flows,
            Self::ExcusedResets => tally.excused.resets,
            Self::ExcusedMisroutes => tally.excused.misroutes,
            Self::ExcusedDrops => tally.excused.drops,
            Self::Backends => tally.owners.len() as u64,
            Self::ShareErrorPct => measures.share_error_pct(),
            Self::LbTx => lb.tx,
            Self::LbRingRouted => lb.ring_routed,
            Self::LbTableHits => lb.table_hits,
            Self::LbTcpIdRouted => lb.tcp_id_routed,
            Self::LbQuicIdRouted => lb.quic_id_routed,
            Self::Decapsulated => lb.decapsulated,
            Self::LbTableMisses => lb.table_misses,
            Self::LbIdUnknown => lb.id_unknown,
            Self::LbInheritedFlows => lb.inherited_flows,
            Self::LateFlows => tally.late_flows,
            Self::LateFlowsOnDrained => tally.late_on_drained,
            Self::TprWritten => tpr.server.written,
            Self::TprParsed => tpr.client.parsed,
            Self::TprEchoed => tpr.client.echoed,
            Self::TprEchoOk => tpr.server.echo_ok,
            Self::TprWrongId => tpr.server.wrong_id,
            Self::TprNoSpace => tpr.server.no_space + tpr.client.no_space,
            Self::TprSkipped => tpr.server.skipped + tpr.client.skipped,
            Self::Released => release.released,
            Self::ReuseportSelected => release.reuseport.selected,
            Self::ReuseportByCid => release.reuseport.by_cid,
            Self::ReuseportMigrated => release.reuseport.migrated(),
            Self::SkLookupSteeredNew => release.sk_lookup.steered_new,
            Self::SkLookupSteeredFlow => release.sk_lookup.steered_flow,
            Self::CapacityDipPct
            | Self::LatencyP99Ms
            | Self::MaxReplyGapMs
            | Self::BackendOutOfRingsMs
            | Self::DeadIdsLive
            | Self::UdpDropsBeyondLoss
            | Self::ImpairedDropped
            | Self::ImpairedDuplicated => unreachable!("figures, in `of`"),
            Self::ReleasesOutOfOrder => release.out_of_order,
            Self::ReleasesUnsteered => release.unsteered,
            Self::ReleaseProbes => release.probes,
            Self::ReleaseProbesFailed => release.probes_failed,
            Self::LbHealthChanges => lb.health_changes,
            Self::LbUpgrades => lb.upgrades,
            Self::LbNextTx => lb.next_tx,
            Self::LbEntriesMigrated => lb.entries_migrated,
            Self::LbTooBig => lb.too_big,
            Self::LbIcmpRouted => lb.icmp_routed,
            Self::FlowsLostToDying => tally.lost_to_dying,
            Self::TcpDrops => tally.counted.tcp_drops,
            Self::UdpDrops => tally.counted.udp_drops,
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_value(self).expect("serialisable");
        f.write_str(text.as_str().expect("a string"))
    }
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

/// `<op> <value>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawComparison")]
pub struct Comparison {
    /// The operator.
    pub op: Op,
    /// The right-hand side.
    pub value: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawComparison {
    Number(u64),
    Text(String),
}

impl TryFrom<RawComparison> for Comparison {
    type Error = String;

    fn try_from(raw: RawComparison) -> Result<Self, String> {
        let text = match raw {
            RawComparison::Number(value) => return Ok(Self { op: Op::Eq, value }),
            RawComparison::Text(text) => text,
        };
        let trimmed = text.trim();
        // Two-character operators first, so ">=" is not read as ">".
        let ops = [("==", Op::Eq), ("!=", Op::Ne), (">=", Op::Ge), ("<=", Op::Le), (">", Op::Gt), ("<", Op::Lt)];
        let (op, rest) = ops
            .iter()
            .find_map(|(sym, op)| trimmed.strip_prefix(sym).map(|rest| (*op, rest)))
            .ok_or_else(|| format!("{text:?} is not a comparison (write e.g. \"== 0\" or \"> 0\")"))?;
        let value =
            rest.trim().parse().map_err(|_| format!("{text:?} is not a comparison with a non-negative integer"))?;
        Ok(Self { op, value })
    }
}

impl Comparison {
    /// Whether the comparison can only hold for a value above zero.
    pub(crate) fn requires_positive(&self) -> bool {
        !self.holds(0)
    }

    /// Whether `actual <op> value` holds.
    pub(crate) fn holds(&self, actual: u64) -> bool {
        match self.op {
            Op::Eq => actual == self.value,
            Op::Ne => actual != self.value,
            Op::Gt => actual > self.value,
            Op::Ge => actual >= self.value,
            Op::Lt => actual < self.value,
            Op::Le => actual <= self.value,
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sym = match self.op {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        };
        write!(f, "{sym} {}", self.value)
    }
}

/// One evaluated expectation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `metric <op> value`, as text (with why it was not judged, if it was not).
    pub expect: String,
    /// The measured value (0 when there is none).
    pub actual: u64,
    /// Whether it held; a check that could not be judged holds only where the run asked for
    /// a figure that is reported, not judged (`--capacity report`).
    pub ok: bool,
    /// Whether it was judged: a figure the run could not measure is "not judged", never a pass.
    pub judged: bool,
}

/// Whether a run judges its timing expectations: the capacity dip, the reply latency and the
/// gaps between replies ([`Metric::is_timing`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Capacity {
    /// A timing expectation that does not hold fails the scenario.
    #[default]
    Judge,
    /// Measured and reported as "not judged", never failing: for emulated machines, whose
    /// replies per second swing by a third from one second to the next with nothing happening
    /// (a 6.1 guest under TCG: 418-697 a second before any release) and whose flows stall for
    /// seconds on their own (a 1.85 s reply gap in a run where nothing was released yet), so
    /// neither a dip nor a pause can be told from the emulator. Counts (resets, misroutes,
    /// drops, the order of a release, its probes, the programs' counters) are judged anyway.
    Report,
}

/// Evaluates every expectation against `measures`. An expectation whose metric has no figure
/// in this run is not judged and fails; under [`Capacity::Report`] a timing expectation is
/// reported with its value (or why it has none), not judged, and does not fail.
pub(crate) fn evaluate(expect: &BTreeMap<Metric, Comparison>, measures: &Measures, capacity: Capacity) -> Vec<Check> {
    expect
        .iter()
        .map(|(metric, cmp)| {
            let reported = metric.is_timing() && capacity == Capacity::Report;
            match metric.of(measures) {
                Ok(actual) if reported => {
                    let expect = format!(
                        "{metric} {cmp} (not judged: timing under --capacity report; held: {})",
                        cmp.holds(actual)
                    );
                    Check { expect, actual, ok: true, judged: false }
                }
                Ok(actual) => Check { expect: format!("{metric} {cmp}"), actual, ok: cmp.holds(actual), judged: true },
                Err(why) => Check {
                    expect: format!("{metric} {cmp} (not judged: {why})"),
                    actual: 0,
                    ok: reported,
                    judged: false,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Comparison, String> {
        Comparison::try_from(RawComparison::Text(text.into()))
    }

    /// An expectation on a count judges the count: `misroutes = "== 4"` holds for four
    /// misrouted replies and fails for one (as for one flow with four), and `> 0` for both.
    #[test]
    fn a_count_expectation_depends_on_the_count_not_only_on_its_sign() {
        let expect = BTreeMap::from([(Metric::Misroutes, parse("== 4").unwrap())]);
        let some = BTreeMap::from([(Metric::Misroutes, parse("> 0").unwrap())]);
        let mut measures = Measures::default();
        for (misroutes, exact) in [(4, true), (1, false), (5, false), (0, false)] {
            measures.tally.counted.misroutes = misroutes;
            let check = &evaluate(&expect, &measures, Capacity::Judge)[0];
            assert_eq!((check.ok, check.actual), (exact, misroutes), "{check:?}");
            assert_eq!(evaluate(&some, &measures, Capacity::Judge)[0].ok, misroutes > 0);
        }
    }

    #[test]
    fn parses_every_operator() {
        assert_eq!(parse("== 0"), Ok(Comparison { op: Op::Eq, value: 0 }));
        assert_eq!(parse(">=3"), Ok(Comparison { op: Op::Ge, value: 3 }));
        assert_eq!(parse(" > 0 "), Ok(Comparison { op: Op::Gt, value: 0 }));
        assert_eq!(parse("<= 5"), Ok(Comparison { op: Op::Le, value: 5 }));
        assert_eq!(parse("!= 1").map(|c| c.holds(2)), Ok(true));
        for bad in ["0", "=> 1", "> -1", "> x", ""] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    /// Each operator at its bound and on either side of it: an expectation `< 5` fails at 5.
    #[test]
    fn every_operator_holds_exactly_where_it_says() {
        let table = [
            ("== 5", [false, true, false]),
            ("!= 5", [true, false, true]),
            ("> 5", [false, false, true]),
            (">= 5", [false, true, true]),
            ("< 5", [true, false, false]),
            ("<= 5", [true, true, false]),
        ];
        for (text, expected) in table {
            let comparison = parse(text).unwrap();
            assert_eq!([4, 5, 6].map(|actual| comparison.holds(actual)), expected, "{text}");
        }
    }

    /// The sock_ops failure counts add both sides: a server out of option space and a client
    /// out of it are both failures of the same kind.
    #[test]
    fn tpr_failures_count_both_sides() {
        use zrlab_control::tpr::TprCounters;
        let side = |no_space, skipped| TprCounters { no_space, skipped, ..TprCounters::default() };
        let measures = Measures {
            tpr: Some(crate::measures::TprTotals { server: side(2, 7), client: side(3, 11) }),
            ..Measures::default()
        };
        assert_eq!(Metric::TprNoSpace.of(&measures), Ok(5));
        assert_eq!(Metric::TprSkipped.of(&measures), Ok(18));
    }

    #[test]
    fn only_comparisons_that_exclude_zero_require_a_failure() {
        for text in ["> 0", ">= 1", "== 3", "!= 0"] {
            assert!(parse(text).unwrap().requires_positive(), "{text}");
        }
        for text in ["== 0", ">= 0", "< 5", "<= 1", "!= 1"] {
            assert!(!parse(text).unwrap().requires_positive(), "{text}");
        }
    }

    #[test]
    fn a_reported_capacity_never_fails_and_every_other_metric_still_does() {
        let expect = BTreeMap::from([
            (Metric::CapacityDipPct, parse("<= 10").unwrap()),
            (Metric::Resets, parse("== 0").unwrap()),
        ]);
        let mut measures = Measures { capacity_dip_pct: Ok(48), ..Measures::default() };
        measures.tally.counted.resets = 1;
        let judged = evaluate(&expect, &measures, Capacity::Judge);
        assert!(judged.iter().all(|c| !c.ok && c.judged), "{judged:?}");
        let reported = evaluate(&expect, &measures, Capacity::Report);
        let capacity = reported.iter().find(|c| c.expect.starts_with("capacity_dip_pct")).unwrap();
        assert!(capacity.ok && !capacity.judged && capacity.actual == 48, "{capacity:?}");
        assert!(capacity.expect.contains("not judged") && capacity.expect.contains("held: false"), "{capacity:?}");
        assert!(reported.iter().any(|c| c.expect == "resets == 0" && !c.ok), "{reported:?}");
        // The reply gap is a timing figure too: reported, not judged, under `Report` only.
        let gap = BTreeMap::from([(Metric::MaxReplyGapMs, parse("<= 200").unwrap())]);
        let measures = Measures { max_reply_gap_ms: Some(370), ..Measures::default() };
        let judged = &evaluate(&gap, &measures, Capacity::Judge)[0];
        assert!(!judged.ok && judged.judged, "{judged:?}");
        let reported = &evaluate(&gap, &measures, Capacity::Report)[0];
        assert!(reported.ok && !reported.judged && reported.expect.contains("not judged"), "{reported:?}");
    }

    /// Before issue 20 a capacity the client's own stalls left without a figure passed as
    /// "not judged"; now a figure the run could not measure fails, and says why.
    /// `releases_unsteered == 0` holds only where some release's dispatcher program was read:
    /// a run whose programs were never read (or that had no release) is not judged.
    #[test]
    fn unsteered_releases_are_judged_only_where_a_program_was_read() {
        let expect = BTreeMap::from([(Metric::ReleasesUnsteered, parse("== 0").unwrap())]);
        let release = |unsteered, steering_read| Measures {
            release: Some(crate::release::FleetCounters { unsteered, steering_read, ..Default::default() }),
            ..Measures::default()
        };
        let verdict = |measures: &Measures| {
            let check = &evaluate(&expect, measures, Capacity::Judge)[0];
            (check.ok, check.judged)
        };
        assert_eq!(verdict(&release(0, 1)), (true, true));
        assert_eq!(verdict(&release(1, 1)), (false, true));
        assert_eq!(verdict(&release(0, 0)), (false, false), "no program read: not judged");
        assert_eq!(verdict(&Measures::default()), (false, false), "no release at all");
    }

    /// A run that killed no backend, or whose killed backend stayed in some node's rings past
    /// the wait, has no detection time and no dead ids to count: not judged, and failing.
    #[test]
    fn a_dead_backends_figures_are_judged_only_where_a_backend_was_killed() {
        let expect = BTreeMap::from([
            (Metric::BackendOutOfRingsMs, parse("<= 800").unwrap()),
            (Metric::DeadIdsLive, parse("== 0").unwrap()),
        ]);
        let died = |out_of_rings_ms, ids_still_live| Measures {
            deaths: Some(crate::measures::DeathMeasures { out_of_rings_ms, ids_still_live }),
            ..Measures::default()
        };
        let verdicts = |measures: &Measures| -> Vec<(bool, bool, u64)> {
            evaluate(&expect, measures, Capacity::Judge).iter().map(|c| (c.ok, c.judged, c.actual)).collect()
        };
        assert_eq!(verdicts(&died(Some(470), 0)), [(true, true, 470), (true, true, 0)]);
        assert_eq!(verdicts(&died(Some(801), 2)), [(false, true, 801), (false, true, 2)]);
        assert_eq!(verdicts(&died(None, 0)), [(false, false, 0), (true, true, 0)], "never out of every ring");
        assert_eq!(verdicts(&Measures::default()), [(false, false, 0), (false, false, 0)], "nothing killed");
        // The detection time is a timing figure: reported, not judged, under `Report`.
        let reported = &evaluate(&expect, &died(Some(900), 0), Capacity::Report)[0];
        assert!(reported.ok && !reported.judged, "{reported:?}");
    }

    /// Under loss, UDP drops are judged against the UDP datagrams the links dropped: each may
    /// cost one request and no more; without an impairment the figure is not judged.
    #[test]
    fn udp_drops_are_judged_against_the_datagrams_the_links_dropped() {
        let expect = BTreeMap::from([
            (Metric::UdpDropsBeyondLoss, parse("== 0").unwrap()),
            (Metric::TcpDrops, parse("== 0").unwrap()),
            (Metric::ImpairedDropped, parse("> 0").unwrap()),
        ]);
        let lossy = |udp_drops, tcp_drops, dropped_udp, dropped| {
            let mut measures = Measures {
                impair: Some(zrlab_control::impair::DirectionCounters { dropped, dropped_udp, ..Default::default() }),
                ..Measures::default()
            };
            measures.tally.counted.udp_drops = udp_drops;
            measures.tally.counted.tcp_drops = tcp_drops;
            measures
        };
        let verdicts = |measures: &Measures| -> Vec<(bool, bool, u64)> {
            evaluate(&expect, measures, Capacity::Judge).iter().map(|c| (c.ok, c.judged, c.actual)).collect()
        };
        // In order: tcp_drops, udp_drops_beyond_loss, impaired_dropped.
        assert_eq!(verdicts(&lossy(40, 0, 40, 90)), [(true, true, 0), (true, true, 0), (true, true, 90)]);
        let mut duplicated = lossy(40, 0, 40, 90);
        duplicated.impair.as_mut().unwrap().duplicated = 12;
        assert_eq!(Metric::ImpairedDuplicated.of(&duplicated), Ok(12), "the duplicates, not the drops");
        assert!(Metric::ImpairedDuplicated.of(&Measures::default()).is_err(), "no impairment");
        assert_eq!(verdicts(&lossy(30, 0, 40, 90))[1], (true, true, 0), "fewer drops than losses");
        assert_eq!(verdicts(&lossy(41, 0, 40, 90))[1], (false, true, 1), "one drop no loss explains");
        assert_eq!(verdicts(&lossy(0, 2, 0, 90))[0], (false, true, 2), "TCP retransmits: no drop excused");
        let unimpaired = verdicts(&Measures::default());
        assert_eq!((unimpaired[1], unimpaired[2]), ((false, false, 0), (false, false, 0)), "no impairment: not judged");
    }

    #[test]
    fn a_figure_the_run_could_not_measure_is_not_judged_and_fails() {
        let expect = BTreeMap::from([
            (Metric::CapacityDipPct, parse("<= 10").unwrap()),
            (Metric::MaxReplyGapMs, parse("<= 200").unwrap()),
            (Metric::LatencyP99Ms, parse("<= 100").unwrap()),
        ]);
        let measures = Measures { capacity_dip_pct: Err("2 judged seconds after it".into()), ..Measures::default() };
        for check in evaluate(&expect, &measures, Capacity::Judge) {
            assert!(!check.ok && !check.judged && check.expect.contains("(not judged: "), "{check:?}");
        }
        let reported = &evaluate(&expect, &measures, Capacity::Report)[0];
        assert!(reported.ok && !reported.judged && reported.expect.contains("2 judged seconds"), "{reported:?}");
    }

    #[test]
    fn latency_and_gap_expectations_judge_their_figures() {
        let expect = BTreeMap::from([(Metric::MaxReplyGapMs, parse("<= 200").unwrap())]);
        for (gap, ok) in [(180, true), (200, true), (420, false)] {
            let measures = Measures { max_reply_gap_ms: Some(gap), ..Measures::default() };
            let check = &evaluate(&expect, &measures, Capacity::Judge)[0];
            assert_eq!((check.ok, check.judged, check.actual), (ok, true, gap), "{check:?}");
        }
    }
}
