//! Picking the real: connection table, server id (TCP option or QUIC connection id), ring.
//!
//! The fast path is a connection-table hit: the entry carries the real and the VIP's number and
//! flags, so an established flow costs one table lookup and no VIP lookup. In order:
//! 0. a destination that carries no VIP (its bit in the VIP-address filter is clear) passes;
//! 1. unless it is a SYN (a new connection always hashes), the family's connection table (one
//!    table every CPU shares, `zrlab_common::lb::CONN_TABLE_FLAGS`; IPv6 flows have a table of
//!    their own under an exact key, `zrlab_common::lb::ConnKeyV6`);
//! 2. with id routing on the flow's VIP: for TCP non-SYN packets the first well-formed TPR
//!    option's id, for QUIC the destination CID's id; an id live *for this VIP* (its real is a
//!    member of the VIP) picks the real (whatever the table said) and corrects the table;
//! 3. on a table miss: the VIP (exact port, then any port), and then its Maglev ring; the
//!    result is remembered in the connection table, or, for a SYN, in this CPU's SYN cache
//!    (`zrlab_common::lb::SYN_CACHE_MAP`: no table insert until the flow's next packet, which
//!    misses the table and finds its SYN's slot).
//!
//! A SYN starts its flow anew: its next packets, on any CPU, follow the real chosen for it,
//! whatever the table held for an earlier connection of the same 5-tuple. So a SYN whose
//! 5-tuple has an entry (a reused 5-tuple) overwrites it with its own route; a server id that moves a flow away from its entry does the same. The
//! table is one for all CPUs, so no CPU keeps a copy that could go stale.
//!
//! Consequence the control plane must honour: table entries outlive a change of the VIP's flags
//! or its removal, so such changes flush the VIP's entries (`Balancer::set_vip`).

use aya_ebpf::maps::LruHashMap;
use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_get_smp_processor_id},
    programs::XdpContext,
};
use zrlab_common::lb::{
    ConnKey, ConnKeyV6, FlowKey, IdKey, MAX_RING, QUIC_MIN_CID, QUIC_VERSION_1, QUIC_VERSION_2, SYN_CACHE_SLOTS,
    SynSlot, TPR_KIND, TPR_LEN, TPR_MAX_OPTIONS, VIP_F_HASH_PER_PACKET, VIP_F_NO_LRU, VIP_F_QUIC_ID_ROUTING,
    VIP_F_TCP_ID_ROUTING, VipKey, VipMeta, counter, flow_hash, id_slot, quic_server_id, ring_position, syn_cache_index,
};
use zrlab_ebpf::net::{
    ETH_LEN, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_LEN, TCP_SYN, UDP_LEN, load16, load32, opaque, span,
};

use super::{
    layout::ConnEntry,
    maps::{CONNS, CONNS6, LIVE_IDS, RINGS, SERVER_IDS, SYN_CACHE, Stats, VIPS, config, vip_gen},
    parse::{Pkt, may_be_vip_addr},
};

/// Where a packet goes.
pub enum Route {
    /// Encapsulate to real `real`, counting it for VIP `vip_num`.
    Real {
        /// The real's index.
        real: u32,
        /// The VIP's number.
        vip_num: u32,
    },
    /// The destination address carries no VIP at all (the VIP-address filter says so): not
    /// the LB's business.
    NotVip,
    /// The destination is no VIP's (port or protocol): not the LB's business.
    NoService,
    /// The VIP has no usable ring.
    NoReal,
}

/// Where `pkt` goes.
#[inline(always)]
pub fn pick(ctx: &XdpContext, pkt: &Pkt, stats: &Stats) -> Route {
    // `pkt.v6` is a constant in each family's copy of the path (see `parse`): each copy keeps
    // one branch.
    if pkt.v6 {
        let table: Table<_, true> = Table { map: &CONNS6, key: ConnKeyV6::of(&pkt.flow) };
        pick_with(ctx, pkt, stats, &table)
    } else {
        let table: Table<_, false> = Table { map: &CONNS, key: ConnKey::of(&pkt.flow) };
        pick_with(ctx, pkt, stats, &table)
    }
}

