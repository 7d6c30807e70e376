//! IPIP encapsulation towards the chosen real, then `XDP_TX`.
//!
//! The outer header is IPv4 for an IPv4 real (protocol 4 for IPv4 inside, 41 for IPv6 inside)
//! and IPv6 for an IPv6 real (next header 4 or 41). Its source comes from the configured prefix
//! with host bits from a cheap flow hash (`encap_hash`), so a backend's receive-side hashing
//! (RSS) spreads flows; IPv6 also carries that hash in the flow label. MACs are swapped: the
//! frame goes back to the router it came from, which routes the outer packet to the real.
//!
//! Headers are written as words ([`store32`], [`store16`]), bytes in memory order; the IPv4
//! checksum is summed over the same words (the Internet checksum does not depend on byte order).

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use zrlab_common::lb::{REAL_F_IPV6, Real, counter, encap_hash};
use zrlab_ebpf::net::{
    ETH_LEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_LEN, IPV6_LEN, fold_csum, load16, load32, span,
    store16, store32,
};

use super::{
    icmp,
    maps::{REALS, Stats, config},
    parse::Pkt,
};

/// The Ethernet addresses of a frame in memory order, split where a swap needs no shuffling:
/// destination as bytes 0..4 and 4..6, source as bytes 6..8 and 8..12.
#[derive(Clone, Copy)]
pub(super) struct Macs {
    dst_hi: u32,
    dst_lo: u16,
    src_hi: u16,
    src_lo: u32,
}

impl Macs {
    /// The addresses of the Ethernet header at `eth` (14 bytes the caller bounds-checked).
    #[inline(always)]
    pub(super) fn load(eth: usize) -> Self {
        // SAFETY: the caller checked the 14 bytes.
        unsafe {
            Self {
                dst_hi: load32::<0>(eth),
                dst_lo: load16::<4>(eth),
                src_hi: load16::<6>(eth),
                src_lo: load32::<8>(eth),
            }
        }
    }

    /// Writes the Ethernet header at `at` (14 bytes the caller bounds-checked) with these
    /// addresses, exchanged when `swapped` (the frame goes back where it came from).
    #[inline(always)]
    pub(super) fn write(self, at: usize, swapped: bool, proto: u16) {
        // SAFETY: the caller checked the 14 bytes.
        unsafe {
            if swapped {
                store16::<0>(at, self.src_hi);
                store32::<2>(at, self.src_lo);
                store32::<6>(at, self.dst_hi);
                store16::<10>(at, self.dst_lo);
            } else {
                store32::<0>(at, self.dst_hi);
                store16::<4>(at, self.dst_lo);
                store16::<6>(at, self.src_hi);
                store32::<8>(at, self.src_lo);
            }
            store16::<12>(at, proto.to_be());
        }
    }
}

/// Encapsulates `pkt` towards real `real` and returns `XDP_TX`; with `RESTORE`, undoes it
/// again before returning (benchmark variant).
#[inline(always)]
pub fn encap<const RESTORE: bool>(
    ctx: &XdpContext,
    pkt: &Pkt,
    real: u32,
    vip_num: u32,
    stats: &Stats,
) -> Result<u32, ()> {
    let Some(target) = REALS.get(real).copied() else {
        stats.add(counter::ENCAP_FAILED);
        return Ok(xdp_action::XDP_DROP);
    };
    let outer_v6 = target.flags & REAL_F_IPV6 != 0;
    let outer_len = if outer_v6 { IPV6_LEN } else { IPV4_LEN };
    // Too big for the path to the real once encapsulated: the sender hears what fits.
    if target.mtu != 0 && pkt.ip_len + outer_len > target.mtu as usize {
        return icmp::too_big(ctx, pkt, (target.mtu as usize).saturating_sub(outer_len), stats);
    }
    let macs = Macs::load(span(ctx, 0, ETH_LEN)?);
    // A padded minimum-size frame: cut the padding, so the inner packet is exactly the IP packet.
    if pkt.frame_ip_len > pkt.ip_len {
        let cut = (pkt.frame_ip_len - pkt.ip_len) as i32;
        // SAFETY: shrinking the tail of the frame we own; pointers are re-derived below.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -cut) } != 0 {
            stats.add(counter::ENCAP_FAILED);
            return Ok(xdp_action::XDP_ABORTED);
        }
    }
    // SAFETY: growing the head; every packet pointer is invalid afterwards and re-derived.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer_len as i32)) } != 0 {
        stats.add(counter::ENCAP_FAILED);
        return Ok(xdp_action::XDP_ABORTED);
    }
    let hash = encap_hash(&pkt.flow);
    let inner_proto = if pkt.v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };
    if outer_v6 {
        let frame = span(ctx, 0, ETH_LEN + IPV6_LEN)?;
        macs.write(frame, true, ETH_P_IPV6);
        write_v6(frame + ETH_LEN, &target, pkt, hash, inner_proto);
    } else {
        let frame = span(ctx, 0, ETH_LEN + IPV4_LEN)?;
        macs.write(frame, true, ETH_P_IP);
        write_v4(frame + ETH_LEN, &target, pkt, hash, inner_proto);
    }
    stats.sent(vip_num, real, pkt.ip_len as u64);
    if RESTORE {
        // SAFETY: shrinking the head by what was just added; pointers re-derived.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
            return Ok(xdp_action::XDP_ABORTED);
        }
        let proto = if pkt.v6 { ETH_P_IPV6 } else { ETH_P_IP };
        macs.write(span(ctx, 0, ETH_LEN)?, false, proto);
    }
    Ok(xdp_action::XDP_TX)
}

