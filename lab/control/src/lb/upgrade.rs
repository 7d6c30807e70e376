//! Replacing an LB node's data path in place while traffic flows: one node at a time, no ECMP
//! change, no packet that meets no program, no flow that loses its table entry.
//!
//! The order, and why:
//! 1. **Plan** from the two objects' map definitions as their ELFs declare them (no map is
//!    created for this). A map both versions define alike is handed over: the new programs use
//!    the very kernel map the old ones use (rings, VIPs, reals, live ids, counters), so nothing in it is copied and nothing is lost. A map whose definition changed
//!    needs a migration this module knows: the connection tables (every entry converted to the
//!    new layout), or a stated reason to start it empty: the SYN cache (a SYN waiting in the old
//!    one loses nothing: its flow's next packet misses the new cache and the table and takes
//!    the ring, which an upgrade does not change, to the same real). Any other changed map
//!    refuses the upgrade, naming it: aya's loader would take over a pinned map whose layout
//!    changed without a word, and the new program would read the old entries wrongly.
//! 2. **Load** the new version with the handed-over maps (`Loaded::load_reusing`) and verify
//!    it; its connection tables are new (sized as the old ones) when their layout changed.
//! 3. **Copy** every entry of the old tables into the new ones, converted.
//! 4. **Swap** every attachment of `xdp_lb` with one link update (`Loaded::hand_over_xdp`).
//! 5. **Copy again**, without overwriting, what the old program wrote between 3 and 4; entries
//!    the new program wrote meanwhile are its own and stay.
//!
//! What can still be lost: an entry the old program writes while step 5 runs (a packet inside
//! the old program during the swap); its flow's next packet takes the ring, which the upgrade
//! did not change, to the same real. And an entry the old program *changed* between 3 and 4
//! keeps its first copy: only an id-routed flow's entry changes, and its id routes it anyway.
//! The old version's maps that were not handed over go when the old object is dropped.

use std::borrow::{Borrow, BorrowMut};

use aya::maps::{HashMap, MapData};
use serde::{Deserialize, Serialize};
use zrlab_common::lb::{CONN_TABLE_MAP, CONN6_TABLE_MAP, ConnEntry, ConnKey, ConnKeyV6, EntryStamp, SYN_CACHE_MAP};
use zrlab_host::error::Result;

use crate::{
    bpf::{Loaded, Object, map_err},
    handover::{Plan, plan},
    lb::balancer::{Settings, config, configure, entries},
};

/// A version of the LB's data path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Version {
    /// `xdp_lb`.
    #[default]
    Current,
    /// `xdp_lb_next`: the same path with another connection-table layout.
    Next,
}

impl Version {
    /// The object that holds this version.
    pub fn object(self) -> Object {
        match self {
            Self::Current => Object::XdpLb,
            Self::Next => Object::XdpLbNext,
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.object().name())
    }
}

/// `BPF_NOEXIST` (uapi `linux/bpf.h`): insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// The connection tables: migrated entry by entry when their layout changes.
const MIGRATED: [&str; 2] = [CONN_TABLE_MAP, CONN6_TABLE_MAP];
/// Started empty when their layout changes (why: the module's doc).
const RESET: [&str; 1] = [SYN_CACHE_MAP];

/// What an in-place upgrade did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgrade {
    /// The version replaced.
    pub from: Version,
    /// The version now running.
    pub to: Version,
    /// Maps the new version took over as they were.
    pub handed_over: Vec<String>,
    /// Maps whose entries were migrated into the new layout.
    pub migrated: Vec<String>,
    /// Maps the new version started empty.
    pub reset: Vec<String>,
    /// Connection-table entries migrated (both passes).
    pub entries_migrated: u64,
    /// Of those, entries the old program wrote between the first pass and the swap.
    pub entries_after_swap: u64,
    /// Attachments swapped with a link update.
    pub links_swapped: usize,
}

/// An entry in another version's layout.
pub(super) trait Migrate<E> {
    /// The entry, converted.
    fn migrate(&self) -> ConnEntry<E>;
}

impl Migrate<EntryStamp> for ConnEntry<u32> {
    /// Stamped as migrated from layout 1.
    fn migrate(&self) -> ConnEntry<EntryStamp> {
        let ConnEntry { real, vip_num, flags, proto, src, dst, pad, tail: _ } = *self;
        let tail = EntryStamp { version: zrlab_common::lb::CURRENT_LAYOUT, migrated: 1, pad: 0 };
        ConnEntry { real, vip_num, flags, proto, src, dst, pad, tail }
    }
}

impl Migrate<u32> for ConnEntry<EntryStamp> {
    /// The stamp dropped (a rollback).
    fn migrate(&self) -> ConnEntry<u32> {
        let ConnEntry { real, vip_num, flags, proto, src, dst, pad, tail: _ } = *self;
        ConnEntry { real, vip_num, flags, proto, src, dst, pad, tail: 0 }
    }
}

/// Upgrades `old` (version `from`) to version `to` as the module's doc says. Returns the new
/// object and what was done. On an error before the swap the old version runs on untouched.
pub(super) fn in_place(old: &mut Loaded, from: Version, settings: &Settings, to: Version) -> Result<(Loaded, Upgrade)> {
    let Plan { handed_over, migrated, reset } = plan(from.object(), to.object(), &MIGRATED, &RESET)?;
    let configuration = config(settings);
    let mut sized = Ok(());
    let mut new = Loaded::load_reusing(
        to.object(),
        |loader| sized = configure(loader, &configuration),
        &["xdp_lb"],
        old,
        &handed_over,
    )?;
    sized?;
    let first = copy(old, from, &mut new, to, &migrated, false)?;
    let links_swapped = old.hand_over_xdp("xdp_lb", &mut new)?;
    let late = copy(old, from, &mut new, to, &migrated, true)?;
    let report = Upgrade {
        from,
        to,
        handed_over,
        migrated,
        reset,
        entries_migrated: first + late,
        entries_after_swap: late,
        links_swapped,
    };
    Ok((new, report))
}