#[inline(always)]
fn pick_with<K: 'static, const EXACT: bool>(
    ctx: &XdpContext,
    pkt: &Pkt,
    stats: &Stats,
    table: &Table<K, EXACT>,
) -> Route {
    // First of all: a packet whose destination's bit in the VIP-address filter is clear is not
    // the LB's business, and the filter costs a multiply and an array load where a table or VIP
    // lookup hashes a key and walks a bucket (an LB sharing a host sees every packet of the
    // host, most of them not for a VIP). A non-VIP address whose bit is set (another address's)
    // goes on, and the VIP-address set turns it away after the VIP lookups (`refuse`).
    if !may_be_vip_addr(&pkt.flow.dst) {
        return Route::NotVip;
    }
    if pkt.icmp {
        return pick_for_error(pkt, stats, table);
    }
    let syn = pkt.flow.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if !syn && let Some(hit) = table.lookup(&pkt.flow, stats) {
        let real = by_id(ctx, pkt, hit.flags, hit.vip_num, stats).unwrap_or(hit.real);
        if real != hit.real {
            table.remember(ConnEntry::new(&pkt.flow, real, hit.vip_num, hit.flags));
        }
        return Route::Real { real, vip_num: hit.vip_num };
    }
    // A TCP packet after its SYN, on the SYN's CPU, whose SYN was routed by the VIPs as they
    // still are: the SYN's route, without the VIP lookup. Exactly what the whole way below
    // decides (same VIP, same flags, so the same id check: skipped when the flags route by id
    // and the packet has options to carry one).
    let seeded = (!syn && pkt.flow.proto == IPPROTO_TCP).then(|| flow_hash(&pkt.flow, config(|c| &c.hash_seed)));
    if let Some(hash) = seeded
        && let Some(entry) = take_syn_current(hash, &pkt.flow, pkt.tcp_hdr_len > TCP_LEN)
    {
        stats.add(counter::SYN_CACHE_HIT);
        stats.add(counter::SYN_CACHE_EARLY);
        table.remember(entry);
        return Route::Real { real: entry.real, vip_num: entry.vip_num };
    }
    let Some(meta) = vip(pkt) else { return Route::NoService };
    if let Some(real) = by_id(ctx, pkt, meta.flags, meta.vip_num, stats) {
        if meta.flags & VIP_F_NO_LRU == 0 {
            table.remember(ConnEntry::new(&pkt.flow, real, meta.vip_num, meta.flags));
        }
        return Route::Real { real, vip_num: meta.vip_num };
    }
    let hash = if meta.flags & VIP_F_HASH_PER_PACKET != 0 {
        // SAFETY: a helper without preconditions.
        flow_hash(&pkt.flow, unsafe { bpf_get_prandom_u32() })
    } else {
        seeded.unwrap_or_else(|| flow_hash(&pkt.flow, config(|c| &c.hash_seed)))
    };
    let tabled = meta.flags & (VIP_F_NO_LRU | VIP_F_HASH_PER_PACKET) == 0;
    if tabled {
        // The flow's first packet after its SYN (on the SYN's CPU): the SYN's route moves from
        // the SYN cache into the table. (`hash` is the seeded flow hash here.)
        if !syn && let Some(entry) = take_syn(hash, &pkt.flow) {
            stats.add(counter::SYN_CACHE_HIT);
            table.remember(entry);
            return Route::Real { real: entry.real, vip_num: entry.vip_num };
        }
        stats.add(counter::LRU_MISS);
    }
    // A SYN whose 5-tuple has an entry (an earlier connection's, whichever CPU wrote it) restarts
    // the flow: its route overwrites the entry, so that the next packet follows this SYN on any
    // CPU. Asked before the ring is read: the table's bucket and the ring's block are two
    // independent cold loads, and in this order the CPU has both in flight at once (the other
    // way, the ring's load stalled the path before the lookup began).
    let reused = syn && tabled && table.get(&pkt.flow).is_some();
    let Some(real) = ring(&meta, hash, stats) else { return Route::NoReal };
    if tabled {
        let entry = ConnEntry::new(&pkt.flow, real, meta.vip_num, meta.flags);
        if syn && !reused {
            // A 5-tuple the table does not hold: the SYN cache's case. (`hash` is the seeded
            // flow hash here: the per-packet hash has no table.)
            remember_syn(hash, &pkt.flow, &entry);
        } else {
            table.remember(entry);
        }
    }
    Route::Real { real, vip_num: meta.vip_num }
}

