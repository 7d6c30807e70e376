//! The control plane of one LB node: loads `xdp_lb`, writes its maps, swaps rings, syncs live
//! server ids, reads counters.
//!
//! Ring changes never expose a half-written ring: every change builds a complete new ring in a
//! fresh inner map, then swaps it in with one update of the outer array (see the LB's maps).
//! The connection tables are sized here for the possible CPUs (each CPU's share,
//! `zrlab_common::lb::CONN_TABLE_PER_CPU`).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
};

use aya::{
    EbpfLoader,
    maps::{Array, ArrayOfMaps, HashMap, MapData, PerCpuArray},
    programs::Xdp,
};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use zrlab_common::{
    addr::{words, words_v4},
    lb::{
        CONFIG_GLOBAL, CONN_TABLE_MAP, CONN_TABLE_PER_CPU, CONN6_TABLE_MAP, COUNTERS_MAP, Config, ConnEntry, ConnKey,
        ConnKeyV6, CounterBlock, EntryStamp, ID_SLOT_COUNT, ID_SLOTS_MAP, IdKey, IdSlot, MAX_REALS, MAX_RING,
        MAX_SERVER_IDS, MAX_VIPS, REAL_F_IPV6, REALS_MAP, RING_BLOCK, RINGS_MAP, Real, RingBlock, SERVER_IDS_MAP,
        SYN_CACHE_MAP, SYN_CACHE_SLOTS, VIP_ADDRS_MAP, VIP_F_HASH_PER_PACKET, VIP_F_NO_LRU, VIP_F_QUIC_ID_ROUTING,
        VIP_F_TCP_ID_ROUTING, VIP_FILTER_MAP, VIP_GENS_MAP, VIPS_MAP, VipKey, VipMeta, VipStats, counter, id_slot,
        ring_position, vip_filter_bit,
    },
};
use zrlab_wire::Proto;

use crate::{
    bpf::{Loaded, map_err},
    lb::{
        maglev::{self, Backend},
        upgrade::{self, Upgrade, Version},
    },
};
use zrlab_host::{
    error::{LabError, Result},
    netns::Netns,
};

/// How a VIP is balanced: the one policy the LB's control plane, a scenario's `[lb]` section
/// and a replay's `[[vip]]` entries share (each flattens it, so the keys, their docs and their
/// defaults are written once, here).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct VipOptions {
    /// Route TCP by the server id in the TPR option (default off).
    #[serde(default)]
    pub tcp_id_routing: bool,
    /// Route QUIC by the server id in the connection id (default off).
    #[serde(default)]
    pub quic_id_routing: bool,
    /// Skip the connection table (negative controls only; default off).
    #[serde(default)]
    pub no_lru: bool,
    /// Hash every packet with a random salt (negative controls only; default off).
    #[serde(default)]
    pub hash_per_packet: bool,
    /// Maglev ring size: a prime up to 65537 (the default).
    #[serde(default = "default_ring_size")]
    pub ring_size: u32,
}

fn default_ring_size() -> u32 {
    MAX_RING
}

impl Default for VipOptions {
    fn default() -> Self {
        Self {
            tcp_id_routing: false,
            quic_id_routing: false,
            no_lru: false,
            hash_per_packet: false,
            ring_size: MAX_RING,
        }
    }
}

impl VipOptions {
    /// Why these options cannot be programmed, if they cannot: the one check of the ring size
    /// that the control plane and both file formats apply.
    pub fn invalid(&self) -> Option<String> {
        (!maglev::is_prime(self.ring_size) || self.ring_size > MAX_RING)
            .then(|| format!("{} is not a prime up to {MAX_RING}", self.ring_size))
    }

    fn flags(&self) -> u32 {
        let mut flags = 0;
        for (on, flag) in [
            (self.tcp_id_routing, VIP_F_TCP_ID_ROUTING),
            (self.quic_id_routing, VIP_F_QUIC_ID_ROUTING),
            (self.no_lru, VIP_F_NO_LRU),
            (self.hash_per_packet, VIP_F_HASH_PER_PACKET),
        ] {
            if on {
                flags |= flag;
            }
        }
        flags
    }
}

/// A VIP and how it is balanced.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipSpec {
    /// Address.
    pub addr: IpAddr,
    /// Port; 0 means any port.
    pub port: u16,
    /// Transport.
    pub proto: Proto,
    /// Its policy.
    #[serde(flatten)]
    pub options: VipOptions,
}

impl VipSpec {
    /// A VIP with the default policy: ring of 65537, no id routing, connection table on.
    pub fn new(addr: IpAddr, port: u16, proto: Proto) -> Self {
        Self { addr, port, proto, options: VipOptions::default() }
    }

