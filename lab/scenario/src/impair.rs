//! A scenario's lossy links: `[[impair]]` entries (from the start) and `impair-links` events
//! (from their point in the timeline, also `lab event` on a kept run) put `tc_impair` on a
//! node's interfaces (`zrlab_control::impair`) with seeded drop and duplication rates per
//! direction; the run's measures add up what it did.
//!
//! ```toml
//! [[impair]]
//! node = "router"        # every interface of the node, unless `ifname` names one
//! drop_ppm = 10_000      # 1% of frames dropped ...
//! dup_ppm = 5_000        # ... and 0.5% of the others duplicated
//! direction = "both"     # or "ingress" (frames the interface receives) / "egress"
//! ```

use serde::{Deserialize, Serialize};

use zrlab_common::impair::{EGRESS, INGRESS};
use zrlab_control::impair::{DirectionCounters, Impairment, Rates};
use zrlab_host::error::{LabError, Result};
use zrlab_topology::Lab;

/// Which of an interface's directions an impairment applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Frames the interface receives and frames it sends.
    #[default]
    Both,
    /// Frames the interface receives.
    Ingress,
    /// Frames the interface sends.
    Egress,
}

/// Rates on a node's interfaces.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImpairSpec {
    /// The node.
    pub node: String,
    /// One of its interfaces; every one if absent.
    #[serde(default)]
    pub ifname: Option<String>,
    /// Frames dropped per million.
    #[serde(default)]
    pub drop_ppm: u32,
    /// Frames duplicated per million (of those not dropped).
    #[serde(default)]
    pub dup_ppm: u32,
    /// The directions.
    #[serde(default)]
    pub direction: Direction,
}

impl ImpairSpec {
    /// Why this cannot apply to a lab of `topology`, as (field, message).
    pub(crate) fn invalid(&self, topology: &zrlab_topology::Topology) -> Option<(&'static str, String)> {
        if topology.node(&self.node).is_none() {
            return Some(("node", format!("no node {:?} in the topology", self.node)));
        }
        if let Some(ifname) = &self.ifname
            && !interfaces_in(topology, &self.node).contains(ifname)
        {
            return Some(("ifname", format!("{:?} has no interface {ifname:?}", self.node)));
        }
        let rates = Rates { drop_ppm: self.drop_ppm, dup_ppm: self.dup_ppm };
        rates.invalid().map(|why| ("drop_ppm", why))
    }
}

/// `node`'s interfaces in `topology`.
fn interfaces_in(topology: &zrlab_topology::Topology, node: &str) -> Vec<String> {
    topology.spec.links.iter().flat_map(|l| [&l.a, &l.b]).filter(|e| e.node == node).map(|e| e.ifname.clone()).collect()
}

/// The impairments of a run, one per impaired interface. Dropped before the lab.
pub struct Impairments {
    seed: u64,
    attached: Vec<(String, String, Impairment)>,
}

impl Impairments {
    /// None yet; the interfaces' draws will be seeded from `seed` (each its own stream).
    pub fn new(seed: u64) -> Self {
        Self { seed, attached: Vec::new() }
    }

    /// Applies `spec` in `lab`: attaches `tc_impair` where it is not yet, then sets the rates
    /// of the chosen directions (the other direction keeps its rates, none on a new one).
    pub fn apply(&mut self, lab: &Lab, spec: &ImpairSpec) -> Result<()> {
        let all = interfaces_in(lab.topology(), &spec.node);
        let ifnames: Vec<String> = match &spec.ifname {
            Some(ifname) if all.contains(ifname) => vec![ifname.clone()],
            Some(ifname) => return Err(LabError::Unsupported(format!("{:?} has no interface {ifname:?}", spec.node))),
            None => all,
        };
        let rates = Rates { drop_ppm: spec.drop_ppm, dup_ppm: spec.dup_ppm };
        for ifname in ifnames {
            let index = match self.attached.iter().position(|(n, i, _)| *n == spec.node && *i == ifname) {
                Some(index) => index,
                None => {
                    // Each interface its own stream of draws, reproducible from the run's seed.
                    let seed = self.seed ^ (self.attached.len() as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    let netns = &lab.node(&spec.node)?.netns;
                    let impairment = Impairment::attach(netns, &ifname, Rates::default(), Rates::default(), seed)?;
                    self.attached.push((spec.node.clone(), ifname.clone(), impairment));
                    self.attached.len() - 1
                }
            };
            let impairment = &mut self.attached[index].2;
            if spec.direction != Direction::Egress {
                impairment.set(INGRESS, rates)?;
            }
            if spec.direction != Direction::Ingress {
                impairment.set(EGRESS, rates)?;
            }
        }
        Ok(())
    }

    /// Every impaired interface's counters, both directions, added up; `None` if none is.
    pub fn totals(&self) -> Result<Option<DirectionCounters>> {
        if self.attached.is_empty() {
            return Ok(None);
        }
        let mut total = DirectionCounters::default();
        for (_, _, impairment) in &self.attached {
            let (ingress, egress) = impairment.counters()?;
            total.add(&ingress);
            total.add(&egress);
        }
        Ok(Some(total))
    }

    /// `node ifname tc_impair` for every impaired interface (a kept run's status).
    pub fn programs(&self) -> Vec<String> {
        self.attached.iter().map(|(node, ifname, _)| format!("{node} {ifname} tc_impair (tcx)")).collect()
    }
}