/// Where an ICMP error about `pkt`'s flow goes: to the flow's real, by its table entry, else by
/// the VIP's ring, as the flow's own next packet would. It
/// writes nothing (an error starts no flow) and reads no server id (the quoted packet is the
/// backend's, which carries no echo of its id).
#[inline(always)]
fn pick_for_error<K: 'static, const EXACT: bool>(pkt: &Pkt, stats: &Stats, table: &Table<K, EXACT>) -> Route {
    let Some(meta) = vip(pkt) else { return Route::NoService };
    let real = match table.get(&pkt.flow) {
        Some(hit) => hit.real,
        None => match ring(&meta, flow_hash(&pkt.flow, config(|c| &c.hash_seed)), stats) {
            Some(real) => real,
            None => return Route::NoReal,
        },
    };
    stats.add(counter::ICMP_ROUTED);
    Route::Real { real, vip_num: meta.vip_num }
}

/// The VIP of `pkt`: exact port first, then any port.
#[inline(always)]
fn vip(pkt: &Pkt) -> Option<VipMeta> {
    let mut key = VipKey { addr: pkt.flow.dst, port: pkt.flow.port_pair()[1], proto: pkt.flow.proto, pad: 0 };
    // SAFETY (verifier): plain map lookups; the value is copied out at once.
    if let Some(meta) = unsafe { VIPS.get(&key) } {
        return Some(*meta);
    }
    key.port = 0;
    unsafe { VIPS.get(&key) }.copied()
}

/// The live real of the server id `pkt` carries within VIP `vip_num`, when `flags` turn id
/// routing on for it.
#[inline(always)]
fn by_id(ctx: &XdpContext, pkt: &Pkt, flags: u32, vip_num: u32, stats: &Stats) -> Option<u32> {
    // A TCP header without options carries no id: skip the walk and its set-up.
    let id = if pkt.flow.proto == IPPROTO_TCP
        && pkt.tcp_hdr_len > TCP_LEN
        && flags & VIP_F_TCP_ID_ROUTING != 0
        && pkt.tcp_flags & TCP_SYN == 0
    {
        tpr_id(ctx, pkt, stats)?
    } else if pkt.flow.proto == IPPROTO_UDP && flags & VIP_F_QUIC_ID_ROUTING != 0 {
        quic_id(ctx, pkt, stats)?
    } else {
        return None;
    };
    match live_real(vip_num, id) {
        Some(real) => {
            stats.add(if pkt.flow.proto == IPPROTO_TCP { counter::TCP_ID_ROUTED } else { counter::QUIC_ID_ROUTED });
            Some(real)
        }
        None => {
            stats.add(counter::ID_UNKNOWN);
            None
        }
    }
}

/// The real of live server id `id` within VIP `vip_num`: its slot in the live ids' array, or
/// the hash table when its slot is shared (`zrlab_common::lb::ID_SLOTS_MAP`).
#[inline(always)]
fn live_real(vip_num: u32, id: u32) -> Option<u32> {
    let slot = LIVE_IDS.get_value_ptr_mut(0, &id_slot(id))?;
    // SAFETY: the kernel returned a valid pointer into the array in use; user space never
    // writes an array a packet can see (it swaps in a new one).
    let slot = unsafe { &*slot };
    if slot.id == id {
        return (slot.vips >> (vip_num & 31) & 1 != 0).then_some(slot.real);
    }
    if slot.shared == 0 {
        return None;
    }
    // SAFETY (verifier): a plain map lookup, copied out at once.
    unsafe { SERVER_IDS.get(&IdKey { vip_num, id }) }.copied()
}

