//! Picking the real: server id (TCP option or QUIC connection id), connection table, ring.
//!
//! Order (DESIGN.md section 1, katran's order):
//! 1. TCP non-SYN packets of a VIP with id routing: the first well-formed TPR option's id, if
//!    live, picks the real and corrects the connection table;
//! 2. QUIC packets of a VIP with id routing: the destination CID's id, if routable and live;
//! 3. the connection table (per-CPU, then the shared fallback), except for SYNs, which always
//!    hash (a new connection);
//! 4. the VIP's active Maglev ring, and the result is remembered in the connection table.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_get_smp_processor_id},
    programs::XdpContext,
};
use zrlab_common::lb::{
    ConnEntry, FlowKey, MAX_RING, QUIC_MIN_CID, TPR_KIND, TPR_LEN, TPR_MAX_OPTIONS, VIP_F_HASH_PER_PACKET,
    VIP_F_NO_LRU, VIP_F_QUIC_ID_ROUTING, VIP_F_TCP_ID_ROUTING, counter, flow_hash, quic_server_id,
};
use zrlab_ebpf::net::{ETH_LEN, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_LEN, TCP_SYN, UDP_LEN, ptr_at};

use super::{
    maps::{CONFIG, LRU_FALLBACK, LRU_PER_CPU, RINGS, SERVER_IDS, count},
    parse::Pkt,
};

/// The real index for `pkt`, or `None` if the VIP has no usable ring.
#[inline(always)]
pub fn pick(ctx: &XdpContext, pkt: &Pkt) -> Option<u32> {
    let flags = pkt.vip.flags;
    let id = if pkt.flow.proto == IPPROTO_TCP && flags & VIP_F_TCP_ID_ROUTING != 0 && pkt.tcp_flags & TCP_SYN == 0 {
        tpr_id(ctx, pkt)
    } else if pkt.flow.proto == IPPROTO_UDP && flags & VIP_F_QUIC_ID_ROUTING != 0 {
        quic_id(ctx, pkt)
    } else {
        None
    };
    if let Some(id) = id {
        // SAFETY (verifier): a plain map lookup, copied out at once.
        match unsafe { SERVER_IDS.get(&id) } {
            Some(real) => {
                let real = *real;
                count(if pkt.flow.proto == IPPROTO_TCP { counter::TCP_ID_ROUTED } else { counter::QUIC_ID_ROUTED });
                if flags & VIP_F_NO_LRU == 0 {
                    remember(&pkt.flow, real);
                }
                return Some(real);
            }
            None => count(counter::ID_UNKNOWN),
        }
    }
    if flags & VIP_F_HASH_PER_PACKET != 0 {
        // SAFETY: a helper without preconditions.
        return ring(pkt, flow_hash(&pkt.flow, unsafe { bpf_get_prandom_u32() }));
    }
    let seed = CONFIG.get(0).map_or(0, |c| c.hash_seed);
    if flags & VIP_F_NO_LRU != 0 {
        return ring(pkt, flow_hash(&pkt.flow, seed));
    }
    let syn = pkt.flow.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if !syn {
        if let Some(real) = lookup(&pkt.flow) {
            return Some(real);
        }
    }
    count(counter::LRU_MISS);
    let real = ring(pkt, flow_hash(&pkt.flow, seed))?;
    remember(&pkt.flow, real);
    Some(real)
}

#[inline(always)]
fn ring(pkt: &Pkt, hash: u32) -> Option<u32> {
    let meta = &pkt.vip;
    if meta.ring_size == 0 || meta.ring_size > MAX_RING {
        return None;
    }
    let entry = RINGS.get_value_ptr_mut(meta.vip_num, &(hash % meta.ring_size))?;
    count(counter::RING_ROUTED);
    // SAFETY: the kernel returned a valid pointer into the ring's value.
    Some(unsafe { *entry })
}

#[inline(always)]
fn cpu() -> u32 {
    // SAFETY: a helper without preconditions.
    unsafe { bpf_get_smp_processor_id() }
}

