//! Answering a VIP packet that is too big for the path to its real once encapsulated: ICMP
//! "fragmentation needed" (type 3, code 4) or ICMPv6 "packet too big" (type 2) back to the
//! sender, carrying the size that fits (`zrlab_common::lb::Real::mtu` less the outer header),
//! as a router on the path would. Sending the frame anyway would lose it further on (a veth
//! drops a frame above its peer's MTU, a router on the way answers the tunnel's source, not the
//! client) and the connection would stall: the path-MTU black hole.
//!
//! The answer is built in the frame itself: the tail is cut to the quoted part (the packet's IP
//! header and the first 8 bytes after it: the ports and, for TCP, the sequence number the
//! sender's stack checks), the head grows by a new IP header and the ICMP header, and the frame
//! goes back out where it came from (`XDP_TX`, addresses swapped). IPv6 answers never carry
//! less than 1280, the least MTU IPv6 allows.
//!
//! Rate-limited per CPU (`Config::icmp_too_big_per_sec` in one-second windows), counted;
//! nothing answers an ICMP error or an IPv4 packet that may be fragmented (DF clear: an XDP
//! program cannot fragment it), which are dropped, counted.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    },
    programs::XdpContext,
};
use zrlab_common::lb::counter;
use zrlab_ebpf::net::{
    ETH_LEN, ETH_P_IP, ETH_P_IPV6, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_LEN, ICMPV6_PKT_TOOBIG, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPV4_LEN, IPV6_LEN, fold_csum, frame_len, load32, span, store16, store32,
};

use super::{
    encap::{Macs, write_ipv4_header},
    maps::{ICMP_RATE, Stats, config},
    parse::Pkt,
};

/// Bytes of the offending packet quoted after its IP header.
const QUOTED_L4: usize = 8;
/// The least MTU of IPv6 (RFC 8200).
const IPV6_MIN_MTU: usize = 1280;

/// Answers `pkt`, too big for its real's path, with the size `fits` (the inner packet's
/// largest), or drops it; the verdict.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, pkt: &Pkt, fits: usize, stats: &Stats) -> Result<u32, ()> {
    if pkt.icmp || !pkt.df {
        stats.add(counter::TOO_BIG_DROPPED);
        return Ok(xdp_action::XDP_DROP);
    }
    if !allowed() {
        stats.add(counter::TOO_BIG_LIMITED);
        return Ok(xdp_action::XDP_DROP);
    }
    stats.add(counter::TOO_BIG);
    if pkt.v6 { answer_v6(ctx, fits.max(IPV6_MIN_MTU)) } else { answer_v4(ctx, fits) }
}

/// Whether this CPU may send one more answer in the current second (and counts it).
#[inline(always)]
fn allowed() -> bool {
    let limit = u64::from(config(|c| &c.icmp_too_big_per_sec));
    let Some(rate) = ICMP_RATE.get_ptr_mut(0) else { return false };
    // SAFETY: a per-CPU value: no other CPU writes it; a helper without preconditions.
    let (rate, now) = unsafe { (&mut *rate, bpf_ktime_get_ns()) };
    if now.wrapping_sub(rate.window_ns) >= 1_000_000_000 {
        rate.window_ns = now;
        rate.sent = 0;
    }
    if rate.sent >= limit {
        return false;
    }
    rate.sent += 1;
    true
}

/// Cuts the frame to its Ethernet and IP headers and `QUOTED_L4` bytes (`ip_len` the IP
/// header's length), then grows the head by `ip_len` and the ICMP header.
#[inline(always)]
fn reshape(ctx: &XdpContext, ip_len: usize) -> Result<(), ()> {
    let keep = ETH_LEN + ip_len + QUOTED_L4;
    let cut = frame_len(ctx).saturating_sub(keep) as i32;
    // SAFETY: shrinking the tail, then growing the head of the frame we own; every packet
    // pointer is re-derived afterwards.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -cut) } != 0
        || unsafe { bpf_xdp_adjust_head(ctx.ctx, -((ip_len + ICMP_LEN) as i32)) } != 0
    {
        return Err(());
    }
    Ok(())
}

/// Sums `words` (memory order) into a one's-complement checksum field value. The 64-bit sum of
/// at most 24 words is below 2^37: its three 16-bit chunks added up are the same sum modulo
/// 65535 (2^16 is 1 there), and `fold_csum` takes their carries round. (Folding twice at 32 bits
/// had a second fold that mattered only when the first one's result passed 2^32, which no
/// test's packet makes happen.)
#[inline(always)]
fn checksum(words: &[u32]) -> u16 {
    let sum = words.iter().fold(0u64, |acc, w| acc + u64::from(*w));
    fold_csum(((sum & 0xffff) + ((sum >> 16) & 0xffff) + (sum >> 32)) as u32)
}

