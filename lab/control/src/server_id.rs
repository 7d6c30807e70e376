//! Server ids: which id each backend carries, and which ids the LB nodes must treat as live.
//!
//! DESIGN.md section 1: "an out-of-band job assigns random server ids to hosts and syncs them to
//! every LB's control plane". This module is that job's logic, with no I/O: the [`Registry`]
//! draws unique ids from a seed and tracks each backend's [`Membership`]; whoever deploys
//! programs reads [`Registry::id`] for a backend's sock_ops map and [`Registry::live`] for the
//! LB nodes' live-id tables (`scenario::lb` does both after every change).
//!
//! The rule for the live table: a backend's id is live while its host serves connections,
//! whether or not the rings still send it new ones. So a **drained** backend keeps its id live
//! (its established connections must keep reaching it after any LB failover), while a backend
//! that is **down** or **removed** from the configuration leaves the table: a packet carrying its
//! id then falls back to the connection table and the ring, like a packet without one.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

/// Where a backend stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// In the rings: takes new flows.
    Serving,
    /// Out of the rings but up: keeps its established flows.
    Drained,
    /// Not in the configuration (weight 0, or never added).
    Removed,
    /// Its host is down.
    Down,
}

impl Membership {
    /// Whether a backend in this state keeps its id live.
    pub fn id_live(self) -> bool {
        matches!(self, Self::Serving | Self::Drained)
    }
}

/// Backends, their ids and memberships.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    entries: BTreeMap<String, (u32, Membership)>,
}

/// Salt mixed into the scenario seed, so server ids do not repeat the workload's other draws.
const SEED_SALT: u64 = 0x5e4e_e41d;

impl Registry {
    /// Gives each of `backends` a distinct random id in `1..=max`, drawn from `seed`; all start
    /// [`Membership::Serving`]. Id 0 means "no id" on the wire, so it is never drawn.
    ///
    /// # Panics
    /// If `max` is smaller than the number of backends (no distinct ids to draw).
    pub fn assign(seed: u64, backends: &[String], max: u32) -> Self {
        assert!(max as usize >= backends.len(), "{} backends cannot have distinct ids up to {max}", backends.len());
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ SEED_SALT);
        let mut used = BTreeSet::new();
        let entries = backends
            .iter()
            .map(|backend| {
                let id = loop {
                    let id = rng.random_range(1..=max);
                    if used.insert(id) {
                        break id;
                    }
                };
                (backend.clone(), (id, Membership::Serving))
            })
            .collect();
        Self { entries }
    }

    /// Backends with the ids and memberships given (a replay's, from its LB configuration).
    pub fn fixed(entries: impl IntoIterator<Item = (String, u32, Membership)>) -> Self {
        Self { entries: entries.into_iter().map(|(backend, id, m)| (backend, (id, m))).collect() }
    }

    /// `backend`'s id.
    pub fn id(&self, backend: &str) -> Option<u32> {
        self.entries.get(backend).map(|(id, _)| *id)
    }

    /// Records that `backend` is now `membership`; false if it is not registered.
    pub fn set(&mut self, backend: &str, membership: Membership) -> bool {
        match self.entries.get_mut(backend) {
            Some(entry) => {
                entry.1 = membership;
                true
            }
            None => false,
        }
    }

    /// Every backend and its id.
    pub fn ids(&self) -> impl Iterator<Item = (&str, u32)> {
        self.entries.iter().map(|(name, (id, _))| (name.as_str(), *id))
    }

    /// The live-id table: id -> backend, for every backend whose id is live.
    pub fn live(&self) -> BTreeMap<u32, String> {
        self.entries.iter().filter(|(_, (_, m))| m.id_live()).map(|(name, (id, _))| (*id, name.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("be{i}")).collect()
    }

    #[test]
    fn ids_are_distinct_nonzero_within_the_layout_and_seeded() {
        for max in [5, 0xffff, u32::MAX] {
            let registry = Registry::assign(7, &backends(5), max);
            let ids: BTreeSet<u32> = registry.ids().map(|(_, id)| id).collect();
            assert_eq!(ids.len(), 5, "distinct for max {max}");
            assert!(ids.iter().all(|id| (1..=max).contains(id)), "{ids:?} within 1..={max}");
            assert_eq!(registry, Registry::assign(7, &backends(5), max), "the same seed draws the same ids");
        }
        // Every seed draws its own ids: 0 and 1 too, which differ only in a bit the salt has,
        // and 0 and 2, only in a bit it lacks (the mix keeps every bit of the seed).
        for (a, b) in [(7, 8), (0, 1), (0, 2)] {
            assert_ne!(Registry::assign(a, &backends(5), u32::MAX), Registry::assign(b, &backends(5), u32::MAX));
        }
    }

    #[test]
    fn drained_backends_stay_live_and_down_or_removed_ones_leave() {
        let mut registry = Registry::assign(1, &backends(4), u32::MAX);
        let id = |r: &Registry, b: &str| r.id(b).unwrap();
        assert_eq!(registry.live().len(), 4);
        assert!(registry.set("be1", Membership::Drained));
        assert!(registry.set("be2", Membership::Down));
        assert!(registry.set("be3", Membership::Removed));
        let live = registry.live();
        assert_eq!(live.get(&id(&registry, "be1")).map(String::as_str), Some("be1"), "drained keeps its id");
        assert!(!live.contains_key(&id(&registry, "be2")), "down leaves");
        assert!(!live.contains_key(&id(&registry, "be3")), "removed leaves");
        assert_eq!(live.len(), 2);
        assert!(registry.set("be2", Membership::Serving));
        assert!(registry.live().contains_key(&id(&registry, "be2")), "back up, back live");
        assert!(!registry.set("be9", Membership::Serving), "unknown backends are refused");
    }
}