/// [`copy_all`] for the layouts of versions `from` and `to`; nothing when no table migrates
/// (the tables were handed over whole).
fn copy(
    old: &Loaded,
    from: Version,
    new: &mut Loaded,
    to: Version,
    migrated: &[String],
    only_missing: bool,
) -> Result<u64> {
    if migrated.is_empty() {
        return Ok(0);
    }
    match (from, to) {
        (Version::Current, Version::Next) => copy_all::<u32, EntryStamp>(old, new, only_missing),
        (Version::Next, Version::Current) => copy_all::<EntryStamp, u32>(old, new, only_missing),
        // A version to itself hands every map over: `plan` migrates nothing then.
        (Version::Current, Version::Current) | (Version::Next, Version::Next) => Ok(0),
    }
}

/// Copies every connection-table entry of `old` (entry tail `A`) into `new`'s (tail `B`),
/// converted; with `only_missing`, only entries `new` does not hold. The number copied.
fn copy_all<A, B>(old: &Loaded, new: &mut Loaded, only_missing: bool) -> Result<u64>
where
    ConnEntry<A>: aya::Pod + Migrate<B>,
    ConnEntry<B>: aya::Pod,
{
    let from: HashMap<_, ConnKey, ConnEntry<A>> =
        HashMap::try_from(old.map(CONN_TABLE_MAP)?).map_err(map_err("the old LB_CONNS"))?;
    let mut to: HashMap<_, ConnKey, ConnEntry<B>> =
        HashMap::try_from(new.map_mut(CONN_TABLE_MAP)?).map_err(map_err("the new LB_CONNS"))?;
    let mut copied = copy_table(&from, &mut to, only_missing)?;
    let from: HashMap<_, ConnKeyV6, ConnEntry<A>> =
        HashMap::try_from(old.map(CONN6_TABLE_MAP)?).map_err(map_err("the old LB_CONNS6"))?;
    let mut to: HashMap<_, ConnKeyV6, ConnEntry<B>> =
        HashMap::try_from(new.map_mut(CONN6_TABLE_MAP)?).map_err(map_err("the new LB_CONNS6"))?;
    copied += copy_table(&from, &mut to, only_missing)?;
    Ok(copied)
}

/// Copies `from`'s entries into `to`, converted; with `only_missing` (`BPF_NOEXIST`), keeps
/// what `to` holds. The number copied. An entry the LRU evicted meanwhile is skipped.
fn copy_table<K: aya::Pod, A, B>(
    from: &HashMap<impl Borrow<MapData>, K, ConnEntry<A>>,
    to: &mut HashMap<impl BorrowMut<MapData>, K, ConnEntry<B>>,
    only_missing: bool,
) -> Result<u64>
where
    ConnEntry<A>: aya::Pod + Migrate<B>,
    ConnEntry<B>: aya::Pod,
{
    let flags = if only_missing { BPF_NOEXIST } else { 0 };
    let mut copied = 0;
    for (key, entry) in entries(from)? {
        match to.insert(key, entry.migrate(), flags) {
            Ok(()) => copied += 1,
            Err(aya::maps::MapError::SyscallError(e))
                if only_missing && e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(map_err("migrate a connection-table entry")(e)),
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan between the two versions: the connection tables migrate, everything else
    /// (rings, VIPs, reals, ids, SYN cache, generations, counters) is handed over; and a version
    /// to itself hands over every map.
    #[test]
    fn the_plan_hands_over_what_is_alike_and_migrates_the_tables() {
        let Plan { handed_over: handed, migrated, reset } =
            plan(Object::XdpLb, Object::XdpLbNext, &MIGRATED, &RESET).expect("plan");
        assert_eq!(migrated, ["LB_CONNS", "LB_CONNS6"]);
        assert!(reset.is_empty(), "the SYN cache has one layout for both versions: {reset:?}");
        assert_eq!(
            handed,
            [
                "LB_COUNTERS",
                "LB_ICMP_RATE",
                "LB_ID_SLOTS",
                "LB_REALS",
                "LB_RINGS",
                "LB_SERVER_IDS",
                "LB_SYN_CACHE",
                "LB_VIPS",
                "LB_VIP_ADDRS",
                "LB_VIP_FILTER",
                "LB_VIP_GENS"
            ]
        );
        let Plan { handed_over: handed, migrated, reset } =
            plan(Object::XdpLb, Object::XdpLb, &MIGRATED, &RESET).expect("plan");
        assert_eq!((handed.len(), migrated.len(), reset.len()), (13, 0, 0));
    }

    /// A migrated entry keeps everything a packet needs and says where it came from; a
    /// rollback drops the stamp.
    #[test]
    fn an_entry_migrates_both_ways() {
        let old = ConnEntry {
            real: 3,
            vip_num: 1,
            flags: 2,
            proto: 6,
            src: [1, 0, 0, 0],
            dst: [2, 0, 0, 0],
            pad: 0,
            tail: 0,
        };
        let new: ConnEntry<EntryStamp> = old.migrate();
        assert_eq!(
            (new.real, new.vip_num, new.flags, new.proto, new.src, new.dst, new.pad),
            (3, 1, 2, 6, old.src, old.dst, 0)
        );
        assert_eq!(new.tail, EntryStamp { version: 1, migrated: 1, pad: 0 });
        assert_eq!(new.migrate(), old);
    }
}
