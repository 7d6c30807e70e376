//! IPIP encapsulation towards the chosen real, then `XDP_TX`.
//!
//! The outer header is IPv4 for an IPv4 real (protocol 4 for IPv4 inside, 41 for IPv6 inside)
//! and IPv6 for an IPv6 real (next header 4 or 41). Its source comes from the configured prefix
//! with host bits from the flow hash, so a backend's receive-side hashing (RSS) spreads flows;
//! IPv6 also carries the hash in the flow label. MACs are swapped: the frame goes back to the
//! router it came from, which routes the outer packet to the real.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use zrlab_common::lb::{Config, REAL_F_IPV6, Real, VipStats, counter, flow_hash};
use zrlab_ebpf::net::{
    ETH_LEN, ETH_P_IP, ETH_P_IPV6, EthHdr, IPPROTO_IPIP, IPPROTO_IPV6, IPV4_LEN, IPV6_LEN, Ipv4Hdr, Ipv6Hdr, ipv4_csum,
    ptr_at, read_at,
};

use super::{
    maps::{CONFIG, REAL_STATS, REALS, VIP_STATS, count},
    parse::Pkt,
};

/// Encapsulates `pkt` towards real `real` and returns `XDP_TX`; with `RESTORE`, undoes it
/// again before returning (benchmark variant).
#[inline(always)]
pub fn encap<const RESTORE: bool>(ctx: &XdpContext, pkt: &Pkt, real: u32) -> Result<u32, ()> {
    let Some(target) = REALS.get(real).copied() else {
        count(counter::ENCAP_FAILED);
        return Ok(xdp_action::XDP_DROP);
    };
    let config = CONFIG.get(0).copied().unwrap_or_default();
    let eth = read_at::<EthHdr>(ctx, 0)?;
    // A padded minimum-size frame: cut the padding, so the inner packet is exactly the IP packet.
    if pkt.frame_ip_len > pkt.ip_len {
        let cut = (pkt.frame_ip_len - pkt.ip_len) as i32;
        // SAFETY: shrinking the tail of the frame we own; pointers are re-derived below.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -cut) } != 0 {
            count(counter::ENCAP_FAILED);
            return Ok(xdp_action::XDP_ABORTED);
        }
    }
    let outer_v6 = target.flags & REAL_F_IPV6 != 0;
    let outer_len = if outer_v6 { IPV6_LEN } else { IPV4_LEN };
    // SAFETY: growing the head; every packet pointer is invalid afterwards and re-derived.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer_len as i32)) } != 0 {
        count(counter::ENCAP_FAILED);
        return Ok(xdp_action::XDP_ABORTED);
    }
    let hash = flow_hash(&pkt.flow, config.hash_seed);
    let inner_proto = if pkt.v6 { IPPROTO_IPV6 } else { IPPROTO_IPIP };
    let new_eth =
        EthHdr { dst: eth.src, src: eth.dst, proto: if outer_v6 { ETH_P_IPV6 } else { ETH_P_IP }.to_be_bytes() };
    // SAFETY: ptr_at checked the bounds of each header written; all are byte structs.
    unsafe {
        *ptr_at::<EthHdr>(ctx, 0)? = new_eth;
        if outer_v6 {
            *ptr_at::<Ipv6Hdr>(ctx, ETH_LEN)? = outer_v6_header(&config, &target, pkt, hash, inner_proto);
        } else {
            *ptr_at::<Ipv4Hdr>(ctx, ETH_LEN)? = outer_v4_header(&config, &target, pkt, hash, inner_proto);
        }
    }
    account(pkt, real);
    if RESTORE {
        // SAFETY: shrinking the head by what was just added; pointers re-derived.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
            return Ok(xdp_action::XDP_ABORTED);
        }
        // SAFETY: as above.
        unsafe { *ptr_at::<EthHdr>(ctx, 0)? = eth };
    }
    Ok(xdp_action::XDP_TX)
}

#[inline(always)]
fn outer_v4_header(config: &Config, target: &Real, pkt: &Pkt, hash: u32, proto: u8) -> Ipv4Hdr {
    let src = (config.encap_src_v4 & config.encap_src_v4_mask) | (hash & !config.encap_src_v4_mask);
    let mut hdr = Ipv4Hdr {
        vihl: 0x45,
        tos: pkt.tos,
        tot_len: ((IPV4_LEN + pkt.ip_len) as u16).to_be_bytes(),
        id: [0, 0],
        // Don't fragment: the path MTU is the operator's business (katran does the same).
        frag: 0x4000u16.to_be_bytes(),
        ttl: 64,
        proto,
        csum: [0, 0],
        src: src.to_ne_bytes(),
        dst: target.addr[0].to_ne_bytes(),
    };
    hdr.csum = ipv4_csum(&hdr);
    hdr
}

#[inline(always)]
fn outer_v6_header(config: &Config, target: &Real, pkt: &Pkt, hash: u32, next: u8) -> Ipv6Hdr {
    let flow_label = hash & 0x000f_ffff;
    let vtcfl = (6u32 << 28) | (u32::from(pkt.tos) << 20) | flow_label;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let src_words = [config.encap_src_v6[0], config.encap_src_v6[1], config.encap_src_v6[2], hash];
    let mut i = 0;
    while i < 4 {
        let s = src_words[i].to_ne_bytes();
        let d = target.addr[i].to_ne_bytes();
        let mut j = 0;
        while j < 4 {
            src[i * 4 + j] = s[j];
            dst[i * 4 + j] = d[j];
            j += 1;
        }
        i += 1;
    }
    Ipv6Hdr {
        vtcfl: vtcfl.to_be_bytes(),
        payload_len: (pkt.ip_len as u16).to_be_bytes(),
        nexthdr: next,
        hop: 64,
        src,
        dst,
    }
}

#[inline(always)]
fn account(pkt: &Pkt, real: u32) {
    count(counter::TX);
    if let Some(stats) = VIP_STATS.get_ptr_mut(pkt.vip.vip_num) {
        // SAFETY: a per-CPU slot: no other CPU writes it.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += pkt.ip_len as u64;
        }
    }
    if let Some(packets) = REAL_STATS.get_ptr_mut(real) {
        // SAFETY: as above.
        unsafe { *packets += 1 };
    }
}

const _: () = assert!(core::mem::size_of::<VipStats>() == 16);