    /// The same VIP with `options`.
    pub fn with(self, options: VipOptions) -> Self {
        Self { options, ..self }
    }

    fn key(&self) -> VipKey {
        VipKey { addr: words(self.addr), port: self.port.to_be(), proto: self.proto.number(), pad: 0 }
    }
}

/// A real (backend) of a VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealSpec {
    /// Its address (the outer destination).
    pub addr: IpAddr,
    /// Its weight in the configuration ring (0: not a member).
    pub weight: u32,
    /// Its health: a down real's slots go to up reals and nothing else moves
    /// (see [`super::maglev`]).
    pub up: bool,
}

impl RealSpec {
    /// Its entry in a Maglev build: keyed by address, so every LB node derives the same ring.
    pub fn backend(&self) -> Backend {
        Backend { key: self.addr.to_string().into_bytes(), weight: self.weight, up: self.up }
    }
}

/// Node-wide settings of the LB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Prefix of outer IPv4 sources (host bits from the flow hash).
    pub encap_src_v4: Ipv4Net,
    /// Prefix of outer IPv6 sources (the last 32 bits from the flow hash).
    pub encap_src_v6: Ipv6Net,
    /// Seed of the flow hash (all LB nodes of a VIP must agree).
    pub hash_seed: u32,
    /// The most ICMP "too big" answers each CPU sends per second (`xdp_lb`'s `icmp` module).
    pub icmp_too_big_per_sec: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            encap_src_v4: "198.51.100.128/25".parse().expect("valid"),
            encap_src_v6: "2001:db8:e::/96".parse().expect("valid"),
            hash_seed: 0x5eed,
            icmp_too_big_per_sec: 1000,
        }
    }
}

/// Every entry of one connection table. An entry evicted while the walk runs ends the walk
/// early in the kernel (`ENOENT` on the next key), which is what any reader of a live LRU gets;
/// any other error is reported.
pub(super) fn entries<T: std::borrow::Borrow<MapData>, K: aya::Pod, V: aya::Pod>(
    table: &HashMap<T, K, V>,
) -> Result<Vec<(K, V)>> {
    table.iter().collect::<Result<_, _>>().map_err(map_err("walk a connection table"))
}

/// Deletes the entries of VIP `num` from one connection table.
fn flush<T: std::borrow::BorrowMut<MapData>, K: aya::Pod, E>(
    table: &mut HashMap<T, K, ConnEntry<E>>,
    num: u32,
) -> Result<()>
where
    ConnEntry<E>: aya::Pod,
{
    let stale: Vec<K> = entries(table)?.into_iter().filter(|(_, v)| v.vip_num == num).map(|(k, _)| k).collect();
    for key in stale {
        match table.remove(&key) {
            // An entry evicted meanwhile is gone already.
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            removed => removed.map_err(map_err("delete a connection-table entry"))?,
        }
    }
    Ok(())
}

/// Sets `loader` up for an LB object: its configuration global (`config`), each connection
/// table sized for the possible CPUs (the kernel splits it evenly over them), and the SYN cache
/// with a part for each possible CPU.
pub(super) fn configure<'a>(loader: &mut EbpfLoader<'a>, config: &'a Config) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| LabError::os("read", "possible CPUs", e))? as u32;
    let size = CONN_TABLE_PER_CPU.saturating_mul(cpus.max(1));
    loader.override_global(CONFIG_GLOBAL, config, true);
    loader.map_max_entries(CONN_TABLE_MAP, size).map_max_entries(CONN6_TABLE_MAP, size);
    loader.map_max_entries(SYN_CACHE_MAP, SYN_CACHE_SLOTS.saturating_mul(cpus.max(1)));
    Ok(())
}

/// The program's configuration for `settings`.
pub(super) fn config(settings: &Settings) -> Config {
    Config {
        encap_src_v4: words_v4(settings.encap_src_v4.network().octets())[0],
        encap_src_v4_mask: words_v4(settings.encap_src_v4.netmask().octets())[0],
        encap_src_v6: words(IpAddr::V6(settings.encap_src_v6.network())),
        hash_seed: settings.hash_seed,
        icmp_too_big_per_sec: settings.icmp_too_big_per_sec,
    }
}

/// A flow's key in the connection tables of its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableKey {
    /// An IPv4 flow's.
    V4(ConnKey),
    /// An IPv6 flow's.
    V6(ConnKeyV6),
}

