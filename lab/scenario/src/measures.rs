//! What a variant measured: the flows' tally and the counters of the programs that carried
//! them. Expectations ([`super::expect`]) read these; deployments ([`super::lb`]) fill them.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::release::FleetCounters;
use zrlab_control::{impair::DirectionCounters, tpr::TprCounters};
use zrlab_workload::accounting::Tally;

/// What the LB and decap programs counted during a run, summed over nodes and CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LbTotals {
    /// Packets encapsulated and transmitted.
    pub tx: u64,
    /// Packets routed by the ring.
    pub ring_routed: u64,
    /// Connection-table hits (and SYN-cache hits).
    pub table_hits: u64,
    /// Connection-table misses.
    pub table_misses: u64,
    /// TCP packets routed by server id.
    pub tcp_id_routed: u64,
    /// QUIC packets routed by server id.
    pub quic_id_routed: u64,
    /// Packets whose server id was not live (they fell back to the table and ring).
    pub id_unknown: u64,
    /// Packets the backends decapsulated.
    pub decapsulated: u64,
    /// Flows found in the connection tables of more than one LB node at the end: flows an LB
    /// node inherited from another (ECMP moved them), the proof that a failover event reached
    /// the flows.
    pub inherited_flows: u64,
    /// Ring changes the LB nodes' health checkers made (out or back in, per node).
    pub health_changes: u64,
    /// Upgrades of LB nodes' data paths (in place or naive).
    #[serde(default)]
    pub upgrades: u64,
    /// Packets forwarded by the upgraded version (`xdp_lb_next`): that the new version handled
    /// the traffic after the swap.
    #[serde(default)]
    pub next_tx: u64,
    /// Connection-table entries in-place upgrades migrated into the new layout.
    #[serde(default)]
    pub entries_migrated: u64,
    /// VIP packets too big for their real's path, answered with ICMP "too big".
    #[serde(default)]
    pub too_big: u64,
    /// ICMP errors to a VIP sent on to their flow's real.
    #[serde(default)]
    pub icmp_routed: u64,
}

/// What the `tpr` sock_ops programs counted, per side, summed over nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TprTotals {
    /// The backends' `tpr_server` programs.
    pub server: TprCounters,
    /// The client's `tpr_client` program.
    pub client: TprCounters,
}

/// Everything a variant measured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Measures {
    /// The flows.
    pub tally: Tally,
    /// The LB and decap programs' counters, when the scenario runs an LB.
    pub lb: Option<LbTotals>,
    /// The sock_ops programs' counters, when the scenario attaches them.
    pub tpr: Option<TprTotals>,
    /// Backend weights the LB was given (to judge how flows spread), when it runs one.
    pub weights: BTreeMap<String, u32>,
    /// The release dispatchers' counters, when the scenario releases.
    pub release: Option<FleetCounters>,
    /// The capacity dip around releases (`timeline::Timeline::capacity_dip_pct`), or why the
    /// run has none (release scenarios only).
    pub capacity_dip_pct: Result<u64, String>,
    /// The worst second's 99th-percentile reply latency (`timeline::Timeline::latency_p99_ms`).
    pub latency_p99_ms: Option<u64>,
    /// The longest gap between two replies of a counted flow
    /// (`timeline::Timeline::max_reply_gap_ms`).
    pub max_reply_gap_ms: Option<u64>,
    /// The flows with the longest gaps between their replies, longest first: (flow, ms).
    pub longest_gaps: Vec<(u32, u64)>,
    /// What the `kill-backend` events measured, when the run has any.
    pub deaths: Option<DeathMeasures>,
    /// What the link impairments did, every impaired interface and direction added up, when
    /// the run impaired any.
    pub impair: Option<DirectionCounters>,
    /// TCP flows by the maximum segment size they ended with (`TCP_MAXSEG` after their last
    /// reply): what path-MTU discovery taught them.
    pub learned_mss: BTreeMap<u32, u64>,
}

/// What a run's `kill-backend` events measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DeathMeasures {
    /// The longest time, over the killed backends, from a death to the last LB node's ring
    /// change that took the backend out, in milliseconds of the scenario's time; `None` if a
    /// killed backend was not out of every node's rings within the detection budget.
    pub out_of_rings_ms: Option<u64>,
    /// (LB node, killed backend) pairs whose server id the node's live-id table still held
    /// at the end.
    pub ids_still_live: u64,
}

impl Default for Measures {
    fn default() -> Self {
        Self {
            tally: Tally::default(),
            lb: None,
            tpr: None,
            weights: BTreeMap::new(),
            release: None,
            capacity_dip_pct: Err("no release in the run".into()),
            latency_p99_ms: None,
            max_reply_gap_ms: None,
            longest_gaps: Vec::new(),
            deaths: None,
            impair: None,
            learned_mss: BTreeMap::new(),
        }
    }
}

impl Measures {
    /// The largest relative deviation, in percent, of a backend's share of flows from its
    /// weight's share (0 without weights).
    pub(crate) fn share_error_pct(&self) -> u64 {
        let total_weight: u32 = self.weights.values().sum();
        let total_flows: u64 = self.tally.owners.values().sum();
        // No flow has no share to miss (and would divide by zero). Without a weight above zero
        // the filter below leaves no backend to judge.
        if total_flows == 0 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn measures(weights: &[(&str, u32)], owners: &[(&str, u64)]) -> Measures {
        let mut m =
            Measures { weights: weights.iter().map(|(n, w)| ((*n).to_owned(), *w)).collect(), ..Measures::default() };
        m.tally.owners = owners.iter().map(|(n, f)| ((*n).to_owned(), *f)).collect();
        m
    }

    /// The share error is the largest deviation relative to the weight's share: be1 (weight 1
    /// of 4) took 20 of 100 flows where 25 were its share, 20% short; be2 (3 of 4) took 70 where
    /// 75, 7% short; be3 (weight 0, drained) and its stragglers are not judged.
    #[test]
    fn the_share_error_is_the_largest_relative_deviation_of_a_weighted_backend() {
        let m = measures(&[("be1", 1), ("be2", 3), ("be3", 0)], &[("be1", 20), ("be2", 70), ("be3", 10)]);
        assert_eq!(m.share_error_pct(), 20);
        let m = measures(&[("be1", 1), ("be2", 3)], &[("be1", 26), ("be2", 74)]);
        assert_eq!(m.share_error_pct(), 4, "be1 4% over, be2 1% under");
        // A weighted backend that took no flow missed its whole share.
        assert_eq!(measures(&[("be1", 1), ("be2", 1)], &[("be1", 50)]).share_error_pct(), 100);
        // A backend taking twice its share is 100% over, not 50%.
        assert_eq!(measures(&[("be1", 1), ("be2", 3)], &[("be1", 50), ("be2", 50)]).share_error_pct(), 100);
    }

    #[test]
    fn no_weight_or_no_flow_has_no_share_error() {
        assert_eq!(measures(&[], &[("be1", 5)]).share_error_pct(), 0);
        assert_eq!(measures(&[("be1", 0)], &[("be1", 5)]).share_error_pct(), 0);
        assert_eq!(measures(&[("be1", 1), ("be2", 1)], &[]).share_error_pct(), 0);
    }
}