#[inline(always)]
fn ring(meta: &VipMeta, hash: u32, stats: &Stats) -> Option<u32> {
    if meta.ring_size == 0 || meta.ring_size > MAX_RING {
        return None;
    }
    let (block, lane) = ring_position(hash % meta.ring_size);
    let block = RINGS.get_value_ptr_mut(meta.vip_num, &block)?;
    stats.add(counter::RING_ROUTED);
    // SAFETY: the kernel returned a valid pointer into the ring's value.
    unsafe { (*block).get(lane) }.map(|real| u32::from(*real))
}

/// What a table hit says about a flow.
struct Hit {
    real: u32,
    vip_num: u32,
    flags: u32,
}

/// One family's connection table, and a packet's key in it; `EXACT` when the key is the whole
/// 5-tuple (IPv6), so that any entry under it is the flow's and needs no check.
struct Table<K: 'static, const EXACT: bool> {
    map: &'static LruHashMap<K, ConnEntry>,
    key: K,
}

impl<K: 'static, const EXACT: bool> Table<K, EXACT> {
    /// `flow`'s entry, counted as a hit. An entry under the same key for other addresses (an
    /// IPv4 key shared through the protocol bits, see `ConnKey`) is a miss; IPv6 keys are exact
    /// and skip the check.
    #[inline(always)]
    fn lookup(&self, flow: &FlowKey, stats: &Stats) -> Option<Hit> {
        let hit = self.get(flow)?;
        stats.add(counter::LRU_HIT);
        Some(hit)
    }

    /// `flow`'s entry, as [`Self::lookup`] finds it, without counting. Only the fields a hit
    /// needs are read: the entry stays in the map.
    #[inline(always)]
    fn get(&self, flow: &FlowKey) -> Option<Hit> {
        // SAFETY (verifier): a plain map lookup, read at once.
        let entry = unsafe { self.map.get(&self.key) }.filter(|e| EXACT || e.matches(flow))?;
        Some(Hit { real: entry.real, vip_num: entry.vip_num, flags: entry.flags })
    }

    /// Remembers (or overwrites) `flow`'s `entry`.
    #[inline(always)]
    fn remember(&self, entry: ConnEntry) {
        let _ = self.map.insert(&self.key, &entry, 0);
    }
}

/// Takes `flow`'s SYN's route out of this CPU's SYN cache (the slot of its seeded flow hash
/// `hash`), if the slot still holds it and its VIP's flags did not change since: a route from
/// before a change of the VIP's flags is a miss (the flow starts afresh under the new flags).
/// Any other change leaves the route to the flow, as a table entry would be: a ring change (the
/// SYN cache's reason to exist), a new VIP that takes the flow's port over. Checking here is
/// what lets user space leave the SYN cache alone on a flag change: a flush from user space had
/// to read and write back every CPU's slot at once, and lost the SYNs the program wrote in
/// between.
#[inline(always)]
fn take_syn(hash: u32, flow: &FlowKey) -> Option<ConnEntry> {
    take_slot(hash, flow, |slot| slot.flags_gen == vip_gen(1 + slot.vip_num))
}

/// As [`take_syn`], before the VIP lookup: only a slot of the VIPs' current generation
/// (`zrlab_common::lb::VIP_GENS_MAP`), whose flow therefore still has the SYN's VIP with the
/// same flags, and not when that VIP routes by id and the packet has TCP options (`options`)
/// that may carry one (the id decides then, after the VIP lookup). Anything else stays for
/// [`take_syn`].
#[inline(always)]
fn take_syn_current(hash: u32, flow: &FlowKey, options: bool) -> Option<ConnEntry> {
    take_slot(hash, flow, |slot| slot.vips_gen == vip_gen(0) && !(options && slot.flags & VIP_F_TCP_ID_ROUTING != 0))
}