/// Every counter of the LB, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Global slots (`zrlab_common::lb::counter`).
    pub global: Vec<u64>,
    /// Per VIP (by `VipSpec`), packets and bytes.
    pub vips: Vec<(VipKey, VipStats)>,
    /// Packets per real address.
    pub reals: BTreeMap<IpAddr, u64>,
}

impl Counters {
    /// The value of global slot `slot`.
    pub fn get(&self, slot: u32) -> u64 {
        self.global.get(slot as usize).copied().unwrap_or(0)
    }
}

#[derive(Debug)]
struct VipState {
    num: u32,
    flags: u32,
    /// Its reals with a weight (up or down): the reals whose ids route within it.
    members: Vec<IpAddr>,
    /// The ring swapped in last (real indices); empty before the first.
    ring: Vec<u32>,
}

/// Deletes VIP `num`'s entries from both families' connection tables of `bpf`, whose entries
/// have the tail `E` (the version's layout).
fn flush_tables<E>(bpf: &mut Loaded, num: u32) -> Result<()>
where
    ConnEntry<E>: aya::Pod,
{
    let mut table: HashMap<_, ConnKey, ConnEntry<E>> =
        HashMap::try_from(bpf.map_mut(CONN_TABLE_MAP)?).map_err(map_err(CONN_TABLE_MAP))?;
    flush(&mut table, num)?;
    let mut table: HashMap<_, ConnKeyV6, ConnEntry<E>> =
        HashMap::try_from(bpf.map_mut(CONN6_TABLE_MAP)?).map_err(map_err(CONN6_TABLE_MAP))?;
    flush(&mut table, num)
}

/// The keys of both families' connection tables of `bpf` (entry tail `E`).
fn table_keys<E>(bpf: &Loaded) -> Result<HashSet<TableKey>>
where
    ConnEntry<E>: aya::Pod,
{
    let table: HashMap<_, ConnKey, ConnEntry<E>> =
        HashMap::try_from(bpf.map(CONN_TABLE_MAP)?).map_err(map_err(CONN_TABLE_MAP))?;
    let table6: HashMap<_, ConnKeyV6, ConnEntry<E>> =
        HashMap::try_from(bpf.map(CONN6_TABLE_MAP)?).map_err(map_err(CONN6_TABLE_MAP))?;
    let mut keys: HashSet<TableKey> = entries(&table)?.into_iter().map(|(k, _)| TableKey::V4(k)).collect();
    keys.extend(entries(&table6)?.into_iter().map(|(k, _)| TableKey::V6(k)));
    Ok(keys)
}

/// A loaded LB.
#[derive(Debug)]
pub struct Balancer {
    bpf: Loaded,
    /// The version loaded (its connection tables' layout).
    version: Version,
    vips: BTreeMap<VipKey, VipState>,
    reals: BTreeMap<IpAddr, u32>,
    /// The path MTU to each real that has one (`Real::mtu`; none: unknown, no check).
    path_mtus: BTreeMap<IpAddr, u32>,
    /// The live ids (id -> real), as last synced.
    live: BTreeMap<u32, IpAddr>,
    /// The ids as last written (id -> (real index, VIP bits)); none before the first write.
    written_ids: Option<BTreeMap<u32, (u32, u32)>>,
}

impl Balancer {
    /// Loads and verifies the LB programs (`xdp_lb`), its connection tables sized for the
    /// possible CPUs.
    pub fn load(settings: &Settings) -> Result<Self> {
        Self::load_version(settings, Version::Current)
    }

    /// As [`Balancer::load`], for program version `version`.
    pub fn load_version(settings: &Settings, version: Version) -> Result<Self> {
        // The benchmark variant is verified only when a benchmark asks for it (`load_bench`).
        let config = config(settings);
        let mut sized = Ok(());
        let bpf = Loaded::load_configured(version.object(), |loader| sized = configure(loader, &config), &["xdp_lb"])?;
        sized?;
        Ok(Self {
            bpf,
            version,
            vips: BTreeMap::new(),
            reals: BTreeMap::new(),
            path_mtus: BTreeMap::new(),
            live: BTreeMap::new(),
            written_ids: None,
        })
    }

    /// The program version loaded.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Replaces the data path with program version `to` in place, while traffic flows: the
    /// new programs take over every map the two versions define alike (rings, VIPs, reals,
    /// live ids, counters), the connection tables' entries are migrated into
    /// the new layout, and each attached `xdp_lb` is swapped with one link update
    /// (`zrlab_control::lb::upgrade` says how, and what a map that changed without a known
    /// migration does: it refuses).
    pub fn upgrade(&mut self, settings: &Settings, to: Version) -> Result<Upgrade> {
        let (bpf, report) = upgrade::in_place(&mut self.bpf, self.version, settings, to)?;
        self.bpf = bpf;
        self.version = to;
        Ok(report)
    }

