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
    ETH_LEN, ETH_MIN_FRAME, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_LEN, IPV6_LEN, TCP_LEN, UDP_LEN,
    frame_len, load16, load32, opaque, span,
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
            let ip = Ip { v6: false, src, dst, len: tot, proto: proto_word.to_ne_bytes()[1], tos };
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
            let ip = Ip { v6: true, src, dst, len: tot, proto: nexthdr, tos: (b0 << 4) | (b1 >> 4) };
            l4(ctx, stats, ip, frame_ip_len, route)
        }
        _ => verdict(stats, counter::NOT_IP, PASS),
    }
}

/// What the IP header said.
struct Ip {
    v6: bool,
    src: [u32; 4],
    dst: [u32; 4],
    /// Header and payload.
    len: usize,
    proto: u8,
    tos: u8,
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
    let Ip { v6, src, dst, len: ip_len, proto, tos } = ip;
    let l4_off = ETH_LEN + if v6 { IPV6_LEN } else { IPV4_LEN };
    let l4_len = ip_len - (l4_off - ETH_LEN);
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
        flow: FlowKey { src, dst, ports, proto },
    })
}

/// Whether an IP packet of `ip_len` bytes agrees with the `frame_ip_len` bytes the frame holds
/// after its Ethernet header: equal, or shorter only because a minimum-size frame was padded.
#[inline(always)]
fn fits_frame(ip_len: usize, frame_ip_len: usize) -> bool {
    ip_len == frame_ip_len || (ip_len < frame_ip_len && frame_ip_len + ETH_LEN <= ETH_MIN_FRAME)
}