/// Takes `flow`'s route out of the slot of seeded flow hash `hash` if the slot holds it and
/// `valid` says so; a slot that holds it but is not valid is left as it is.
#[inline(always)]
fn take_slot(hash: u32, flow: &FlowKey, valid: impl FnOnce(&SynSlot) -> bool) -> Option<ConnEntry> {
    let slot = SYN_CACHE.get_ptr_mut(syn_slot(hash))?;
    // SAFETY: the kernel returned a valid pointer into this CPU's part of the cache; this CPU
    // alone writes it.
    let slot = unsafe { &mut *slot };
    if !slot.holds(flow) || !valid(slot) {
        return None;
    }
    slot.proto = 0;
    Some(ConnEntry::new(flow, slot.real, slot.vip_num, slot.flags))
}

/// Remembers a SYN's route `entry` in this CPU's SYN cache, in the slot of its flow hash `hash`
/// (whatever the slot held: another flow's SYN that has not completed loses its slot), with the
/// VIP generations now.
#[inline(always)]
fn remember_syn(hash: u32, flow: &FlowKey, entry: &ConnEntry) {
    if let Some(slot) = SYN_CACHE.get_ptr_mut(syn_slot(hash)) {
        let fresh = SynSlot {
            ports: flow.ports,
            proto: u32::from(flow.proto),
            vips_gen: vip_gen(0),
            flags_gen: vip_gen(1 + entry.vip_num),
            real: entry.real,
            vip_num: entry.vip_num,
            flags: entry.flags,
            pad: 0,
            src: flow.src,
            dst: flow.dst,
        };
        // SAFETY: as in `take_slot`.
        unsafe { *slot = fresh };
    }
}

/// This CPU's SYN-cache slot for the flow of seeded flow hash `hash`.
#[inline(always)]
fn syn_slot(hash: u32) -> u32 {
    // SAFETY: a helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    cpu * SYN_CACHE_SLOTS + syn_cache_index(hash)
}

/// Walks the TCP options for the first well-formed TPR option (DESIGN.md wire rules): EOL ends
/// the walk; a malformed option (length 0 or 1, past the header, wrong length for 0xB7) ends it
/// and nothing after is trusted; at most [`TPR_MAX_OPTIONS`] options. Id 0 means none. Each
/// option's kind and length are one 16-bit load and the id one 32-bit load (a bounds check
/// each), not one checked load per byte.
///
/// Written for the verifier, which walks every path of the loop: each iteration has one way on
/// (a NOP is an option of length 1, chosen by arithmetic, not by a branch) and its other ways
/// end the walk. With a branch between a NOP's step and an option's, the two ways on never met
/// again and the paths doubled per option: 89% of the 145,000 instructions the kernel verified
/// for `xdp_lb` were this walk, about three seconds a load in a 6.1 guest under TCG.
#[inline(always)]
fn tpr_id(ctx: &XdpContext, pkt: &Pkt, stats: &Stats) -> Option<u32> {
    let end = pkt.l4_off + pkt.tcp_hdr_len;
    let mut off = pkt.l4_off + TCP_LEN;
    let mut i = 0;
    while i < TPR_MAX_OPTIONS {
        i += 1;
        if off >= end {
            return None;
        }
        if off + 1 >= end {
            // The header's last byte: EOL and NOP end the walk, any other kind lacks its length.
            if byte(ctx, off)? > 1 {
                stats.add(counter::OPT_MALFORMED);
            }
            return None;
        }
        // SAFETY: `at` checked that both bytes lie inside the packet.
        let [kind, len] = unsafe { load16::<0>(at::<2>(ctx, off)?) }.to_ne_bytes();
        if kind == 0 {
            return None;
        }
        // 1 for a NOP (kind 1), else 0: `kind ^ 1` is 0 only for a NOP, and 0 - 1 wraps to the
        // top bit. Hidden from the optimiser, which would turn the arithmetic below back into a
        // branch.
        let nop = opaque((usize::from(kind ^ 1).wrapping_sub(1)) >> (usize::BITS - 1));
        // A NOP is one byte long whatever follows it; any other option says its length, at
        // least 2.
        let len = usize::from(len) * (1 - nop) + nop;
        if len < 2 - nop || off + len > end {
            stats.add(counter::OPT_MALFORMED);
            return None;
        }
        if kind == TPR_KIND {
            if len != usize::from(TPR_LEN) {
                stats.add(counter::OPT_MALFORMED);
                return None;
            }
            // SAFETY: as above, for the four bytes of the id.
            let id = u32::from_be(unsafe { load32::<0>(at::<4>(ctx, off + 2)?) });
            return (id != 0).then_some(id).or_else(|| {
                stats.add(counter::ID_UNKNOWN);
                None
            });
        }
        off += len;
    }
    None
}