    /// Deletes every connection-table entry of VIP `num` (its entries carry flags that no
    /// longer hold). The SYN cache needs nothing: the program takes a waiting SYN's route only
    /// if the VIP's flags did not change since (the VIP generations, bumped by the caller).
    fn flush_vip(&mut self, num: u32) -> Result<()> {
        match self.version {
            Version::Current => flush_tables::<u32>(&mut self.bpf, num),
            Version::Next => flush_tables::<EntryStamp>(&mut self.bpf, num),
        }
    }

    /// The keys of every flow in this node's connection tables (both families).
    pub fn connections(&self) -> Result<HashSet<TableKey>> {
        match self.version {
            Version::Current => table_keys::<u32>(&self.bpf),
            Version::Next => table_keys::<EntryStamp>(&self.bpf),
        }
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.bpf.map_mut(name)
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.bpf.map(name)
    }

    /// The real index of `addr`, allocating one (and writing the real) on first use.
    fn real_index(&mut self, addr: IpAddr) -> Result<u32> {
        if let Some(index) = self.reals.get(&addr) {
            return Ok(*index);
        }
        let index = self.reals.len() as u32;
        if index >= MAX_REALS {
            return Err(LabError::Unsupported(format!("more than {MAX_REALS} reals")));
        }
        self.reals.insert(addr, index);
        self.write_real(addr, index)?;
        Ok(index)
    }

    /// Writes real `addr`'s entry at `index` in `LB_REALS`: address, family, path MTU.
    fn write_real(&mut self, addr: IpAddr, index: u32) -> Result<()> {
        let mtu = self.path_mtus.get(&addr).copied().unwrap_or(0);
        let real = Real { addr: words(addr), flags: if addr.is_ipv6() { REAL_F_IPV6 } else { 0 }, mtu };
        let mut map: Array<_, Real> = Array::try_from(self.map_mut(REALS_MAP)?).map_err(map_err("LB_REALS"))?;
        map.set(index, real, 0).map_err(map_err("write LB_REALS"))
    }

    /// The path MTUs set, by real.
    pub fn path_mtus(&self) -> BTreeMap<IpAddr, u32> {
        self.path_mtus.clone()
    }

    /// Sets the path MTU to real `addr`: the largest outer packet (IP header and payload) that
    /// reaches it, at least 576. A VIP packet that would not fit once encapsulated is answered
    /// with ICMP "too big" carrying what fits, and not sent (`xdp_lb`'s `icmp` module).
    pub fn set_path_mtu(&mut self, addr: IpAddr, mtu: u32) -> Result<()> {
        if !(576..=65_535).contains(&mtu) {
            return Err(LabError::Unsupported(format!("path MTU {mtu} to {addr}: not between 576 and 65535")));
        }
        self.path_mtus.insert(addr, mtu);
        match self.reals.get(&addr) {
            Some(index) => self.write_real(addr, *index),
            None => Ok(()),
        }
    }

