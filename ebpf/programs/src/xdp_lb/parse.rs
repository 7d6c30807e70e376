//! Validation of a frame: is it a VIP packet we may forward, and what is its flow?
//!
//! Traffic for anything but a VIP address (the LB host itself, transit) passes untouched even
//! if malformed: a packet that fails a check is dropped or passed per the policy only once its
//! destination is known to be a VIP address ([`refuse`]). Only validated packets reach the
//! caller's continuation.
//!
//! [`parse`] hands the packet on by calling the continuation from the IPv4 and from the IPv6
//! branch separately, so that everything after parsing is compiled once per family: in the IPv4
//! copy the address words that are zero and the family flag are constants. With one shared copy
//! the two families' values merged, and all eight address words stayed live (in stack slots)
//! through the lookup and the encapsulation of every IPv4 packet.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use zrlab_common::lb::{FlowKey, counter, vip_filter_bit};
use zrlab_ebpf::net::{
    ETH_LEN, ETH_MIN_FRAME, ETH_P_IP, ETH_P_IPV6, ICMP_DEST_UNREACH, ICMP_LEN, ICMPV6_DEST_UNREACH, ICMPV6_PKT_TOOBIG,
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_LEN, IPV6_LEN, TCP_LEN, UDP_LEN, frame_len, load16,
    load32, opaque, span,
};

use super::maps::{Stats, VIP_ADDRS, VIP_FILTER};

/// A validated TCP or UDP packet (whether a VIP serves its port is decided by routing).
pub struct Pkt {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Offset of the L4 header.
    pub l4_off: usize,
    /// Length of the IP packet (header and payload): what gets encapsulated.
    pub ip_len: usize,
    /// Bytes after the Ethernet header (more than `ip_len` when the frame was padded).
    pub frame_ip_len: usize,
    /// TOS / traffic class, copied to the outer header.
    pub tos: u8,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// TCP header length in bytes (0 for UDP).
    pub tcp_hdr_len: usize,
    /// IPv4's "don't fragment" (always for IPv6, which routers never fragment).
    pub df: bool,
    /// An ICMP or ICMPv6 error about a packet of the flow (the flow is the quoted packet's,
    /// turned around: the client's side as the source); else a packet of the flow itself.
    pub icmp: bool,
    /// The flow.
    pub flow: FlowKey,
}

const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;

#[inline(always)]
fn verdict(stats: &Stats, slot: u32, action: u32) -> Result<u32, ()> {
    stats.add(slot);
    Ok(action)
}

/// A packet that is not a clean VIP packet: if its destination is not a VIP address at all, it
/// passes untouched (whatever is wrong with it is not the LB's business); otherwise `action`.
/// Checked only here, off the hot path: a clean VIP packet needs one lookup, the VIP's.
///
/// The lookup key is a fresh array whose first word went through [`opaque`]: when the key was
/// the caller's address array, taken by value or by reference, the compiler let the map helper
/// see the caller's own array, which then had to live in memory on every path, the hot one
/// included: the IPv4 copy of the path stored the three zero words and loaded them back for
/// the table key, and copied the array into the flow.
#[inline(always)]
pub fn refuse(stats: &Stats, dst: [u32; 4], slot: u32, action: u32) -> Result<u32, ()> {
    if !is_vip_addr(dst) {
        return pass_non_vip(stats);
    }
    verdict(stats, slot, action)
}

/// Whether `dst` carries at least one VIP: the filter, then the set (see [`refuse`] for the
/// key's form).
#[inline(always)]
fn is_vip_addr(dst: [u32; 4]) -> bool {
    if !may_be_vip_addr(&dst) {
        return false;
    }
    let key = [opaque(dst[0] as usize) as u32, dst[1], dst[2], dst[3]];
    // SAFETY (verifier): a plain map lookup.
    unsafe { VIP_ADDRS.get(&key) }.is_some()
}

/// Whether `dst` may carry a VIP: `false` proves it carries none (its bit in the VIP-address
/// filter is clear, `zrlab_common::lb::VIP_FILTER_MAP`); `true` may be another address's bit.
#[inline(always)]
pub fn may_be_vip_addr(dst: &[u32; 4]) -> bool {
    let bit = vip_filter_bit(dst);
    VIP_FILTER.get(bit >> 6).is_none_or(|word| word & (1 << (bit & 63)) != 0)
}