#[inline(always)]
fn lookup(flow: &FlowKey) -> Option<u32> {
    if let Some(entry) = LRU_PER_CPU.get_value_ptr_mut(cpu(), flow) {
        count(counter::LRU_HIT);
        // SAFETY: the kernel returned a valid pointer into the inner map's value.
        return Some(unsafe { (*entry).real });
    }
    // SAFETY (verifier): a plain map lookup, copied out at once.
    let real = unsafe { LRU_FALLBACK.get(flow) }.map(|e| e.real)?;
    count(counter::LRU_FALLBACK_HIT);
    if let Some(table) = LRU_PER_CPU.get(cpu()) {
        let _ = table.insert(flow, ConnEntry { real, pad: 0 }, 0);
    }
    Some(real)
}

#[inline(always)]
fn remember(flow: &FlowKey, real: u32) {
    let entry = ConnEntry { real, pad: 0 };
    if let Some(table) = LRU_PER_CPU.get(cpu()) {
        let _ = table.insert(flow, entry, 0);
    }
    let _ = LRU_FALLBACK.insert(flow, &entry, 0);
}

/// Walks the TCP options for the first well-formed TPR option (DESIGN.md wire rules): EOL ends
/// the walk; a malformed option (length 0 or 1, past the header, wrong length for 0xB7) ends it
/// and nothing after is trusted; at most [`TPR_MAX_OPTIONS`] options. Id 0 means none.
#[inline(always)]
fn tpr_id(ctx: &XdpContext, pkt: &Pkt) -> Option<u32> {
    let end = pkt.l4_off + pkt.tcp_hdr_len;
    let mut off = pkt.l4_off + TCP_LEN;
    let mut i = 0;
    while i < TPR_MAX_OPTIONS {
        i += 1;
        if off >= end {
            return None;
        }
        let kind = byte(ctx, off)?;
        match kind {
            0 => return None,
            1 => {
                off += 1;
                continue;
            }
            _ => {}
        }
        if off + 1 >= end {
            count(counter::OPT_MALFORMED);
            return None;
        }
        let len = usize::from(byte(ctx, off + 1)?);
        if len < 2 || off + len > end {
            count(counter::OPT_MALFORMED);
            return None;
        }
        if kind == TPR_KIND {
            if len != usize::from(TPR_LEN) {
                count(counter::OPT_MALFORMED);
                return None;
            }
            let id = u32::from_be_bytes([
                byte(ctx, off + 2)?,
                byte(ctx, off + 3)?,
                byte(ctx, off + 4)?,
                byte(ctx, off + 5)?,
            ]);
            return (id != 0).then_some(id).or_else(|| {
                count(counter::ID_UNKNOWN);
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
    if off >= WALK_LIMIT {
        return None;
    }
    // SAFETY: ptr_at checked that the byte lies inside the packet.
    ptr_at::<u8>(ctx, off).ok().map(|p| unsafe { *p })
}

/// The server id of a QUIC datagram, per katran: Initial and 0-RTT long headers hash; Handshake
/// and Retry long headers with a destination CID of at least 8 bytes carry an id in it; short
/// headers are assumed to carry an 8-byte CID.
#[inline(always)]
fn quic_id(ctx: &XdpContext, pkt: &Pkt) -> Option<u32> {
    let payload = pkt.l4_off + UDP_LEN;
    let payload_len = pkt.ip_len - (pkt.l4_off - ETH_LEN) - UDP_LEN;
    let first = byte(ctx, payload)?;
    let cid_off = if first & 0x80 != 0 {
        // Long header: type in bits 4-5; version (4 bytes); DCID length; DCID.
        let kind = (first >> 4) & 0x3;
        if kind < 2 || payload_len < 6 {
            count(counter::QUIC_HASHED);
            return None;
        }
        let cid_len = u32::from(byte(ctx, payload + 5)?);
        if cid_len < QUIC_MIN_CID || payload_len < 6 + cid_len as usize {
            count(counter::QUIC_HASHED);
            return None;
        }
        payload + 6
    } else {
        if payload_len < 1 + QUIC_MIN_CID as usize {
            count(counter::QUIC_HASHED);
            return None;
        }
        payload + 1
    };
    let cid = [
        byte(ctx, cid_off)?,
        byte(ctx, cid_off + 1)?,
        byte(ctx, cid_off + 2)?,
        byte(ctx, cid_off + 3)?,
        byte(ctx, cid_off + 4)?,
    ];
    match quic_server_id(&cid) {
        Some(id) if id != 0 => Some(id),
        Some(_) => {
            count(counter::ID_UNKNOWN);
            None
        }
        None => {
            count(counter::QUIC_HASHED);
            None
        }
    }
}