/// The IPv4 answer: Ethernet, IPv4 (20), ICMP (8), the quote (20 + 8): 70 bytes.
#[inline(always)]
fn answer_v4(ctx: &XdpContext, fits: usize) -> Result<u32, ()> {
    reshape(ctx, IPV4_LEN)?;
    const ICMP: usize = ETH_LEN + IPV4_LEN;
    const QUOTE: usize = ICMP + ICMP_LEN;
    let f = span(ctx, 0, QUOTE + IPV4_LEN + QUOTED_L4)?;
    // The old Ethernet header sits where the new IP header ends: read it first.
    let macs = Macs::load(f + IPV4_LEN + ICMP_LEN);
    // SAFETY (every load and store): `span` checked the 70 bytes.
    let (client, vip) = unsafe { (load32::<{ (QUOTE + 12) as i16 }>(f), load32::<{ (QUOTE + 16) as i16 }>(f)) };
    macs.write(f, true, ETH_P_IP);
    let tot = (IPV4_LEN + ICMP_LEN + IPV4_LEN + QUOTED_L4) as u16;
    write_ipv4_header(f + ETH_LEN, 0, tot, false, IPPROTO_ICMP, vip, client);
    let mtu = (fits.min(usize::from(u16::MAX)) as u16).to_be_bytes();
    let w0 = u32::from_ne_bytes([ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0]);
    let w1 = u32::from_ne_bytes([0, 0, mtu[0], mtu[1]]);
    let quote = unsafe {
        [
            load32::<{ QUOTE as i16 }>(f),
            load32::<{ (QUOTE + 4) as i16 }>(f),
            load32::<{ (QUOTE + 8) as i16 }>(f),
            load32::<{ (QUOTE + 12) as i16 }>(f),
            load32::<{ (QUOTE + 16) as i16 }>(f),
            load32::<{ (QUOTE + 20) as i16 }>(f),
            load32::<{ (QUOTE + 24) as i16 }>(f),
        ]
    };
    let sum = checksum(&[w0, w1, quote[0], quote[1], quote[2], quote[3], quote[4], quote[5], quote[6]]);
    unsafe {
        store32::<{ ICMP as i16 }>(f, w0);
        store16::<{ (ICMP + 2) as i16 }>(f, sum);
        store32::<{ (ICMP + 4) as i16 }>(f, w1);
    }
    Ok(xdp_action::XDP_TX)
}

/// The IPv6 answer: Ethernet, IPv6 (40), ICMPv6 (8), the quote (40 + 8): 110 bytes.
#[inline(always)]
fn answer_v6(ctx: &XdpContext, fits: usize) -> Result<u32, ()> {
    reshape(ctx, IPV6_LEN)?;
    const IP: usize = ETH_LEN;
    const ICMP: usize = ETH_LEN + IPV6_LEN;
    const QUOTE: usize = ICMP + ICMP_LEN;
    let f = span(ctx, 0, QUOTE + IPV6_LEN + QUOTED_L4)?;
    let macs = Macs::load(f + IPV6_LEN + ICMP_LEN);
    // SAFETY (every load and store): `span` checked the 110 bytes.
    let quote = unsafe {
        [
            load32::<{ QUOTE as i16 }>(f),
            load32::<{ (QUOTE + 4) as i16 }>(f),
            load32::<{ (QUOTE + 8) as i16 }>(f),
            load32::<{ (QUOTE + 12) as i16 }>(f),
            load32::<{ (QUOTE + 16) as i16 }>(f),
            load32::<{ (QUOTE + 20) as i16 }>(f),
            load32::<{ (QUOTE + 24) as i16 }>(f),
            load32::<{ (QUOTE + 28) as i16 }>(f),
            load32::<{ (QUOTE + 32) as i16 }>(f),
            load32::<{ (QUOTE + 36) as i16 }>(f),
            load32::<{ (QUOTE + 40) as i16 }>(f),
            load32::<{ (QUOTE + 44) as i16 }>(f),
        ]
    };
    // The quoted packet: source the client (words 2..6), destination the VIP (words 6..10).
    let (client, vip) = ([quote[2], quote[3], quote[4], quote[5]], [quote[6], quote[7], quote[8], quote[9]]);
    macs.write(f, true, ETH_P_IPV6);
    let payload = (ICMP_LEN + IPV6_LEN + QUOTED_L4) as u16;
    let len = payload.to_be_bytes();
    let lengths = u32::from_ne_bytes([len[0], len[1], IPPROTO_ICMPV6, 64]);
    let w0 = u32::from_ne_bytes([ICMPV6_PKT_TOOBIG, 0, 0, 0]);
    let w1 = (fits as u32).to_be();
    // The pseudo-header (RFC 8200 section 8.1): addresses, upper-layer length, next header.
    let sum = checksum(&[
        vip[0],
        vip[1],
        vip[2],
        vip[3],
        client[0],
        client[1],
        client[2],
        client[3],
        u32::from(payload).to_be(),
        u32::from(IPPROTO_ICMPV6).to_be(),
        w0,
        w1,
        quote[0],
        quote[1],
        quote[2],
        quote[3],
        quote[4],
        quote[5],
        quote[6],
        quote[7],
        quote[8],
        quote[9],
        quote[10],
        quote[11],
    ]);
    unsafe {
        store32::<{ IP as i16 }>(f, (6u32 << 28).to_be());
        store32::<{ (IP + 4) as i16 }>(f, lengths);
        store32::<{ (IP + 8) as i16 }>(f, vip[0]);
        store32::<{ (IP + 12) as i16 }>(f, vip[1]);
        store32::<{ (IP + 16) as i16 }>(f, vip[2]);
        store32::<{ (IP + 20) as i16 }>(f, vip[3]);
        store32::<{ (IP + 24) as i16 }>(f, client[0]);
        store32::<{ (IP + 28) as i16 }>(f, client[1]);
        store32::<{ (IP + 32) as i16 }>(f, client[2]);
        store32::<{ (IP + 36) as i16 }>(f, client[3]);
        store32::<{ ICMP as i16 }>(f, w0);
        store16::<{ (ICMP + 2) as i16 }>(f, sum);
        store32::<{ (ICMP + 4) as i16 }>(f, w1);
    }
    Ok(xdp_action::XDP_TX)
}