/// A packet to an address that carries no VIP: passed untouched, counted.
#[inline(always)]
pub fn pass_non_vip(stats: &Stats) -> Result<u32, ()> {
    verdict(stats, counter::NON_VIP, PASS)
}

/// IPv6 extension headers (IANA's registry, RFC 7045), fragments among them: not parsed by the
/// LB. 253 and 254 are the experimental ones (RFC 4727); the model's parser counted them as
/// extension headers where this list had missed them.
#[inline(always)]
fn is_ipv6_extension(nexthdr: u8) -> bool {
    matches!(nexthdr, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

/// Parses the frame in `ctx`: the verdict for what is not a clean TCP or UDP packet, else what
/// `route` returns for it. Header fields are read as words ([`load32`], [`load16`]) off one
/// bounds-checked base per header.
#[inline(always)]
pub fn parse(ctx: &XdpContext, stats: &Stats, route: impl FnOnce(Pkt) -> Result<u32, ()>) -> Result<u32, ()> {
    let Ok(eth) = span(ctx, 0, ETH_LEN) else {
        return verdict(stats, counter::NOT_IP, PASS);
    };
    let frame_ip_len = frame_len(ctx) - ETH_LEN;
    // SAFETY (every load below): `span` checked that its base holds the bytes read.
    let ethertype = u16::from_be(unsafe { load16::<12>(eth) });
    match ethertype {
        ETH_P_IP => {
            let Ok(ip) = span(ctx, ETH_LEN, IPV4_LEN) else {
                return verdict(stats, counter::NOT_IP, PASS);
            };
            let (head, frag_word, proto_word) = unsafe { (load32::<0>(ip), load32::<4>(ip), load16::<8>(ip)) };
            let dst = [unsafe { load32::<16>(ip) }, 0, 0, 0];
            let [vihl, tos, tot_hi, tot_lo] = head.to_ne_bytes();
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < IPV4_LEN {
                return refuse(stats, dst, counter::MALFORMED, DROP);
            }
            if ihl > IPV4_LEN {
                return refuse(stats, dst, counter::IP_OPTIONS, PASS);
            }
            let tot = usize::from(u16::from_be_bytes([tot_hi, tot_lo]));
            if tot < IPV4_LEN || !fits_frame(tot, frame_ip_len) {
                return refuse(stats, dst, counter::MALFORMED, DROP);
            }
            // MF set or a non-zero offset: a fragment.
            let [_, _, frag_hi, frag_lo] = frag_word.to_ne_bytes();
            if u16::from_be_bytes([frag_hi, frag_lo]) & 0x3fff != 0 {
                return refuse(stats, dst, counter::FRAGMENTS, PASS);
            }
            let src = [unsafe { load32::<12>(ip) }, 0, 0, 0];
            let df = u16::from_be_bytes([frag_hi, frag_lo]) & 0x4000 != 0;
            let ip = Ip { v6: false, src, dst, len: tot, proto: proto_word.to_ne_bytes()[1], tos, df };
            l4(ctx, stats, ip, frame_ip_len, route)
        }
        ETH_P_IPV6 => {
            let Ok(ip) = span(ctx, ETH_LEN, IPV6_LEN) else {
                return verdict(stats, counter::NOT_IP, PASS);
            };
            let (head, lengths) = unsafe { (load32::<0>(ip), load32::<4>(ip)) };
            let dst = unsafe { [load32::<24>(ip), load32::<28>(ip), load32::<32>(ip), load32::<36>(ip)] };
            let [b0, b1, _, _] = head.to_ne_bytes();
            if b0 >> 4 != 6 {
                return refuse(stats, dst, counter::MALFORMED, DROP);
            }
            let [len_hi, len_lo, nexthdr, _] = lengths.to_ne_bytes();
            let tot = IPV6_LEN + usize::from(u16::from_be_bytes([len_hi, len_lo]));
            if !fits_frame(tot, frame_ip_len) {
                return refuse(stats, dst, counter::MALFORMED, DROP);
            }
            if is_ipv6_extension(nexthdr) {
                return refuse(stats, dst, counter::FRAGMENTS, PASS);
            }
            let src = unsafe { [load32::<8>(ip), load32::<12>(ip), load32::<16>(ip), load32::<20>(ip)] };
            let ip = Ip { v6: true, src, dst, len: tot, proto: nexthdr, tos: (b0 << 4) | (b1 >> 4), df: true };
            l4(ctx, stats, ip, frame_ip_len, route)
        }
        _ => verdict(stats, counter::NOT_IP, PASS),
    }
}

/// What the IP header said.
#[derive(Clone, Copy)]
struct Ip {
    v6: bool,
    src: [u32; 4],
    dst: [u32; 4],
    /// Header and payload.
    len: usize,
    proto: u8,
    tos: u8,
    df: bool,
}

/// Parses the TCP or UDP header after `ip` and hands the packet to `route`.
#[inline(always)]
fn l4(
    ctx: &XdpContext,
    stats: &Stats,
    ip: Ip,
    frame_ip_len: usize,
    route: impl FnOnce(Pkt) -> Result<u32, ()>,
) -> Result<u32, ()> {
    let Ip { v6, src, dst, len: ip_len, proto, tos, df } = ip;
    let l4_off = ETH_LEN + if v6 { IPV6_LEN } else { IPV4_LEN };
    let l4_len = ip_len - (l4_off - ETH_LEN);
    if proto == if v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP } {
        return icmp_error(ctx, stats, ip, l4_off, l4_len, frame_ip_len, route);
    }
    let (ports, tcp_flags, tcp_hdr_len) = match proto {
        IPPROTO_TCP => {
            if l4_len < TCP_LEN {
                return refuse(stats, dst, counter::MALFORMED, DROP);
            }
            let tcp = span(ctx, l4_off, TCP_LEN)?;
            let (ports, offset_flags) = unsafe { (load32::<0>(tcp), load16::<12>(tcp)) };
            let [doff, flags] = offset_flags.to_ne_bytes();
            let hdr_len = usize::from(doff >> 4) * 4;
            if hdr_len < TCP_LEN || hdr_len > l4_len {
                return refuse(stats, dst, counter::MALFORMED, DROP);
            }
            (ports, flags, hdr_len)
        }
        IPPROTO_UDP => {
            if l4_len < UDP_LEN {
                return refuse(stats, dst, counter::MALFORMED, DROP);
            }
            let udp = span(ctx, l4_off, UDP_LEN)?;
            let (ports, len) = unsafe { (load32::<0>(udp), load16::<4>(udp)) };
            if usize::from(u16::from_be(len)) != l4_len {
                return refuse(stats, dst, counter::MALFORMED, DROP);
            }
            (ports, 0, 0)
        }
        _ => return refuse(stats, dst, counter::OTHER_PROTO, PASS),
    };
    route(Pkt {
        v6,
        l4_off,
        ip_len,
        frame_ip_len,
        tos,
        tcp_flags,
        tcp_hdr_len,
        df,
        icmp: false,
        flow: FlowKey { src, dst, ports, proto },
    })
}

/// An ICMP (IPv4) or ICMPv6 message to a VIP address (`ip`, its header at `l4_off`). An error
/// (destination unreachable, fragmentation needed among them; ICMPv6 destination unreachable
/// and packet too big) quotes the packet that caused it: for a VIP, a packet its backend sent
/// (source the VIP, destination a client). Its flow, turned around, is the flow the error is
/// about; `route` sends the whole error to that flow's real, so the backend's stack hears it
/// (a router's "fragmentation needed" reaches the host that sent the big packet). What it
/// quotes decides:
/// - a quote that cannot hold the quoted packet's ports, or an IPv4 header with options (whose
///   ports this does not look for): dropped, counted (`ICMP_QUOTE_BAD`);
/// - a quoted packet that is not from the address the error went to, or not TCP or UDP: not a
///   VIP flow's, passed untouched (`ICMP_NOT_OURS`); one from a VIP address but no VIP's
///   port goes on to `route`, which finds no service and passes it;
/// - other ICMP (echo requests...): passed as before (`OTHER_PROTO`).
#[inline(always)]
fn icmp_error(
    ctx: &XdpContext,
    stats: &Stats,
    ip: Ip,
    l4_off: usize,
    l4_len: usize,
    frame_ip_len: usize,
    route: impl FnOnce(Pkt) -> Result<u32, ()>,
) -> Result<u32, ()> {
    let Ip { v6, dst, len: ip_len, tos, .. } = ip;
    if l4_len < ICMP_LEN {
        return refuse(stats, dst, counter::MALFORMED, DROP);
    }
    let icmp = span(ctx, l4_off, ICMP_LEN)?;
    let [kind, _, _, _] = unsafe { load32::<0>(icmp) }.to_ne_bytes();
    let error = if v6 { kind == ICMPV6_DEST_UNREACH || kind == ICMPV6_PKT_TOOBIG } else { kind == ICMP_DEST_UNREACH };
    if !error {
        return refuse(stats, dst, counter::OTHER_PROTO, PASS);
    }
    let quote = l4_off + ICMP_LEN;
    let inner_len = if v6 { IPV6_LEN } else { IPV4_LEN };
    // The quoted header and the first word of its L4 header: the ports.
    if l4_len < ICMP_LEN + inner_len + 4 {
        return refuse(stats, dst, counter::ICMP_QUOTE_BAD, DROP);
    }
    let (inner_src, inner_dst, inner_proto) = if v6 {
        let q = span(ctx, quote, IPV6_LEN)?;
        // SAFETY (every load): `span` checked the 40 bytes.
        let (head, lengths) = unsafe { (load32::<0>(q), load32::<4>(q)) };
        if head.to_ne_bytes()[0] >> 4 != 6 {
            return refuse(stats, dst, counter::ICMP_QUOTE_BAD, DROP);
        }
        let src = unsafe { [load32::<8>(q), load32::<12>(q), load32::<16>(q), load32::<20>(q)] };
        let inner_dst = unsafe { [load32::<24>(q), load32::<28>(q), load32::<32>(q), load32::<36>(q)] };
        (src, inner_dst, lengths.to_ne_bytes()[2])
    } else {
        let q = span(ctx, quote, IPV4_LEN)?;
        // SAFETY (every load): `span` checked the 20 bytes.
        let (head, proto_word) = unsafe { (load32::<0>(q), load16::<8>(q)) };
        if head.to_ne_bytes()[0] != 0x45 {
            return refuse(stats, dst, counter::ICMP_QUOTE_BAD, DROP);
        }
        let (src, inner_dst) = unsafe { ([load32::<12>(q), 0, 0, 0], [load32::<16>(q), 0, 0, 0]) };
        (src, inner_dst, proto_word.to_ne_bytes()[1])
    };
    if inner_src != dst || (inner_proto != IPPROTO_TCP && inner_proto != IPPROTO_UDP) {
        return refuse(stats, dst, counter::ICMP_NOT_OURS, PASS);
    }
    let ports = span(ctx, quote + inner_len, 4)?;
    // SAFETY: `span` checked the 4 bytes.
    let ports = unsafe { load32::<0>(ports) };
    route(Pkt {
        v6,
        l4_off,
        ip_len,
        frame_ip_len,
        tos,
        tcp_flags: 0,
        tcp_hdr_len: 0,
        df: true,
        icmp: true,
        // The flow the quoted packet belongs to, from the client's side: its destination is the
        // client, its source the VIP; the two ports swap halves.
        flow: FlowKey { src: inner_dst, dst: inner_src, ports: ports.rotate_left(16), proto: inner_proto },
    })
}

/// Whether an IP packet of `ip_len` bytes agrees with the `frame_ip_len` bytes the frame holds
/// after its Ethernet header: equal, or shorter only because a minimum-size frame was padded.
#[inline(always)]
fn fits_frame(ip_len: usize, frame_ip_len: usize) -> bool {
    ip_len == frame_ip_len || (ip_len < frame_ip_len && frame_ip_len + ETH_LEN <= ETH_MIN_FRAME)
}