/// Every byte the walks read lies below this offset (Ethernet + IPv6 + a 60-byte TCP header, or
/// + UDP + a long header's first 11 bytes); the explicit bound lets the verifier follow the
/// variable offsets.
const WALK_LIMIT: usize = 128;

/// One packet byte at `off`.
#[inline(always)]
fn byte(ctx: &XdpContext, off: usize) -> Option<u8> {
    // SAFETY: `at` checked that the byte lies inside the packet.
    at::<1>(ctx, off).map(|p| unsafe { *(p as *const u8) })
}

/// The address of the `N` packet bytes at `off`, if they lie inside the packet (and below
/// [`WALK_LIMIT`]).
#[inline(always)]
fn at<const N: usize>(ctx: &XdpContext, off: usize) -> Option<usize> {
    if off >= WALK_LIMIT {
        return None;
    }
    // The mask changes nothing (off < WALK_LIMIT, a power of two) but gives the verifier both
    // bounds, whatever form the compiler gave the comparison above.
    let off = opaque(off) & (WALK_LIMIT - 1);
    span(ctx, off, N).ok()
}

/// The server id of a QUIC datagram, per katran: Initial and 0-RTT long headers hash; Handshake
/// and Retry long headers with a destination CID of at least 8 bytes carry an id in it; short
/// headers are assumed to carry an 8-byte CID. A long header's type bits mean different types
/// in QUIC v1 and v2 (RFC 9369), so they are read by version; any other version (version
/// negotiation included) hashes.
#[inline(always)]
fn quic_id(ctx: &XdpContext, pkt: &Pkt, stats: &Stats) -> Option<u32> {
    let payload = pkt.l4_off + UDP_LEN;
    let payload_len = pkt.ip_len - (pkt.l4_off - ETH_LEN) - UDP_LEN;
    let first = byte(ctx, payload)?;
    let cid_off = if first & 0x80 != 0 {
        // Long header: type in bits 4-5; version (4 bytes); DCID length; DCID.
        if payload_len < 6 {
            stats.add(counter::QUIC_HASHED);
            return None;
        }
        // SAFETY: `at` checked that the four bytes lie inside the packet.
        let version = u32::from_be(unsafe { load32::<0>(at::<4>(ctx, payload + 1)?) });
        let kind = (first >> 4) & 0x3;
        // Handshake or Retry: v1 numbers them 2 and 3, v2 3 and 0.
        let routable = match version {
            QUIC_VERSION_1 => kind >= 2,
            QUIC_VERSION_2 => kind == 3 || kind == 0,
            _ => false,
        };
        if !routable {
            stats.add(counter::QUIC_HASHED);
            return None;
        }
        let cid_len = u32::from(byte(ctx, payload + 5)?);
        if cid_len < QUIC_MIN_CID || payload_len < 6 + cid_len as usize {
            stats.add(counter::QUIC_HASHED);
            return None;
        }
        payload + 6
    } else {
        if payload_len < 1 + QUIC_MIN_CID as usize {
            stats.add(counter::QUIC_HASHED);
            return None;
        }
        payload + 1
    };
    let cid = at::<5>(ctx, cid_off)?;
    // SAFETY: `at` checked that the five bytes lie inside the packet.
    let ([c0, c1, c2, c3], c4) = unsafe { (load32::<0>(cid).to_ne_bytes(), *((cid + 4) as *const u8)) };
    let cid = [c0, c1, c2, c3, c4];
    match quic_server_id(&cid) {
        Some(id) if id != 0 => Some(id),
        Some(_) => {
            stats.add(counter::ID_UNKNOWN);
            None
        }
        None => {
            stats.add(counter::QUIC_HASHED);
            None
        }
    }
}