/// Writes the outer IPv4 header at `at` (20 bytes the caller bounds-checked).
#[inline(always)]
fn write_v4(at: usize, target: &Real, pkt: &Pkt, hash: u32, proto: u8) {
    let mask = config(|c| &c.encap_src_v4_mask);
    let src = (config(|c| &c.encap_src_v4) & mask) | (hash & !mask);
    // Don't fragment: the path MTU is what `Real::mtu` says (see `icmp`).
    write_ipv4_header(at, pkt.tos, (IPV4_LEN + pkt.ip_len) as u16, true, proto, src, target.addr[0]);
}

/// Writes an IPv4 header without options at `at` (20 bytes the caller bounds-checked):
/// identification 0, TTL 64, `df` as asked, addresses as address words, checksum computed.
#[inline(always)]
pub(super) fn write_ipv4_header(at: usize, tos: u8, tot: u16, df: bool, proto: u8, src: u32, dst: u32) {
    let tot = tot.to_be_bytes();
    let w0 = u32::from_ne_bytes([0x45, tos, tot[0], tot[1]]);
    let w1 = u32::from_ne_bytes([0, 0, if df { 0x40 } else { 0 }, 0]);
    let ttl_proto = u16::from_ne_bytes([64, proto]);
    // One's-complement sum of the 32-bit words with 64-bit adds, folded at the end (RFC 1071):
    // fewer operations than splitting every word into halves.
    let sum = [w0, w1, src, dst].iter().fold(u64::from(ttl_proto), |acc, w| acc + u64::from(*w));
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = ((sum & 0xffff_ffff) + (sum >> 32)) as u32;
    // SAFETY: the caller checked the 20 bytes.
    unsafe {
        store32::<0>(at, w0);
        store32::<4>(at, w1);
        store16::<8>(at, ttl_proto);
        store16::<10>(at, fold_csum(sum));
        store32::<12>(at, src);
        store32::<16>(at, dst);
    }
}

/// Writes the outer IPv6 header at `at` (40 bytes the caller bounds-checked).
#[inline(always)]
fn write_v6(at: usize, target: &Real, pkt: &Pkt, hash: u32, next: u8) {
    let vtcfl = (6u32 << 28) | (u32::from(pkt.tos) << 20) | (hash & 0x000f_ffff);
    let len = (pkt.ip_len as u16).to_be_bytes();
    // SAFETY: the caller checked the 40 bytes.
    unsafe {
        store32::<0>(at, vtcfl.to_be());
        store32::<4>(at, u32::from_ne_bytes([len[0], len[1], next, 64]));
        store32::<8>(at, config(|c| &c.encap_src_v6[0]));
        store32::<12>(at, config(|c| &c.encap_src_v6[1]));
        store32::<16>(at, config(|c| &c.encap_src_v6[2]));
        store32::<20>(at, hash);
        store32::<24>(at, target.addr[0]);
        store32::<28>(at, target.addr[1]);
        store32::<32>(at, target.addr[2]);
        store32::<36>(at, target.addr[3]);
    }
}