    /// Adds or updates `vip` with `reals`: builds the Maglev ring from the reals' weights and
    /// swaps it in whole.
    pub fn set_vip(&mut self, vip: &VipSpec, reals: &[RealSpec]) -> Result<()> {
        if let Some(why) = vip.options.invalid() {
            return Err(LabError::Unsupported(format!("ring size {why}")));
        }
        let backends: Vec<Backend> = reals.iter().map(RealSpec::backend).collect();
        let table = maglev::build(&backends, vip.options.ring_size)
            .map_err(|e| LabError::Unsupported(format!("VIP {}:{}: {e}", vip.addr, vip.port)))?;
        let indices: Vec<u32> = reals.iter().map(|r| self.real_index(r.addr)).collect::<Result<_>>()?;
        let key = vip.key();
        let num = match self.vips.get(&key) {
            Some(state) => state.num,
            None => {
                let num = self.vips.len() as u32;
                if num >= MAX_VIPS {
                    return Err(LabError::Unsupported(format!("more than {MAX_VIPS} VIPs")));
                }
                num
            }
        };
        let members: Vec<IpAddr> = reals.iter().filter(|r| r.weight > 0).map(|r| r.addr).collect();
        let old_flags = self.vips.get(&key).map(|state| state.flags);
        // A joining member's ids route within the VIP before the new ring can send it a flow
        // (whose SYN-ACK carries its id, echoed on every later packet); a leaving member's stay
        // until the ring no longer does.
        let state = self.vips.entry(key).or_insert_with(|| VipState {
            num,
            flags: vip.options.flags(),
            members: Vec::new(),
            ring: Vec::new(),
        });
        let entries: Vec<u32> = table.iter().map(|owner| indices[*owner as usize]).collect();
        // A swap waits for an RCU grace period (the kernel's wait for running programs on any
        // map-in-map update): a ring like the one in place is not swapped again.
        let ring_changed = state.ring != entries;
        self.admit_members(vip, reals)?;
        if ring_changed {
            // The new ring, complete before anything points at it.
            let ring: Array<MapData, RingBlock> =
                Array::try_from(super::inner::ring(&format!("lb_ring{num}"), &entries)?).map_err(map_err("a ring"))?;
            let mut rings: ArrayOfMaps<_, Array<MapData, RingBlock>> =
                ArrayOfMaps::try_from(self.map_mut(RINGS_MAP)?).map_err(map_err("LB_RINGS"))?;
            rings.set(num, &ring, 0).map_err(map_err("swap in a ring"))?;
        }
        // The address's filter bit before the VIP: a packet that passes the filter and finds no
        // VIP yet is turned away by the VIP-address set, one that fails it never reaches the VIP.
        self.add_to_filter(&key.addr)?;
        let meta = VipMeta { flags: vip.options.flags(), vip_num: num, ring_size: vip.options.ring_size, pad: 0 };
        let mut vips: HashMap<_, VipKey, VipMeta> =
            HashMap::try_from(self.map_mut(VIPS_MAP)?).map_err(map_err("LB_VIPS"))?;
        vips.insert(key, meta, 0).map_err(map_err("write LB_VIPS"))?;
        let mut addrs: HashMap<_, [u32; 4], u32> =
            HashMap::try_from(self.map_mut(VIP_ADDRS_MAP)?).map_err(map_err("LB_VIP_ADDRS"))?;
        addrs.insert(key.addr, 1, 0).map_err(map_err("write LB_VIP_ADDRS"))?;
        if old_flags.is_some_and(|old| old != meta.flags) {
            self.flush_vip(num)?;
        }
        // After the VIP is written: a SYN routed before carries the old generations, and its
        // flow's next packet goes the whole way, by the VIP as it is now.
        if old_flags.is_some_and(|old| old != meta.flags) {
            self.bump_vip_gen(1 + num)?;
        }
        if old_flags != Some(meta.flags) {
            self.bump_vip_gen(0)?;
        }
        self.vips.insert(key, VipState { num, flags: meta.flags, members, ring: entries });
        self.write_ids()
    }

    /// Moves entry `i` of the VIP generations on (`zrlab_common::lb::VIP_GENS_MAP`: 0 for
    /// every VIP, `1 + vip_num` for one VIP's flags): SYNs waiting in the SYN cache were routed
    /// by VIPs that changed since.
    fn bump_vip_gen(&mut self, i: u32) -> Result<()> {
        let mut generations: Array<_, u32> =
            Array::try_from(self.map_mut(VIP_GENS_MAP)?).map_err(map_err(VIP_GENS_MAP))?;
        let now = generations.get(&i, 0).map_err(map_err("read LB_VIP_GENS"))?;
        generations.set(i, now.wrapping_add(1), 0).map_err(map_err("write LB_VIP_GENS"))
    }

    /// Makes the live ids of `reals` with a weight route within `vip` (an existing VIP), before
    /// any ring sends them flows: [`Balancer::set_vip`] does it before its ring swap, and a
    /// fleet does it on every LB node before any node swaps its ring, so that no node meets a
    /// flow whose backend's id it does not know yet. Members only join here; `set_vip` removes
    /// the ones that left.
    pub fn admit_members(&mut self, vip: &VipSpec, reals: &[RealSpec]) -> Result<()> {
        let Some(state) = self.vips.get_mut(&vip.key()) else { return Ok(()) };
        let before = state.members.len();
        for real in reals.iter().filter(|r| r.weight > 0) {
            if !state.members.contains(&real.addr) {
                state.members.push(real.addr);
            }
        }
        if state.members.len() == before { Ok(()) } else { self.write_ids() }
    }

    /// Sets `addr`'s bit in the VIP-address filter (`VIP_FILTER_MAP`). Bits are never cleared:
    /// VIPs are only added or updated, and a stale bit would only cost its address the set's
    /// lookup.
    fn add_to_filter(&mut self, addr: &[u32; 4]) -> Result<()> {
        let bit = vip_filter_bit(addr);
        let mut filter: Array<_, u64> =
            Array::try_from(self.map_mut(VIP_FILTER_MAP)?).map_err(map_err("LB_VIP_FILTER"))?;
        let word = filter.get(&(bit / 64), 0).map_err(map_err("read LB_VIP_FILTER"))?;
        filter.set(bit / 64, word | 1 << (bit % 64), 0).map_err(map_err("write LB_VIP_FILTER"))
    }

