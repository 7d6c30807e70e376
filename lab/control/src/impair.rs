//! Seeded link impairment (`tc_impair`): loss and duplication on one interface, per direction,
//! with its counters. The lab's stand-in for netem, which this host kernel lacks.
//!
//! One [`Impairment`] per interface: its own object and maps, attached with TCX at ingress and
//! egress (kernel 6.6+; older kernels refuse the attach, and scenarios that need it say so
//! with the `tcx` feature). The rates can change while it runs (a timeline event).

use aya::maps::Array;
use serde::{Deserialize, Serialize};
use zrlab_common::impair::{CONFIG_MAP, COUNTERS_MAP, EGRESS, INGRESS, ImpairConfig, PPM, counter};
use zrlab_host::{
    error::{LabError, Result},
    netns::Netns,
};

use crate::bpf::{Loaded, Object, map_err, sum_counters};

/// One direction's rates, in parts per million.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rates {
    /// Frames dropped per million.
    pub drop_ppm: u32,
    /// Frames duplicated per million (of those not dropped).
    pub dup_ppm: u32,
}

impl Rates {
    /// Why these rates cannot be applied, if they cannot.
    pub fn invalid(&self) -> Option<String> {
        (self.drop_ppm > PPM || self.dup_ppm > PPM)
            .then(|| format!("rates above one million per million ({} drop, {} dup)", self.drop_ppm, self.dup_ppm))
    }
}

/// What one direction of an impaired interface counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionCounters {
    /// Frames seen.
    pub seen: u64,
    /// Frames dropped.
    pub dropped: u64,
    /// Frames duplicated.
    pub duplicated: u64,
    /// Dropped TCP segments.
    pub dropped_tcp: u64,
    /// Dropped UDP datagrams.
    pub dropped_udp: u64,
    /// Duplicates the kernel refused to make.
    pub dup_failed: u64,
}

impl DirectionCounters {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &Self) {
        self.seen += other.seen;
        self.dropped += other.dropped;
        self.duplicated += other.duplicated;
        self.dropped_tcp += other.dropped_tcp;
        self.dropped_udp += other.dropped_udp;
        self.dup_failed += other.dup_failed;
    }
}

/// `tc_impair` on one interface.
#[derive(Debug)]
pub struct Impairment {
    bpf: Loaded,
    seed: u64,
}

impl Impairment {
    /// Attaches the impairment to `ifname` in `netns` with `ingress` and `egress` rates, each
    /// direction's draws seeded from `seed`.
    pub fn attach(netns: &Netns, ifname: &str, ingress: Rates, egress: Rates, seed: u64) -> Result<Self> {
        let mut impairment = Self { bpf: Loaded::load(Object::TcImpair, &[])?, seed };
        impairment.set(INGRESS, ingress)?;
        impairment.set(EGRESS, egress)?;
        impairment.bpf.attach_tcx("impair_ingress", netns, ifname, aya::programs::TcAttachType::Ingress)?;
        impairment.bpf.attach_tcx("impair_egress", netns, ifname, aya::programs::TcAttachType::Egress)?;
        Ok(impairment)
    }

    /// Sets the rates of `direction` (`zrlab_common::impair::INGRESS` or `EGRESS`).
    pub fn set(&mut self, direction: u32, rates: Rates) -> Result<()> {
        if let Some(why) = rates.invalid() {
            return Err(LabError::Unsupported(why));
        }
        let config = ImpairConfig { drop_ppm: rates.drop_ppm, dup_ppm: rates.dup_ppm, seed: self.seed };
        let mut map: Array<_, ImpairConfig> =
            Array::try_from(self.bpf.map_mut(CONFIG_MAP)?).map_err(map_err("IMPAIR_CONFIG"))?;
        map.set(direction, config, 0).map_err(map_err("write IMPAIR_CONFIG"))
    }

    /// What each direction counted: (ingress, egress).
    pub fn counters(&self) -> Result<(DirectionCounters, DirectionCounters)> {
        let slots = sum_counters(self.bpf.map(COUNTERS_MAP)?, counter::SLOTS, "IMPAIR_COUNTERS")?;
        let of = |direction: u32| {
            let at = |slot: u32| slots[(direction * counter::PER_DIRECTION + slot) as usize];
            DirectionCounters {
                seen: at(counter::SEEN),
                dropped: at(counter::DROPPED),
                duplicated: at(counter::DUPLICATED),
                dropped_tcp: at(counter::DROPPED_TCP),
                dropped_udp: at(counter::DROPPED_UDP),
                dup_failed: at(counter::DUP_FAILED),
            }
        };
        Ok((of(INGRESS), of(EGRESS)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field adds up, each from its own field (distinct values per field).
    #[test]
    fn counters_add_field_by_field() {
        let one =
            DirectionCounters { seen: 1, dropped: 2, duplicated: 3, dropped_tcp: 4, dropped_udp: 5, dup_failed: 6 };
        let mut total = DirectionCounters {
            seen: 10,
            dropped: 20,
            duplicated: 30,
            dropped_tcp: 40,
            dropped_udp: 50,
            dup_failed: 60,
        };
        total.add(&one);
        let want = DirectionCounters {
            seen: 11,
            dropped: 22,
            duplicated: 33,
            dropped_tcp: 44,
            dropped_udp: 55,
            dup_failed: 66,
        };
        assert_eq!(total, want);
    }

    #[test]
    fn rates_above_one_million_per_million_are_invalid_and_up_to_it_valid() {
        assert_eq!(Rates { drop_ppm: PPM, dup_ppm: PPM }.invalid(), None);
        assert!(Rates { drop_ppm: PPM + 1, dup_ppm: 0 }.invalid().is_some());
        assert!(Rates { drop_ppm: 0, dup_ppm: PPM + 1 }.invalid().is_some());
    }
}
