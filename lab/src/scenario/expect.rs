//! Expectations: `metric <op> value` checks a scenario states about its tally.
//!
//! In a scenario file they read `resets = "== 0"` or `excused_flows = "> 0"`; a bare integer
//! means `==`.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use super::lb::LbTotals;
use crate::workload::accounting::Tally;

/// Everything a variant measured: the flows' tally, and what the LB programs counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Measures {
    /// The flows.
    pub tally: Tally,
    /// The LB and decap programs' counters, when the scenario runs an LB.
    pub lb: Option<LbTotals>,
    /// Backend weights the LB was given (to judge how flows spread), when it runs one.
    pub weights: BTreeMap<String, u32>,
}

impl Measures {
    /// The largest relative deviation, in percent, of a backend's share of flows from its
    /// weight's share (0 without weights).
    pub fn share_error_pct(&self) -> u64 {
        let total_weight: u32 = self.weights.values().sum();
        let total_flows: u64 = self.tally.owners.values().sum();
        if total_weight == 0 || total_flows == 0 {
            return 0;
        }
        self.weights
            .iter()
            .filter(|(_, w)| **w > 0)
            .map(|(node, w)| {
                let expected = f64::from(*w) / f64::from(total_weight);
                let observed = self.tally.owners.get(node).copied().unwrap_or(0) as f64 / total_flows as f64;
                ((observed - expected).abs() / expected * 100.0).round() as u64
            })
            .max()
            .unwrap_or(0)
    }
}

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
}

impl Metric {
    /// Whether the metric needs an LB in the scenario.
    pub fn needs_lb(self) -> bool {
        matches!(
            self,
            Self::ShareErrorPct
                | Self::LbTx
                | Self::LbRingRouted
                | Self::LbTableHits
                | Self::LbTcpIdRouted
                | Self::LbQuicIdRouted
                | Self::Decapsulated
        )
    }

    /// The metric's value in `measures`.
    pub fn of(self, measures: &Measures) -> u64 {
        let tally = &measures.tally;
        let lb = measures.lb.unwrap_or_default();
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
    /// Whether `actual <op> value` holds.
    pub fn holds(&self, actual: u64) -> bool {
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
    /// `metric <op> value`, as text.
    pub expect: String,
    /// The measured value.
    pub actual: u64,
    /// Whether it held.
    pub ok: bool,
}

/// Evaluates every expectation against `tally`.
pub fn evaluate(expect: &BTreeMap<Metric, Comparison>, measures: &Measures) -> Vec<Check> {
    expect
        .iter()
        .map(|(metric, cmp)| {
            let actual = metric.of(measures);
            Check { expect: format!("{metric} {cmp}"), actual, ok: cmp.holds(actual) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Comparison, String> {
        Comparison::try_from(RawComparison::Text(text.into()))
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
}