    /// Makes the live ids exactly `live` (server id -> real address): ids not in it are
    /// removed, so packets carrying them fall back to the table and ring. Each id routes only
    /// within the VIPs its real is a member of.
    pub fn sync_server_ids(&mut self, live: &BTreeMap<u32, IpAddr>) -> Result<()> {
        let previous = std::mem::replace(&mut self.live, live.clone());
        let written = self.write_ids();
        if written.is_err() {
            // A refused set (too many ids sharing slots) never became live: the next write
            // (a VIP's members changing) writes the previous set, not this one.
            self.live = previous;
        }
        written
    }

    /// Writes the live ids from the live ids and the VIPs' members: each id with its real and
    /// the VIPs it routes within in its slot of a new array (`zrlab_common::lb::ID_SLOTS_MAP`),
    /// and the ids that share a slot in the hash table. In an order a packet can follow at any
    /// moment: the shared ids' new pairs first, then the new array swapped in, then the pairs no
    /// longer wanted removed.
    fn write_ids(&mut self) -> Result<()> {
        let pairs: Vec<(u32, IpAddr, u32)> = self
            .vips
            .values()
            .flat_map(|vip| {
                self.live.iter().filter(|(_, addr)| vip.members.contains(addr)).map(|(id, addr)| (*id, *addr, vip.num))
            })
            .collect();
        let mut ids: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
        for (id, addr, vip_num) in pairs {
            let real = self.real_index(addr)?;
            ids.entry(id).or_insert((real, 0)).1 |= 1 << vip_num;
        }
        // Like the swap of a ring, the swap of the id slots waits for a grace period: the same
        // ids are not written again.
        if self.written_ids.as_ref() == Some(&ids) {
            return Ok(());
        }
        let written = self.swap_in_ids(&ids);
        // Unknown after a failed write, which may have changed some of it.
        self.written_ids = written.is_ok().then_some(ids);
        written
    }

    /// Writes `ids` (id -> (real index, VIP bits)) as [`Balancer::write_ids`] says.
    fn swap_in_ids(&mut self, ids: &BTreeMap<u32, (u32, u32)>) -> Result<()> {
        let mut by_slot: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for id in ids.keys() {
            by_slot.entry(id_slot(*id)).or_default().push(*id);
        }
        let mut slots = vec![IdSlot::default(); ID_SLOT_COUNT as usize];
        let mut shared: BTreeMap<IdKey, u32> = BTreeMap::new();
        for (slot, in_slot) in &by_slot {
            if let [id] = in_slot[..] {
                let (real, vips) = ids[&id];
                slots[*slot as usize] = IdSlot { id, real, vips, shared: 0 };
                continue;
            }
            slots[*slot as usize].shared = 1;
            for id in in_slot {
                let (real, vips) = ids[id];
                for vip_num in (0..MAX_VIPS).filter(|n| vips >> n & 1 != 0) {
                    shared.insert(IdKey { vip_num, id: *id }, real);
                }
            }
        }
        if shared.len() > MAX_SERVER_IDS as usize {
            return Err(LabError::Unsupported(format!(
                "more than {MAX_SERVER_IDS} (VIP, server id) pairs share a slot"
            )));
        }
        let mut table: HashMap<_, IdKey, u32> =
            HashMap::try_from(self.map_mut(SERVER_IDS_MAP)?).map_err(map_err("LB_SERVER_IDS"))?;
        let present: Vec<IdKey> = table.keys().collect::<Result<_, _>>().map_err(map_err("walk LB_SERVER_IDS"))?;
        for (key, real) in &shared {
            table.insert(key, real, 0).map_err(map_err("write LB_SERVER_IDS"))?;
        }
        let array: Array<MapData, IdSlot> =
            Array::try_from(super::inner::id_slots("lb_id_slots", &slots)?).map_err(map_err("the id slots"))?;
        let mut outer: ArrayOfMaps<_, Array<MapData, IdSlot>> =
            ArrayOfMaps::try_from(self.map_mut(ID_SLOTS_MAP)?).map_err(map_err("LB_ID_SLOTS"))?;
        outer.set(0, &array, 0).map_err(map_err("swap in the id slots"))?;
        let mut table: HashMap<_, IdKey, u32> =
            HashMap::try_from(self.map_mut(SERVER_IDS_MAP)?).map_err(map_err("LB_SERVER_IDS"))?;
        for key in present.iter().filter(|key| !shared.contains_key(key)) {
            table.remove(key).map_err(map_err("remove from LB_SERVER_IDS"))?;
        }
        Ok(())
    }

    /// Attaches `xdp_lb` in native mode to `ifname` inside `netns`.
    pub fn attach(&mut self, netns: &Netns, ifname: &str) -> Result<()> {
        self.bpf.attach_xdp("xdp_lb", netns, ifname)
    }

    /// Verifies and loads `xdp_lb_bench`, the variant that undoes its encapsulation (for
    /// `BPF_PROG_TEST_RUN` with a repeat count).
    pub fn load_bench(&mut self) -> Result<()> {
        self.bpf.verify("xdp_lb_bench")
    }

    /// The loaded program `name` (`xdp_lb`, or `xdp_lb_bench` after [`Balancer::load_bench`]),
    /// e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&self, name: &str) -> Result<&Xdp> {
        self.bpf.xdp(name)
    }

    /// Slots per real address of `vip`'s ring as the kernel holds it: the ring map `LB_RINGS`
    /// points at for the VIP, each slot's real looked up in `LB_REALS` (what `lab status`
    /// shows: the data path's state, not the control plane's idea of it). Empty for an
    /// unknown VIP.
    pub fn ring_in_kernel(&self, vip: &VipSpec) -> Result<BTreeMap<IpAddr, u32>> {
        let Some(state) = self.vips.get(&vip.key()) else { return Ok(BTreeMap::new()) };
        let rings: ArrayOfMaps<_, Array<MapData, RingBlock>> =
            ArrayOfMaps::try_from(self.map(RINGS_MAP)?).map_err(map_err("LB_RINGS"))?;
        let ring = rings.get(&state.num, 0).map_err(map_err("read a ring of LB_RINGS"))?;
        let reals: Array<_, Real> = Array::try_from(self.map(REALS_MAP)?).map_err(map_err("LB_REALS"))?;
        let mut per_index: BTreeMap<u32, u32> = BTreeMap::new();
        let mut block = (u32::MAX, [0; RING_BLOCK as usize]);
        for slot in 0..vip.options.ring_size {
            let (index, lane) = ring_position(slot);
            if block.0 != index {
                block = (index, ring.get(&index, 0).map_err(map_err("read a ring block"))?);
            }
            *per_index.entry(u32::from(block.1[lane])).or_default() += 1;
        }
        let mut slots = BTreeMap::new();
        for (index, count) in per_index {
            let real = reals.get(&index, 0).map_err(map_err("read LB_REALS"))?;
            let addr = if real.flags & REAL_F_IPV6 != 0 {
                IpAddr::from(std::array::from_fn::<u8, 16, _>(|i| real.addr[i / 4].to_ne_bytes()[i % 4]))
            } else {
                IpAddr::from(real.addr[0].to_ne_bytes())
            };
            *slots.entry(addr).or_default() += count;
        }
        Ok(slots)
    }

    /// The server ids the live-id table in the kernel holds (for any VIP): the data path's
    /// state, not the control plane's idea of it.
    pub fn server_ids_in_kernel(&self) -> Result<BTreeSet<u32>> {
        let table: HashMap<_, IdKey, u32> =
            HashMap::try_from(self.map(SERVER_IDS_MAP)?).map_err(map_err("LB_SERVER_IDS"))?;
        let mut ids: BTreeSet<u32> = table
            .keys()
            .map(|key| key.map(|k| k.id))
            .collect::<Result<_, _>>()
            .map_err(map_err("walk LB_SERVER_IDS"))?;
        let outer: ArrayOfMaps<_, Array<MapData, IdSlot>> =
            ArrayOfMaps::try_from(self.map(ID_SLOTS_MAP)?).map_err(map_err("LB_ID_SLOTS"))?;
        // No array yet: no id was ever written.
        if let Ok(slots) = outer.get(&0, 0) {
            for slot in slots.iter() {
                let slot = slot.map_err(map_err("read the id slots"))?;
                if slot.id != 0 {
                    ids.insert(slot.id);
                }
            }
        }
        Ok(ids)
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let blocks: PerCpuArray<_, CounterBlock> =
            PerCpuArray::try_from(self.map(COUNTERS_MAP)?).map_err(map_err("LB_COUNTERS"))?;
        let blocks = blocks.get(&0, 0).map_err(map_err("read LB_COUNTERS"))?;
        let mut out = Counters { global: vec![0; counter::SLOTS as usize], ..Counters::default() };
        for block in blocks.iter() {
            for (total, value) in out.global.iter_mut().zip(&block.global) {
                *total += value;
            }
        }
        for (key, state) in &self.vips {
            let sum =
                blocks.iter().filter_map(|b| b.vips.get(state.num as usize)).fold(VipStats::default(), |acc, s| {
                    VipStats { packets: acc.packets + s.packets, bytes: acc.bytes + s.bytes }
                });
            out.vips.push((*key, sum));
        }
        for (addr, index) in &self.reals {
            let sum = blocks.iter().filter_map(|b| b.reals.get(*index as usize)).sum();
            out.reals.insert(*addr, sum);
        }
        Ok(out)
    }
}

/// Runs `frame` through `program` once with `BPF_PROG_TEST_RUN`: its verdict and the frame it
/// left (the input when it passed or dropped it, the encapsulated packet when it sent it).
pub fn run_once(program: &Xdp, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
    use aya::programs::{TestRun as _, TestRunOptions};
    // Room for the largest outer header the program adds (IPv6: 40 bytes), and then some.
    let mut out = vec![0u8; frame.len() + 256];
    let result = program
        .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..TestRunOptions::new() })
        .map_err(|e| LabError::Bpf { what: "BPF_PROG_TEST_RUN".into(), message: e.to_string() })?;
    out.truncate(result.data_size_out as usize);
    Ok((result.return_value, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one ring check the control plane and both file formats apply: a prime up to 65537;
    /// every other size names itself in the reason (a square of a prime included).
    #[test]
    fn a_vip_ring_is_a_prime_up_to_65537() {
        let with = |ring_size| VipOptions { ring_size, ..VipOptions::default() };
        for ok in [7, 13, 65_521, MAX_RING] {
            assert_eq!(with(ok).invalid(), None, "{ok}");
        }
        for bad in [0, 1, 49, 65_536, 65_539] {
            assert_eq!(with(bad).invalid(), Some(format!("{bad} is not a prime up to {MAX_RING}")), "{bad}");
        }
    }

    /// The kernel's id of the map in slot `index` of the map-in-map `outer` (a swap makes a
    /// new one).
    fn inner_id<V: aya::Pod>(lb: &Balancer, outer: &str, index: u32) -> u32 {
        let outer: ArrayOfMaps<_, Array<MapData, V>> = ArrayOfMaps::try_from(lb.map(outer).unwrap()).unwrap();
        aya::maps::IterableMap::map(&outer.get(&index, 0).unwrap()).info().unwrap().id()
    }

    /// Swapping a map-in-map's slot waits for an RCU grace period (tens of milliseconds in an
    /// emulated guest): a ring or an id set like the one in place is not swapped again, and
    /// any change is (needs root).
    #[test]
    fn only_a_changed_ring_or_id_set_is_swapped_in() {
        let mut lb = Balancer::load(&Settings::default()).expect("load xdp_lb");
        let vip = VipSpec::new("203.0.113.10".parse().unwrap(), 80, Proto::Tcp);
        let real = |last: u8, weight| RealSpec { addr: IpAddr::from([10, 0, 0, last]), weight, up: true };
        let reals = [real(1, 1), real(2, 1)];
        let ring = |lb: &Balancer| inner_id::<RingBlock>(lb, RINGS_MAP, 0);
        let ids = |lb: &Balancer| inner_id::<IdSlot>(lb, ID_SLOTS_MAP, 0);
        lb.set_vip(&vip, &reals).unwrap();
        lb.sync_server_ids(&BTreeMap::from([(7, reals[0].addr)])).unwrap();
        let (first_ring, first_ids) = (ring(&lb), ids(&lb));
        lb.set_vip(&vip, &reals).unwrap();
        lb.sync_server_ids(&BTreeMap::from([(7, reals[0].addr)])).unwrap();
        assert_eq!((ring(&lb), ids(&lb)), (first_ring, first_ids), "the same ring and ids again: no swap");
        lb.sync_server_ids(&BTreeMap::from([(7, reals[0].addr), (8, reals[1].addr)])).unwrap();
        assert_eq!(ring(&lb), first_ring, "a new id leaves the ring");
        let second_ids = ids(&lb);
        assert_ne!(second_ids, first_ids, "a new id is swapped in");
        lb.set_vip(&vip, &[real(1, 1), real(2, 2)]).unwrap();
        assert_ne!(ring(&lb), first_ring, "a new weight is a new ring");
        assert_eq!(ids(&lb), second_ids, "the same members: the same ids");
        assert_eq!(lb.server_ids_in_kernel().unwrap(), BTreeSet::from([7, 8]));
    }
}
